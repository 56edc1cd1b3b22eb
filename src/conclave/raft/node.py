"""``RaftNode``: the whole consensus state of one member, driven by tick/step/propose.

Theory of operation
-------------------
Modelled on etcd's raft library. One object holds the term, vote, role, log and (on
a leader) the per-follower ``Progress``. Inputs are ``tick()`` (logical time),
``step(msg)`` (a peer's message, or a local SNAP_STATUS/UNREACHABLE report) and the
client calls ``propose``/``propose_conf_change``/``read_index``/``transfer_leadership``.
Outputs accumulate until the driver takes them with ``ready()`` and confirms them
with ``advance(rd)``.

``step`` first applies the rules every role shares (a higher term makes us a
follower, except for pre-votes and for vote requests inside a leader lease; a lower
term is dropped or answered so a stale leader learns the new term), then hands the
message to the role's step function; ``tick`` is likewise swapped per role. Role
changes go through ``_become_*`` which reset timers and votes.

Durability: anything a node says about its own log or vote (APP_RESP, VOTE_RESP,
VOTE requests that carry our self-vote) goes to ``Ready.persisted_messages`` and is
sent only after the same Ready is durable. A leader counts its own log only up to
``RaftLog.persisted``. ``Ready.committed`` stops at the persisted index.

Configuration changes take effect at apply time, when ``advance`` is called for the
Ready whose ``committed`` carried them; ``conf_state`` is therefore always the
configuration as of ``applied_index``.

Peer input is distrusted: ``step`` refuses a message no correct peer sends with
``RemoteProtocolError`` before it changes any state (``_check_message``: shapes and the
``COUNTER_MAX`` range; the leader: an ack beyond its log), so a driver can drop it and
carry on; a caller's misuse is ``LocalProtocolError``. A follower commits only what it
knows matches the current leader's log (``_leader_match``: the end of the prefix the
leader's own APP or snapshot vouched for this term), never a commit index a message
merely claims; when a heartbeat claims more, it answers ``reject`` so the leader sends
an append that proves the match.

Rules: no I/O, no clocks, no ``random`` import (randomness comes in as a
``RandomSource``). An ``assert`` here guards an invariant only a bug in this package
can break.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conclave.raft import quorum
from conclave.raft.codec import CodecError, decode_conf_change, encode_conf_change
from conclave.raft.confchange import apply_conf_change
from conclave.raft.errors import (
    CompactionError,
    ConfChangeError,
    LocalProtocolError,
    NotLeader,
    ProposalDropped,
    RaftError,
    RemoteProtocolError,
)
from conclave.raft.log import RaftLog
from conclave.raft.progress import Inflights, Progress, ProgressState
from conclave.raft.quorum import VoteResult
from conclave.raft.types import (
    COUNTER_MAX,
    NONE,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    RandomSource,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

TRANSFER_CONTEXT = b"conclave/transfer"
"""Context of a vote request from a leadership-transfer campaign: granted even in a lease."""

FAULTS = frozenset({"commit_previous_term", "vote_without_log_check", "forget_vote", "ack_before_persist"})
"""Deliberately broken rules a Config may enable, only to prove the simulator catches them."""

SNAPSHOT_TIMEOUT_ELECTIONS = 4
"""Election timeouts a follower may stay in SNAPSHOT state before the leader re-probes it."""

_M = MessageType


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    inflight: int
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    role: Role
    leader: int
    commit: int
    applied: int
    last_index: int
    persisted: int
    conf_state: ConfState
    lead_transferee: int
    progress: dict[int, ProgressStatus] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _ReadRequest:
    requester: int  # NONE or our own id: a local read; otherwise a follower to answer
    context: bytes


@dataclass(slots=True)
class _ReadRound:
    """One quorum heartbeat round that confirms leadership for a batch of reads."""

    context: bytes
    index: int
    requests: list[_ReadRequest]
    acks: dict[int, bool]


class RaftNode:
    def __init__(self, config: Config, persisted: PersistedState, rng: RandomSource) -> None:
        _check_config(config)
        self.config = config
        self._rng = rng
        self._faults = config.faults
        hs = persisted.hard_state
        snap = persisted.snapshot
        _check_persisted(persisted)
        self.log = RaftLog(snap, persisted.entries, hs.commit)
        self.term = hs.term
        self.vote = hs.vote
        self.applied_index = snap.meta.index if snap is not None else 0
        self.conf_state = snap.meta.conf_state if snap is not None else persisted.conf_state
        # Configurations by the index at which they took effect, so compact() can record
        # the configuration as of any index between the last snapshot and applied.
        self._conf_history: list[tuple[int, ConfState]] = [(self.applied_index, self.conf_state)]
        self.role = Role.FOLLOWER
        self.leader_id = NONE
        self.lead_transferee = NONE
        self.prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._read_queue: list[_ReadRequest] = []
        self._read_round: _ReadRound | None = None
        self._read_seq = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_tick
        self._pending_conf_index = 0
        self._uncommitted_size = 0
        # (term, leader) and the last index known to match that leader's log: the bound of
        # what a heartbeat may commit on this follower.
        self._match_key: tuple[int, int] = (0, NONE)
        self._leader_match = 0
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._prev_hard = hs
        self._outstanding: Ready | None = None
        self._tick: Callable[[], None] = self._tick_election
        self._step_role: Callable[[Message], None] = self._step_follower
        self._become_follower(self.term, NONE)

    # -- read-only views -----------------------------------------------------------

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    @property
    def randomized_election_timeout(self) -> int:
        return self._randomized_election_timeout

    def status(self) -> Status:
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            role=self.role,
            leader=self.leader_id,
            commit=self.log.committed,
            applied=self.applied_index,
            last_index=self.log.last_index(),
            persisted=self.log.persisted,
            conf_state=self.conf_state,
            lead_transferee=self.lead_transferee,
            progress={
                i: ProgressStatus(pr.match, pr.next, pr.state, pr.is_learner, pr.inflights.count(), pr.recent_active)
                for i, pr in sorted(self.prs.items())
            }
            if self.role == Role.LEADER
            else {},
        )

    # -- inputs --------------------------------------------------------------------

    def tick(self) -> None:
        self._tick()

    def campaign(self) -> None:
        """Start an election now (with pre-vote if configured), as an elapsed timeout would."""
        self._hup(transfer=False)

    def step(self, m: Message) -> None:
        if m.to not in (NONE, self.id):
            raise LocalProtocolError(f"message for node {m.to} stepped into node {self.id}")
        _check_message(m)
        if m.term == 0:
            pass  # local or forwarded message (PROP, READ_INDEX, SNAP_STATUS, UNREACHABLE)
        elif m.term > self.term:
            if m.type in (_M.VOTE, _M.PRE_VOTE):
                force = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.config.check_quorum
                    and self.leader_id != NONE
                    and self._election_elapsed < self.config.election_tick
                )
                if in_lease and not force:
                    # We heard from a leader within the election timeout: a node that
                    # merely timed out (e.g. rejoining from a partition) must not depose it.
                    return
            if m.type == _M.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == _M.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term we asked for
            elif m.type in (_M.APP, _M.HEARTBEAT, _M.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and m.type in (_M.HEARTBEAT, _M.APP):
                # A stale leader (e.g. cut off, now back) learns our term and steps down;
                # without this, with pre-vote, it could keep our cluster from electing.
                self._send(_M.APP_RESP, m.frm)
            elif m.type == _M.PRE_VOTE:
                self._send(_M.PRE_VOTE_RESP, m.frm, reject=True)
            return

        if m.type in (_M.VOTE, _M.PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    def propose(self, data: bytes) -> None:
        self._propose(Entry(0, 0, EntryType.NORMAL, bytes(data)))

    def propose_conf_change(self, cc: ConfChange) -> None:
        self._propose(Entry(0, 0, EntryType.CONF_CHANGE, encode_conf_change(cc)))

    def read_index(self, ctx: bytes) -> None:
        if self.role == Role.LEADER:
            self._queue_read(_ReadRequest(self.id, bytes(ctx)))
        elif self.leader_id != NONE:
            self._msgs.append(Message(_M.READ_INDEX, to=self.leader_id, frm=self.id, term=0, context=bytes(ctx)))
        else:
            raise NotLeader(NONE)

    def transfer_leadership(self, target: int) -> None:
        if self.role == Role.LEADER:
            if target not in self.conf_state.voters | self.conf_state.voters_outgoing:
                raise RaftError(f"cannot transfer leadership to {target}: not a voter")
            self._step_leader(Message(_M.TRANSFER_LEADER, to=self.id, frm=target, term=0))
        elif self.leader_id != NONE:
            self._msgs.append(Message(_M.TRANSFER_LEADER, to=self.leader_id, frm=target, term=self.term))
        else:
            raise NotLeader(NONE)

    # -- the Ready / advance contract ----------------------------------------------

    def has_ready(self) -> bool:
        # Hot: drivers poll it after every input, so compare fields instead of building values.
        if self._outstanding is not None:
            return False
        if self._msgs or self._msgs_after_persist or self._read_states:
            return True
        soft, hard, log = self._prev_soft, self._prev_hard, self.log
        if soft.leader != self.leader_id or soft.role != self.role:
            return True
        if hard.term != self.term or hard.vote != self.vote or hard.commit != log.committed:
            return True
        if log.pending_snapshot is not None or log.has_unstable():
            return True
        return self._committable_hi() > self.applied_index

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise LocalProtocolError("ready() called again before advance() of the previous Ready")
        soft = SoftState(self.leader_id, self.role)
        hard = self._hard_state()
        snapshot = self.log.pending_snapshot
        self.log.pending_snapshot = None
        committed: tuple[Entry, ...] = ()
        hi = self._committable_hi()
        if snapshot is None and hi > self.applied_index:
            committed = tuple(self.log.slice(self.applied_index + 1, hi, self.config.max_committed_size_per_ready))
        hard_out: HardState | None = None
        if hard != self._prev_hard:
            hard_out = dataclasses.replace(hard, vote=NONE) if "forget_vote" in self._faults else hard
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard_out,
            entries=self.log.take_unstable(),
            snapshot=snapshot,
            messages=tuple(self._msgs),
            persisted_messages=tuple(self._msgs_after_persist),
            committed=committed,
            read_states=tuple(self._read_states),
        )
        self._msgs = []
        self._msgs_after_persist = []
        self._read_states = []
        self._prev_soft = soft
        self._prev_hard = hard
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._outstanding:
            raise LocalProtocolError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        if rd.snapshot is not None:
            snap = rd.snapshot
            self.log.snapshot_persisted(snap)
            assert snap.meta.index > self.applied_index, "snapshot does not move applied forward"
            self.applied_index = snap.meta.index
            self.conf_state = snap.meta.conf_state
            self._conf_history = [(snap.meta.index, snap.meta.conf_state)]
            self._sync_progress()
        self.log.stable_to(rd.entries)
        applied_bytes = 0
        for e in rd.committed:
            assert e.index == self.applied_index + 1, "committed entries must apply in order"
            self.applied_index = e.index
            applied_bytes += len(e.data)
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(e)
        assert self.applied_index <= self.log.committed
        if self.role == Role.LEADER:
            self._uncommitted_size = max(0, self._uncommitted_size - applied_bytes)
            own = self.prs.get(self.id)
            if own is not None and own.maybe_update(self.log.persisted) and self._maybe_commit():
                self._bcast_append()
            self._maybe_auto_leave()

    def compact(self, index: int, data: bytes) -> Snapshot:
        if index <= self.log.offset:
            raise CompactionError(f"index {index} is already compacted (snapshot at {self.log.offset})")
        if index > self.applied_index:
            raise CompactionError(f"cannot compact to {index}: applied index is {self.applied_index}")
        term = self.log.term(index)
        assert term is not None
        conf = self._conf_history[0][1]
        for at, cs in self._conf_history:
            if at <= index:
                conf = cs
        snap = Snapshot(SnapshotMeta(index, term, conf), bytes(data))
        self.log.compact(snap)
        keep = [(at, cs) for at, cs in self._conf_history if at > index]
        self._conf_history = [(index, conf), *keep]
        return snap

    # -- role transitions ----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader_id = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self.lead_transferee = NONE
        self._votes = {}
        self._read_queue = []
        self._read_round = None
        self._uncommitted_size = 0
        self._pending_conf_index = 0
        self.prs = {}
        self._sync_progress()
        for pr in self.prs.values():
            pr.recent_active = False  # a new term: activity must be heard afresh

    def _reset_randomized_election_timeout(self) -> None:
        et = self.config.election_tick
        self._randomized_election_timeout = self._rng.randint(et, 2 * et - 1)
        assert et <= self._randomized_election_timeout < 2 * et

    def _become_follower(self, term: int, leader: int) -> None:
        self._step_role = self._step_follower
        self._reset(term)
        self._tick = self._tick_election
        self.leader_id = leader
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        assert self.role != Role.LEADER, "a leader never pre-campaigns"
        # Neither term nor vote changes: a pre-vote only asks whether we *could* win.
        self._step_role = self._step_candidate
        self._votes = {}
        self._tick = self._tick_election
        self.leader_id = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self.role != Role.LEADER, "a leader never campaigns"
        self._step_role = self._step_candidate
        self._reset(self.term + 1)
        self._tick = self._tick_election
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE) or self._single_voter(), "follower cannot lead"
        self._step_role = self._step_leader
        self._reset(self.term)
        self._tick = self._tick_heartbeat
        self.leader_id = self.id
        self.role = Role.LEADER
        own = self.prs.get(self.id)
        if own is not None:
            own.become_replicate()
            own.recent_active = True
        # Conservatively: no conf change until everything in our log is applied, since
        # we cannot tell whether an unapplied tail holds one.
        self._pending_conf_index = self.log.last_index()
        # An entry of our own term: committing it commits every earlier entry (§5.4.2)
        # and lets queued ReadIndex requests proceed.
        ok = self._append_entries([Entry(0, 0)])
        assert ok, "the empty leader entry is never refused"

    def _single_voter(self) -> bool:
        return self.conf_state.voters | self.conf_state.voters_outgoing == {self.id}

    # -- elections -----------------------------------------------------------------

    def _promotable(self) -> bool:
        in_config = self.id in self.conf_state.voters or self.id in self.conf_state.voters_outgoing
        snapshot_pending = self.log.pending_snapshot is not None or (
            self._outstanding is not None and self._outstanding.snapshot is not None
        )
        return in_config and not snapshot_pending

    def _hup(self, *, transfer: bool) -> None:
        if self.role == Role.LEADER or not self._promotable():
            return
        if self.term >= COUNTER_MAX:
            return  # the next term would not be accepted by any peer (nor our own WAL)
        if self.log.committed > self.applied_index and self.log.has_conf_change_between(
            self.applied_index + 1, self.log.committed
        ):
            return  # a committed conf change is not applied yet; our config may be stale
        if self.config.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_type, term = _M.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = _M.VOTE, self.term
        self._votes = {self.id: True}
        if quorum.vote_result(self.conf_state, self._votes) == VoteResult.WON:
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        ctx = TRANSFER_CONTEXT if transfer else b""
        for peer in sorted(self.conf_state.voters | self.conf_state.voters_outgoing):
            if peer == self.id:
                continue
            msg = Message(
                vote_type,
                to=peer,
                frm=self.id,
                term=term,
                index=self.log.last_index(),
                log_term=self.log.last_term(),
                context=ctx,
            )
            # A real vote request carries our durable self-vote: send it after the fsync.
            (self._msgs if pre else self._msgs_after_persist).append(msg)

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == _M.PRE_VOTE
        resp_type = _M.PRE_VOTE_RESP if pre else _M.VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.leader_id == NONE)
            or (pre and m.term > self.term)
        )
        up_to_date = "vote_without_log_check" in self._faults or self.log.is_up_to_date(m.index, m.log_term)
        out = self._msgs if pre else self._msgs_after_persist
        if can_vote and up_to_date:
            out.append(Message(resp_type, to=m.frm, frm=self.id, term=m.term))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            out.append(Message(resp_type, to=m.frm, frm=self.id, term=self.term, reject=True))

    # -- ticks ---------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_tick:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the target did not take over in time: abort
        self._expire_snapshot_sends()
        if self._heartbeat_elapsed >= self.config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _expire_snapshot_sends(self) -> None:
        # A snapshot lost without a SNAP_STATUS report (a dropped message, a driver that
        # never reports) would park the follower forever; give up and probe again.
        limit = SNAPSHOT_TIMEOUT_ELECTIONS * self.config.election_tick
        for pr in self.prs.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_elapsed_ticks += 1
                if pr.snapshot_elapsed_ticks >= limit:
                    pr.pending_snapshot = 0
                    pr.become_probe()

    def _quorum_active(self) -> bool:
        active = {i: (i == self.id or pr.recent_active) for i, pr in self.prs.items()}
        for i, pr in self.prs.items():
            if i != self.id:
                pr.recent_active = False
        return quorum.vote_result(self.conf_state, active) == VoteResult.WON

    # -- per-role step functions -----------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (_M.PROP, _M.READ_INDEX, _M.TRANSFER_LEADER):
            if self.leader_id == NONE or (t == _M.PROP and self.config.disable_proposal_forwarding):
                return  # nowhere to forward it; the client times out and retries
            self._msgs.append(dataclasses.replace(m, to=self.leader_id))
        elif t == _M.APP:
            self._follow(m.frm)
            self._handle_append(m)
        elif t == _M.HEARTBEAT:
            self._follow(m.frm)
            self._handle_heartbeat(m)
        elif t == _M.SNAP:
            self._follow(m.frm)
            self._handle_snapshot(m)
        elif t == _M.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == _M.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    def _follow(self, leader: int) -> None:
        self._election_elapsed = 0
        self.leader_id = leader
        key = (self.term, leader)
        if key != self._match_key:
            # What matched another leader (or another term) says nothing about this one.
            self._match_key = key
            self._leader_match = 0

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = _M.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else _M.VOTE_RESP
        if t in (_M.APP, _M.HEARTBEAT, _M.SNAP):
            self._become_follower(m.term, m.frm)  # someone won this term
            self._step_follower(m)
        elif t == my_resp:
            self._votes.setdefault(m.frm, not m.reject)
            result = quorum.vote_result(self.conf_state, self._votes)
            if result == VoteResult.WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif result == VoteResult.LOST:
                self._become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == _M.PROP:
            # Forwarded: a dropped proposal is silently lost; the proposer times out and retries.
            with contextlib.suppress(ProposalDropped, ConfChangeError):
                self._propose_on_leader(list(m.entries))
            return
        if t == _M.READ_INDEX:
            self._queue_read(_ReadRequest(m.frm, m.context))
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == _M.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == _M.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, pr)
        elif t == _M.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0  # failed: probe from match again
            pr.become_probe()
            pr.probe_sent = True  # wait for a heartbeat response before probing
        elif t == _M.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == _M.TRANSFER_LEADER:
            self._handle_transfer_leader(m.frm, pr)

    # -- leader: replication -------------------------------------------------------

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if not m.reject and m.index > self.log.last_index():
            # Entries of our term come only from us: no correct follower acks past our log,
            # and taking the ack would send appends from beyond our last index.
            raise RemoteProtocolError(
                f"APP_RESP from {m.frm} acknowledges index {m.index} beyond our last index {self.log.last_index()}"
            )
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        old_paused = pr.is_paused()
        updated = pr.maybe_update(m.index)
        if pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            # The follower has what it needs to continue from our log (it installed the
            # snapshot, or already had the prefix): resume appends without waiting for
            # the driver's SNAP_STATUS.
            pr.become_probe()
            pr.become_replicate()
        elif not updated:
            return
        elif pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif old_paused:
            self._send_append(m.frm)
        # Fill the inflight window; bounded: each send moves next or pauses the peer.
        for _ in range(self.config.max_inflight_msgs + 1):
            if not self._send_append(m.frm, send_if_empty=False):
                break
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(_M.TIMEOUT_NOW, m.frm)

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self.log.last_index() or m.reject:
            # reject: the follower could not verify our commit index from the heartbeat
            # (it restarted, or a new leader): an append, even empty, proves the match.
            self._send_append(m.frm)
        rr = self._read_round
        if rr is not None and m.context == rr.context:
            rr.acks[m.frm] = True
            self._maybe_finish_read_round()

    def _send_append(self, to: int, *, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        last = self.log.last_index()
        assert 1 <= pr.next <= last + 1, f"next {pr.next} out of range for {to}"
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            # The entries this follower needs are compacted: send the snapshot.
            if not pr.recent_active:
                return False  # do not ship a snapshot to a peer that may be down
            snap = self.log.snapshot
            assert snap is not None, "compacted log without a snapshot"
            pr.become_snapshot(snap.meta.index)
            self._send(_M.SNAP, to, snapshot=snap)
            return True
        ents = self.log.slice(pr.next, last, self.config.max_size_per_msg)
        if not ents and not send_if_empty:
            return False
        self._send(_M.APP, to, index=prev, log_term=prev_term, entries=tuple(ents), commit=self.log.committed)
        if ents:
            pr.sent_entries(ents[-1].index)
        return True

    def _bcast_append(self) -> None:
        for peer in sorted(self.prs):
            if peer != self.id:
                self._send_append(peer)

    def _bcast_heartbeat(self) -> None:
        ctx = self._read_round.context if self._read_round is not None else b""
        for peer, pr in sorted(self.prs.items()):
            if peer != self.id:
                self._send(_M.HEARTBEAT, peer, commit=min(pr.match, self.log.committed), context=ctx)

    def _maybe_commit(self) -> bool:
        match = {i: pr.match for i, pr in self.prs.items()}
        idx = quorum.committed_index(self.conf_state, match)
        if idx <= self.log.committed:
            return False
        # Figure 8: counting replicas only commits entries of the current term.
        if "commit_previous_term" not in self._faults and self.log.term(idx) != self.term:
            return False
        self.log.commit_to(idx)
        self._maybe_start_read_round()
        return True

    # -- leader: proposals ---------------------------------------------------------

    def _propose(self, entry: Entry) -> None:
        if self.role == Role.LEADER:
            self._propose_on_leader([entry])
        elif self.leader_id != NONE and not self.config.disable_proposal_forwarding:
            self._msgs.append(Message(_M.PROP, to=self.leader_id, frm=self.id, term=0, entries=(entry,)))
        else:
            raise NotLeader(self.leader_id)

    def _propose_on_leader(self, entries: list[Entry]) -> None:
        if not entries:
            raise ProposalDropped("empty proposal")
        if self.id not in self.prs:
            raise ProposalDropped("this leader was removed from the configuration")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        conf_at: int | None = None
        for n, e in enumerate(entries):
            if e.type != EntryType.CONF_CHANGE:
                continue
            if conf_at is not None or self._pending_conf_index > self.applied_index:
                raise ProposalDropped("a configuration change is already pending")
            try:
                cc = decode_conf_change(e.data)
            except CodecError as exc:
                raise ConfChangeError(str(exc)) from exc
            apply_conf_change(self.conf_state, cc)  # validate now; raises ConfChangeError
            conf_at = n
        first = self.log.last_index() + 1
        if not self._append_entries(entries):
            raise ProposalDropped(
                f"too many uncommitted entries ({self._uncommitted_size} bytes, "
                f"limit {self.config.max_uncommitted_entries_size})"
            )
        if conf_at is not None:
            self._pending_conf_index = first + conf_at
        self._bcast_append()

    def _append_entries(self, entries: list[Entry], *, force: bool = False) -> bool:
        size = sum(len(e.data) for e in entries)
        limit = self.config.max_uncommitted_entries_size
        if not force and self._uncommitted_size > 0 and size > 0 and self._uncommitted_size + size > limit:
            return False
        li = self.log.last_index()
        self.log.append([Entry(self.term, li + 1 + n, e.type, e.data) for n, e in enumerate(entries)])
        self._uncommitted_size += size
        return True

    # -- leader: reads ---------------------------------------------------------------

    def _queue_read(self, req: _ReadRequest) -> None:
        self._read_queue.append(req)
        self._maybe_start_read_round()

    def _maybe_start_read_round(self) -> None:
        if self._read_round is not None or not self._read_queue or self.role != Role.LEADER:
            return
        # A new leader does not know the commit index of its predecessor until an entry
        # of its own term commits (Raft §8); reads wait in the queue until then.
        if self.log.term(self.log.committed) != self.term:
            return
        self._read_seq += 1
        ctx = b"conclave/read/%d/%d" % (self.term, self._read_seq)
        self._read_round = _ReadRound(ctx, self.log.committed, self._read_queue, {self.id: True})
        self._read_queue = []
        if not self._maybe_finish_read_round():
            self._bcast_heartbeat()

    def _maybe_finish_read_round(self) -> bool:
        rr = self._read_round
        if rr is None or quorum.vote_result(self.conf_state, rr.acks) != VoteResult.WON:
            return False
        self._read_round = None
        for req in rr.requests:
            if req.requester in (NONE, self.id):
                self._read_states.append(ReadState(rr.index, req.context))
            else:
                self._send(_M.READ_INDEX_RESP, req.requester, index=rr.index, context=req.context)
        self._maybe_start_read_round()
        return True

    # -- leader: transfer ------------------------------------------------------------

    def _handle_transfer_leader(self, target: int, pr: Progress) -> None:
        if target not in self.conf_state.voters | self.conf_state.voters_outgoing:
            return  # learners cannot lead
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return
            self.lead_transferee = NONE
        if target == self.id:
            return
        self._election_elapsed = 0  # the transfer must finish within one election timeout
        self.lead_transferee = target
        if pr.match == self.log.last_index():
            self._send(_M.TIMEOUT_NOW, target)
        else:
            self._send_append(target)

    # -- follower: log handling ----------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._ack(Message(_M.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            # maybe_append committed at most last_new: the end of what this APP vouched for.
            self._leader_match = max(self._leader_match, last_new)
            self._ack(Message(_M.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=last_new))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._ack(
            Message(
                _M.APP_RESP,
                to=m.frm,
                frm=self.id,
                term=self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        # A heartbeat proves nothing about our log: commit only up to what this leader's
        # appends vouched for (our own commit index is in every leader's log anyway).
        # Commit is monotonic, so a claim below it changes nothing.
        known = max(self._leader_match, self.log.committed)
        self.log.commit_to(min(m.commit, known))
        # reject: "I could not commit what you claim": the leader answers with an append.
        self._send(_M.HEARTBEAT_RESP, m.frm, context=m.context, reject=m.commit > known)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        if self._restore(snap):
            index = self.log.last_index()
            self._leader_match = max(self._leader_match, index)
        else:
            index = self.log.committed
        self._ack(Message(_M.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=index))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self._outstanding is not None and self._outstanding.snapshot is not None:
            return False  # one snapshot at a time; the leader will retry
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already have that prefix: fast-forward
            self._leader_match = max(self._leader_match, meta.index)
            return False
        self.log.restore(snap)
        return True

    def _ack(self, m: Message) -> None:
        """A statement about our log: only true once the Ready holding it is durable."""
        (self._msgs if "ack_before_persist" in self._faults else self._msgs_after_persist).append(m)

    # -- configuration -------------------------------------------------------------

    def _apply_conf_change(self, e: Entry) -> None:
        try:
            new = apply_conf_change(self.conf_state, decode_conf_change(e.data))
        except (CodecError, ConfChangeError):
            return  # every replica rejects it identically, so skipping keeps them in step
        self.conf_state = new
        self._conf_history.append((e.index, new))
        self._sync_progress()
        if self.role != Role.LEADER:
            return
        voters = new.voters | new.voters_outgoing
        if self.config.step_down_on_removal and self.id not in voters:
            self._become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE and self.lead_transferee not in voters:
            self.lead_transferee = NONE
        self._maybe_commit()
        self._bcast_append()
        self._maybe_finish_read_round()

    def _maybe_auto_leave(self) -> None:
        cs = self.conf_state
        if self.role != Role.LEADER or not cs.joint or not cs.auto_leave:
            return
        if self.applied_index < self._pending_conf_index:
            return
        data = encode_conf_change(ConfChange())
        self._append_entries([Entry(0, 0, EntryType.CONF_CHANGE, data)], force=True)
        self._pending_conf_index = self.log.last_index()
        self._bcast_append()

    def _sync_progress(self) -> None:
        cs = self.conf_state
        nodes = cs.all_nodes()
        for gone in [i for i in self.prs if i not in nodes]:
            del self.prs[gone]
        for i in sorted(nodes):
            pr = self.prs.get(i)
            if pr is None:
                pr = Progress(
                    match=0,
                    next=self.log.last_index() + 1,
                    inflights=Inflights(self.config.max_inflight_msgs),
                    recent_active=True,  # give a new member one election timeout before check-quorum counts it
                )
                if i == self.id:
                    pr.match = self.log.persisted
                self.prs[i] = pr
            pr.is_learner = i in cs.learners or i in cs.learners_next

    # -- plumbing --------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _committable_hi(self) -> int:
        if self.applied_index < self.log.offset or self.log.pending_snapshot is not None:
            return self.applied_index  # a received snapshot must be applied first
        return min(self.log.committed, self.log.persisted)

    def _send(self, typ: MessageType, to: int, **fields: Any) -> None:
        self._msgs.append(Message(typ, to=to, frm=self.id, term=self.term, **fields))


def _check_config(c: Config) -> None:
    if c.id <= NONE:
        raise LocalProtocolError(f"node id must be >= 1, got {c.id}")
    if c.heartbeat_tick < 1:
        raise LocalProtocolError("heartbeat_tick must be >= 1")
    if c.election_tick <= c.heartbeat_tick:
        raise LocalProtocolError("election_tick must be greater than heartbeat_tick")
    if c.max_inflight_msgs < 1:
        raise LocalProtocolError("max_inflight_msgs must be >= 1")
    if c.max_size_per_msg < 0 or c.max_uncommitted_entries_size < 1 or c.max_committed_size_per_ready < 0:
        raise LocalProtocolError("message and uncommitted-size limits must be positive")
    unknown = set(c.faults) - FAULTS
    if unknown:
        raise LocalProtocolError(f"unknown fault names {sorted(unknown)}; known: {sorted(FAULTS)}")


def _check_persisted(p: PersistedState) -> None:
    """Recovered state that cannot come from a correct disk is refused with a clear error."""
    if p.hard_state.term > COUNTER_MAX or p.hard_state.commit > COUNTER_MAX:
        raise RaftError(f"recovered hard state {p.hard_state} is beyond the largest term or index, {COUNTER_MAX}")
    offset = p.snapshot.meta.index if p.snapshot is not None else 0
    ents = [e for e in p.entries if e.index > offset]
    for n, e in enumerate(ents):
        if e.index != offset + 1 + n:
            raise RaftError(f"recovered log is not contiguous: entry {e.index} where {offset + 1 + n} was expected")
    last = offset + len(ents)
    if p.hard_state.commit > last:
        raise RaftError(
            f"recovered commit index {p.hard_state.commit} is beyond the last recovered entry {last}: "
            "the disk lost entries that were synced"
        )


def _check_message(m: Message) -> None:
    """Refuse messages whose shape no correct peer produces, before they reach the log."""
    if max(m.term, m.log_term, m.index, m.commit, m.reject_hint) > COUNTER_MAX or min(
        m.term, m.log_term, m.index, m.commit, m.reject_hint
    ) < 0:
        raise RemoteProtocolError(f"{m.type.name} from {m.frm}: a term or index outside [0, {COUNTER_MAX}]")
    if m.type == _M.APP:
        for n, e in enumerate(m.entries):
            if e.index != m.index + 1 + n or e.term > m.term or e.term < 1:
                raise RemoteProtocolError(
                    f"malformed APP from {m.frm}: entry {e} after index {m.index} in term {m.term}"
                )
        if m.entries and m.entries[0].term < m.log_term:
            raise RemoteProtocolError(f"malformed APP from {m.frm}: entry terms go backwards")
    elif m.type == _M.SNAP:
        if m.snapshot is None or m.snapshot.meta.index < 1 or m.snapshot.meta.term > m.term:
            raise RemoteProtocolError(f"malformed SNAP from {m.frm}")
    elif m.type == _M.PROP and (not m.entries or any(e.index or e.term for e in m.entries)):
        raise RemoteProtocolError(f"malformed PROP from {m.frm}: proposals carry unnumbered entries")
