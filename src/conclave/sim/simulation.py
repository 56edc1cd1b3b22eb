"""The deterministic simulation: real Raft nodes, virtual time, a hostile network and disk.

Theory of operation
-------------------
One seed feeds one ``random.Random``, which seeds a separate generator for each
source of choice (network, disk, nemesis, clients, each node's election timer), so
the whole run is a function of the seed: one seed = one exact replay.

The run is a loop over events from the ``Agenda`` (see ``clock``). One event is one
*step*: a node ticks, a message arrives, an fsync completes, the nemesis acts, a
client calls, keeps a lease alive, checks its watch, or times out. After each step
the affected node's ``Ready`` batches are handled exactly as a server would (send,
save, fsync, send the persisted messages, apply, serve reads, advance), and every
observation goes to the ``SafetyMonitor`` and the ``History``, which raise
``InvariantBroken`` the moment a rule breaks.

Every member runs the real state machine (``conclave.machine``: the one the server runs, with the
server's entry framing) under a simulated driver that does what the server does:
- batching: writes that arrive while the member's fsync is in progress enter the log
  together as one batch entry, each command tagged ``(member, seq)``;
- forwarding: a follower's proposals and ReadIndex requests travel to the leader
  inside Raft; after a leader change the driver proposes its unanswered batches
  again, and the state machine applies each command once;
- linearizable reads take a ReadIndex and read the store once it has applied that
  far; serializable reads read the local store at once;
- leases: which leases exist is replicated; deadlines live in each member's
  ``Lessor`` on virtual time, only the leader's counts (promoted with slack when it
  wins), the leader proposes expiry on its own log only, and a keep-alive (forwarded
  by followers) is renewed only by a leader that has applied an entry of its term;
- watches: each client keeps one stream open on some member from the revision after
  the last event it saw, served by that member's ``WatchHub`` (the server's: small
  buffers, so slow streams go unsynced and catch up from the history on ticks, and
  across an installed snapshot), reopened elsewhere when the member crashes and from
  the compact revision when the hub cancels it as compacted.

Checked as the run goes: the Raft rules (``invariants``); every replica at one applied
index has the same store hash, and a snapshot restores it; a command is applied once;
any read returns the committed value of its key at its revision; linearizable answers
respect the revision already visible at their call (``history``); every watch event
is the next committed one (no gap, no duplicate, in order); a lease whose keep-alive
reached the current leader is not revoked by expiry before the promised time.

Phases: a faulty phase of ``steps`` steps, in which the nemesis partitions (also one-way), crashes
(also between save and fsync), pauses, drops, duplicates, delays and reorders, and
changes membership; then a quiet phase in which every fault heals and a leader must be
elected and commit a probe write within ``quiet_ms`` of virtual time (liveness), and
every acknowledged write must be in that leader's state machine (durability); last,
the whole client history goes through ``conclave.verify``'s linearizability checker
(its kv model, key by key; timed-out writes are resolved by what the replicas applied).

Rules for this module: it may use ``random`` but never a real clock, thread, socket
or the OS; anything the Raft core raises that is not a ``RaftError`` on a call that
may refuse is a found bug and becomes a ``Violation`` with the seed and the step.
"""

from __future__ import annotations

import bisect
import functools
import random
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from conclave.kv import types as kt
from conclave.kv.command import Command
from conclave.kv.errors import EtcdError
from conclave.kv.lease import DEFAULT_RETRY_MS, Lessor
from conclave.machine import Result, rules
from conclave.machine.entry import encode_batch, encode_lease_expiry
from conclave.raft.errors import CompactionError, RaftError
from conclave.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    ConfState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
)
from conclave.sim.clock import Agenda, Event, EventKind
from conclave.sim.errors import InvariantBroken, SetupError, Violation
from conclave.sim.faults import FAULT_KINDS, FAULT_RULES, RAFT_RULES, FaultRates
from conclave.sim.history import Canonical, Expiry, History, Operation, OpStatus
from conclave.sim.invariants import SafetyMonitor
from conclave.sim.network import LinkConditions, Network
from conclave.sim.replica import Proposal, Replica, Watch
from conclave.verify.checker import Limits, Verdict, check_operations
from conclave.verify.model import KeyValue

CLUSTER_SIZES = (3, 5, 7)
TICK_MS = 10
ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
WRITE_TIMEOUT_MS = 500
READ_TIMEOUT_MS = 300
CLIENT_THINK_MS = (2, 30)
DISK_SYNC_MS = (0, 0, 1, 2, 4)
COMPACT_EVERY_ENTRIES = 8  # small, so lagging and new nodes often need InstallSnapshot
MAX_SIZE_PER_MSG_CHOICES = (1, 1, 1, 200, 1024 * 1024)
MAX_INFLIGHT_CHOICES = (1, 2, 8, 256)
READY_LOOP_MAX = 1000
LINEARIZABILITY_POLLS_MAX = 2000  # search slices (64 configurations each) before the check gives up
KEYS = ("k0", "k1", "k2", "k3")
LEASE_TTL_S = 1
KEEPALIVE_MS = 200
WATCH_CHECK_MS = 50
WATCH_TAKE_EVENTS = 16  # a client drains at most this many events per check: slow streams fall behind
WATCH_CATCH_UP_EVENTS = 64  # history events a member's hub replays per tick
LEASE_EXTEND_MS = ELECTION_TICKS * TICK_MS  # a new leader restarts every deadline with this slack (as the server)
QUIET_STEPS_MAX = 50_000  # a message storm that never lets virtual time advance is a liveness failure too

T = TypeVar("T")

# Events addressed to one node, which a paused node defers.
_NODE_EVENTS = frozenset({EventKind.TICK, EventKind.DELIVER, EventKind.SYNC_DONE, EventKind.REPORT, EventKind.RPC})


@dataclass(frozen=True, slots=True)
class SimOptions:
    nodes: int = 3
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    steps: int = 3000
    fault_rule: str | None = None
    clients: int = 3
    quiet_ms: int = 3000
    check_persistence_rule: bool = True
    # False: joiners start with no configuration at all. The core then never learns one
    # by log replay, and a joiner holding the longest log can block every election
    # (a liveness bug, tests/sim/test_sim_core_findings.py).
    joiners_know_bootstrap: bool = True
    rates: FaultRates = FaultRates()

    def validate(self) -> None:
        if self.nodes not in CLUSTER_SIZES:
            raise SetupError(f"--nodes must be one of {', '.join(map(str, CLUSTER_SIZES))}, not {self.nodes}")
        if self.steps < 1:
            raise SetupError(f"--steps must be at least 1, not {self.steps}")
        check_rule("fault rule", self.fault_rule, FAULT_RULES)
        check_fault_kinds(self.faults)


def check_rule(what: str, rule: str | None, rules: Sequence[str]) -> None:
    """SetupError unless ``rule`` is None or one of ``rules`` (``what`` names it in the message)."""
    if rule is not None and rule not in rules:
        raise SetupError(f"unknown {what} {rule!r}; choose from {', '.join(rules)}")


def check_fault_kinds(faults: frozenset[str]) -> None:
    """SetupError naming every entry of ``faults`` that is not one of FAULT_KINDS."""
    unknown = faults - set(FAULT_KINDS)
    if unknown:
        raise SetupError(f"unknown fault kinds {sorted(unknown)}")


@dataclass(slots=True)
class SimResult:
    seed: int
    steps: int = 0
    time_ms: int = 0
    violation: Violation | None = None
    ops: dict[str, int] = field(default_factory=dict)
    leader_terms: int = 0
    commit_index: int = 0
    stats: dict[str, int] = field(default_factory=dict)  # how often each fault and mechanism occurred

    @property
    def ok(self) -> bool:
        return self.violation is None


class Simulation:
    def __init__(self, seed: int, options: SimOptions = SimOptions(), trace: Callable[[str], None] | None = None):
        options.validate()
        self.seed = seed
        self.options = options
        self.rates = options.rates
        self._trace_sink = trace
        master = random.Random(seed)
        self._net_rng = random.Random(master.getrandbits(64))
        self._disk_rng = random.Random(master.getrandbits(64))
        self._nemesis_rng = random.Random(master.getrandbits(64))
        self._client_rng = random.Random(master.getrandbits(64))
        self._node_rng = random.Random(master.getrandbits(64))
        # Flow-control limits vary by seed: one entry per message and a tiny in-flight
        # window make followers acknowledge old-term entries apart from the new leader's
        # first entry, which is what the figure-8 commitment rule is about.
        self._max_size_per_msg = master.choice(MAX_SIZE_PER_MSG_CHOICES)
        self._max_inflight_msgs = master.choice(MAX_INFLIGHT_CHOICES)
        # Half of the seeds hunt figure 8 by cutting leaders off at their first append and
        # commit; the other half let leaders settle, for long logs and snapshots.
        self._hunt_leader_moments = master.random() < self.rates.leader_moment_seeds
        self.agenda = Agenda()
        self.network = Network(self._net_rng)
        self.monitor = SafetyMonitor(options.check_persistence_rule)
        self.history = History()
        self.replicas: dict[int, Replica] = {}
        self.step = 0
        self.quiet = False
        self._next_node_id = options.nodes + 1
        self._partition_until_ms = 0
        self._membership_after_ms = 0
        self._value_seq = 0
        self._seq = 0  # (origin, seq) ids must stay unique across restarts: one counter for the run
        self._client_lease: dict[int, int] = {}  # client -> lease id it holds
        self._client_seen: dict[tuple[int, str], str | None] = {}  # (client, key) -> last value it read
        self._watches: dict[int, Watch] = {}  # client -> its watch stream (open or to reopen)
        self._watch_next: dict[int, int] = {}  # client -> revision its next event must have
        self._watch_node: dict[int, int] = {}  # client -> member its stream is open on
        self.canonical: dict[tuple[int, int], Canonical] = {}
        self._events: list[kt.Event] = []  # every committed event in revision order (first apply)
        self._event_revs: list[int] = []
        self._expiries: dict[int, Expiry] = {}  # lease -> its (first) expiry
        self._expiry_log: list[Expiry] = []
        self._applied_max = 0
        self._promise_ms: dict[int, int] = {}  # lease -> until when the current leader promised it lives
        self._bootstrap = ConfState(voters=frozenset(range(1, options.nodes + 1)))
        self._client_op: dict[int, Operation] = {}
        self.stats: Counter[str] = Counter()
        self.limits = rules.Limits(min_lease_ttl_s=rules.min_lease_ttl_s(ELECTION_TICKS * TICK_MS))
        self._configs_seen: set[ConfState] = set()

    # -- running ---------------------------------------------------------------------

    def run(self) -> SimResult:
        result = SimResult(self.seed)
        try:
            self._boot()
            while self.step < self.options.steps:
                self._handle(self._next_event())
            self._quiet_phase()
        except InvariantBroken as e:
            result.violation = Violation(self.seed, self.step, self.agenda.now_ms, e.rule, e.detail)
            self._trace(f"VIOLATION {e.rule}: {e.detail}")
        result.steps = self.step
        result.time_ms = self.agenda.now_ms
        result.ops = self.history.counts()
        result.leader_terms = len(self.monitor.leader_of_term)
        result.commit_index = self.monitor.commit_max
        self.stats["configurations"] = len(self._configs_seen)
        self.stats["messages"] = self.network.sent
        self.stats["messages_lost"] = self.network.dropped
        self.stats["messages_duplicated"] = self.network.duplicated
        result.stats = dict(sorted(self.stats.items()))
        return result

    def _next_event(self) -> Event:
        ev = self.agenda.pop()
        if ev is None:  # ticks reschedule themselves, so this means every node is gone
            raise InvariantBroken("liveness", "nothing left to simulate: every node is down or removed")
        self.step += 1
        return ev

    def _boot(self) -> None:
        voters = sorted(self._bootstrap.voters)
        self._trace(
            f"boot seed={self.seed} nodes={voters} faults={sorted(self.options.faults)}"
            f" rule={self.options.fault_rule or '-'} max_size_per_msg={self._max_size_per_msg}"
            f" max_inflight_msgs={self._max_inflight_msgs} leader_moments={self._hunt_leader_moments}"
        )
        for nid in voters:
            self._add_replica(nid, self._bootstrap)
        self.agenda.schedule(self.rates.round_ms, EventKind.FAULT)
        for c in range(1, self.options.clients + 1):
            self.agenda.schedule(self._client_rng.randint(*CLIENT_THINK_MS), EventKind.CLIENT, payload=c)

    def _add_replica(self, nid: int, bootstrap: ConfState | None) -> Replica:
        rule = self.options.fault_rule
        faults = frozenset({rule}) if rule in RAFT_RULES else frozenset()
        config = Config(
            id=nid,
            election_tick=ELECTION_TICKS,
            heartbeat_tick=HEARTBEAT_TICKS,
            max_size_per_msg=self._max_size_per_msg,
            max_inflight_msgs=self._max_inflight_msgs,
            faults=faults,
        )
        r = Replica(config, bootstrap, dedupe=rule != "apply_batch_twice")
        self.replicas[nid] = r
        self._start(r)
        return r

    def _start(self, r: Replica) -> None:
        commit = self._core(lambda: r.start(random.Random(self._node_rng.getrandbits(64))), r.id, "start")
        self._reset_lessor(r)
        self.monitor.reset_node(r.id, commit)
        self._trace(
            f"node {r.id} starts: term={r.raft.term if r.raft else '?'} log={r.log.base_index}+"
            f"{len(r.log.entries)} commit={commit} conf={_conf(r.conf)}"
        )
        # A random phase so nodes do not tick in lockstep.
        self.agenda.schedule(self._node_rng.randint(1, TICK_MS), EventKind.TICK, r.id, r.incarnation)
        self._process(r)

    def _handle(self, ev: Event) -> None:
        kind = ev.kind
        if kind in _NODE_EVENTS and self._defer_while_paused(ev):
            return
        if kind == EventKind.TICK:
            r = self.replicas[ev.node_id]
            if r.raft is None or ev.incarnation != r.incarnation:
                return
            self._core(r.raft.tick, r.id, "tick")
            self.agenda.schedule(TICK_MS, EventKind.TICK, r.id, r.incarnation)
            self._expire_leases(r)
            if r.hub.unsynced_count:
                # As the server's tick does; counted to show the path is exercised.
                self.stats["watch_history_scanned"] += r.hub.catch_up(WATCH_CATCH_UP_EVENTS)
            self._process(r)
        elif kind == EventKind.DELIVER:
            assert isinstance(ev.payload, Message)
            self._deliver(ev.payload)
        elif kind == EventKind.SYNC_DONE:
            r = self.replicas[ev.node_id]
            rd = r.syncing
            if r.raft is None or ev.incarnation != r.incarnation or rd is None:
                return
            r.disk.sync()
            r.syncing = None
            self._trace(f"node {r.id} fsync done")
            self._finish_ready(r, rd)
            self._flush(r)
            self._process(r)
        elif kind == EventKind.FAULT:
            if not self.quiet:
                self._nemesis()
                self.agenda.schedule(self.rates.round_ms, EventKind.FAULT)
        elif kind == EventKind.CLIENT:
            if isinstance(ev.payload, Operation):
                self._client_timeout(ev.payload)
            elif isinstance(ev.payload, tuple):
                what, client = ev.payload
                if what == "keepalive":
                    self._keepalive(client)
                else:
                    self._watch_check(client)
            else:
                assert isinstance(ev.payload, int)
                self._client_call(ev.payload)
        elif kind == EventKind.REPORT:
            self._report(ev)
        elif kind == EventKind.RPC:
            r = self.replicas[ev.node_id]
            if r.raft is not None and ev.incarnation == r.incarnation and callable(ev.payload):
                ev.payload()
        elif kind == EventKind.RESTART:
            r = self.replicas[ev.node_id]
            if r.raft is None and not r.removed and ev.incarnation == r.incarnation:
                self._start(r)

    def _defer_while_paused(self, ev: Event) -> bool:
        """A paused process (GC pause, SIGSTOP) handles nothing until it resumes: its timer
        fires once on resume, and what arrived meanwhile waits in its socket buffer."""
        nid = ev.payload.to if isinstance(ev.payload, Message) and ev.kind == EventKind.DELIVER else ev.node_id
        r = self.replicas.get(nid)
        if r is None or r.paused_until_ms <= self.agenda.now_ms:
            return False
        self.agenda.schedule(r.paused_until_ms - self.agenda.now_ms, ev.kind, ev.node_id, ev.incarnation, ev.payload)
        return True

    def _core(self, call: Callable[[], T], node: int, what: str, refusable: bool = False) -> T:
        """Run a call into the Raft core. Whatever escapes it is a found bug, except a
        ``RaftError`` from a request the core may refuse (``refusable``), re-raised as is."""
        try:
            return call()
        except InvariantBroken:
            raise
        except Exception as e:  # every escape from the core is a finding, whatever its type
            if refusable and isinstance(e, RaftError):
                raise
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise InvariantBroken(
                "core failure",
                f"node {node} {what} raised {type(e).__name__}: {e} (at {where.filename}:{where.lineno})",
            ) from e

    # -- the driver loop of one node ------------------------------------------------------

    def _process(self, r: Replica) -> None:
        loops = 0
        while r.raft is not None and r.syncing is None and r.raft.has_ready():
            loops += 1
            if loops > READY_LOOP_MAX:
                raise InvariantBroken("liveness", f"node {r.id} keeps producing Ready batches ({loops} in one step)")
            rd = self._core(r.raft.ready, r.id, "ready")
            self._handle_ready(r, rd)
        if r.raft is not None:
            self.monitor.observe_role(r.id, r.raft.term, r.raft.role == Role.LEADER)

    def _handle_ready(self, r: Replica, rd: Ready) -> None:
        assert r.raft is not None
        if rd.soft_state is not None and rd.soft_state.role != r.role:
            self._trace(
                f"node {r.id} becomes {rd.soft_state.role.name} in term {r.raft.term}"
                f" (leader {rd.soft_state.leader or '-'})"
            )
            r.role = rd.soft_state.role
            if r.role != Role.LEADER:
                self.monitor.observe_not_leader(r.id)
            self._role_changed(r)
        if rd.soft_state is not None and rd.soft_state.leader != r.leader_seen:
            r.leader_seen = rd.soft_state.leader
            if r.leader_seen:
                self._retry_proposals(r)
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            r.log.install(meta.index, meta.term)
        if rd.entries:
            self.monitor.observe_write(r.id, r.log, rd.entries)
            if r.role == Role.LEADER:
                self._leader_moment(r, "appends")
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            self.monitor.observe_leader_log(r.id, r.raft.term, r.log)
        if rd.hard_state is not None:
            before = self.monitor.commit_max
            self.monitor.observe_commit(r.id, r.log, rd.hard_state.commit, rd.hard_state.term)
            if self.monitor.commit_max > before:
                self._trace(f"node {r.id} commits up to {rd.hard_state.commit} (first to know {before + 1}..)")
                if r.role == Role.LEADER:
                    self._leader_moment(r, "commits")
        self._send(r, rd.messages)
        if rd.must_sync():
            r.disk.save(rd.hard_state, rd.entries, rd.snapshot)
            if self._faulty("crash") and self._disk_rng.random() < self.rates.crash_before_sync:
                self._trace(f"node {r.id} crashes between save and fsync")
                self.stats["crashes_before_fsync"] += 1
                self._crash(r)
                return
            delay = self._disk_rng.choice(DISK_SYNC_MS)
            if delay:
                r.syncing = rd
                self.agenda.schedule(delay, EventKind.SYNC_DONE, r.id, r.incarnation)
                return
            r.disk.sync()
        self._finish_ready(r, rd)

    def _finish_ready(self, r: Replica, rd: Ready) -> None:
        raft = r.raft
        assert raft is not None
        self._send(r, rd.persisted_messages)
        if rd.snapshot is not None and rd.snapshot.meta.index > r.machine.applied_index:
            meta = rd.snapshot.meta
            r.restore(meta.index, rd.snapshot.data)
            self.monitor.observe_restore(r.id, meta.index, r.machine.hash())
            self._reset_lessor(r)
            self._trace(f"node {r.id} installs snapshot at {meta.index} (term {meta.term})")
            self.stats["snapshots_installed"] += 1
        for e in rd.committed:
            if e.index <= r.machine.applied_index:
                continue
            self.monitor.observe_apply(r.id, e)
            first = e.index > self._applied_max
            self._applied_max = max(self._applied_max, e.index)
            try:
                results = r.machine.apply(e, self.agenda.now_ms).results
            except (EtcdError, ValueError) as exc:
                raise InvariantBroken("core failure", f"node {r.id} cannot apply entry {e.index}: {exc!r}") from exc
            for res in results:
                self._applied(r, e.index, res, first)
        if rd.committed:
            self.monitor.observe_hash(r.id, r.machine.applied_index, r.machine.hash())
            self._trace(f"node {r.id} applied up to {r.machine.applied_index} (revision {r.machine.store.revision})")
        for rs in rd.read_states:
            op = r.pending_reads.pop(rs.context, None)
            if op is not None:
                r.waiting_reads.append((rs.index, op))
        self._core(lambda: raft.advance(rd), r.id, "advance")
        self._serve_reads(r)
        if raft.conf_state != r.conf:
            self._conf_applied(r, raft.conf_state)
        if r.raft is not None and r.machine.applied_index - r.log.base_index >= COMPACT_EVERY_ENTRIES:
            self._compact(r)

    def _applied(self, r: Replica, index: int, res: Result, first: bool) -> None:
        """One command applied on ``r``: lease promises, watchers, the waiting client.

        (The state machine itself started a granted lease's deadline at the simulated ``now``.)
        """
        cmd, now = res.command, self.agenda.now_ms
        if (
            res.error is None
            and isinstance(cmd, kt.LeaseGrantRequest)
            and isinstance(res.response, kt.LeaseGrantResponse)
            and self._is_current_leader(r)
        ):
            self._promise(res.response.id, now + res.response.ttl * 1000)
        if first:
            self._record_canonical(index, res)
        if res.events:
            r.hub.publish(res.events)
        if res.origin == r.id and res.seq:
            op = r.pending.pop(res.seq, None)
            if op is not None:
                self._answer(op, index, res)

    def _record_canonical(self, index: int, res: Result) -> None:
        cmd = res.command
        for ev in res.events:
            self._events.append(ev)
            self._event_revs.append(ev.kv.mod_revision)
        deleted = tuple(ev.kv.key.decode() for ev in res.events if ev.type == kt.EventType.DELETE)
        if res.origin == 0 and isinstance(cmd, kt.LeaseRevokeRequest):
            x = self._expiries.pop(cmd.id, None)
            if res.error is None:
                self._check_lease_promise(cmd.id)
            if x is not None:
                x.applied_step, x.deleted = self.step, deleted
            return
        if not res.seq:
            return
        seen = self.canonical.get((res.origin, res.seq))
        if seen is not None:
            raise InvariantBroken(
                "exactly once",
                f"command {res.origin}/{res.seq} applied again at entry {index}; it was applied at entry {seen.index}",
            )
        succeeded, observed, put = False, None, None
        if isinstance(cmd, kt.PutRequest):
            put = (cmd.key.decode(), cmd.value.decode())
        elif isinstance(res.response, kt.TxnResponse):
            succeeded = res.response.succeeded
            if not succeeded and res.response.responses:
                rr = res.response.responses[0].response_range
                observed = rr.kvs[0].value.decode() if rr is not None and rr.kvs else None
        self.canonical[(res.origin, res.seq)] = Canonical(
            self.step, index, res.error is None, succeeded, observed, deleted, put
        )

    def _answer(self, op: Operation, index: int, res: Result) -> None:
        now = self.agenda.now_ms
        op.index = index
        if res.error is not None:
            self.history.refuse(op, self.step, now)
            self._trace(f"client {op.client} <- {op.kind} {op.key} refused by the state machine: {res.error}")
            return
        resp = res.response
        header = getattr(resp, "header", None)
        revision = header.revision if isinstance(header, kt.ResponseHeader) else 0
        if isinstance(resp, kt.TxnResponse) and not resp.succeeded and resp.responses:
            rr = resp.responses[0].response_range
            op.output = rr.kvs[0].value.decode() if rr is not None and rr.kvs else None
            self._client_seen[(op.client, op.key)] = op.output
        elif op.kind in ("put", "cas"):
            self._client_seen[(op.client, op.key)] = op.value
        if isinstance(resp, kt.LeaseGrantResponse):
            self._client_lease[op.client] = resp.id
            self.agenda.schedule(KEEPALIVE_MS, EventKind.CLIENT, payload=("keepalive", op.client))
        if revision:
            self.history.complete(op, revision, self.step, now, new_revision=bool(res.events))
        else:
            self.history._finish(op, OpStatus.OK, self.step, now)
        self._trace(f"client {op.client} <- ok {op.kind} {op.key} at index {index} revision {revision}")

    def _serve_reads(self, r: Replica) -> None:
        if not r.waiting_reads:
            return
        applied = r.machine.applied_index
        still: list[tuple[int, Operation]] = []
        for index, op in r.waiting_reads:
            if index > applied:
                still.append((index, op))
                continue
            self._serve_read(r, op, f"read index {index}")
        r.waiting_reads = still

    def _serve_read(self, r: Replica, op: Operation, why: str) -> None:
        resp = r.machine.store.range(kt.RangeRequest(key=op.key.encode(), serializable=op.kind == "sget"))
        op.output = resp.kvs[0].value.decode() if resp.kvs else None
        self._check_read_state(r, op, resp.header.revision)
        self._client_seen[(op.client, op.key)] = op.output
        self.history.complete(op, resp.header.revision, self.step, self.agenda.now_ms, new_revision=False)
        self._trace(
            f"client {op.client} <- ok {op.kind} {op.key}={op.output} revision {resp.header.revision} "
            f"({why}, applied {r.machine.applied_index})"
        )

    def _check_read_state(self, r: Replica, op: Operation, revision: int) -> None:
        """Any read, serializable too, must return the committed value of its key at its revision."""
        want: str | None = None
        end = bisect.bisect_right(self._event_revs, revision)
        for i in range(end - 1, -1, -1):
            ev = self._events[i]
            if ev.kv.key.decode() == op.key:
                want = ev.kv.value.decode() if ev.type == kt.EventType.PUT else None
                break
        if want != op.output:
            raise InvariantBroken(
                "state machine safety",
                f"node {r.id} answered {op.kind} {op.key}={op.output} at revision {revision}, "
                f"but the committed value there is {want}",
            )

    def _compact(self, r: Replica) -> None:
        raft = r.raft
        assert raft is not None
        index, image = r.machine.applied_index, r.machine.snapshot()
        try:
            snap: Snapshot = self._core(lambda: raft.compact(index, image), r.id, "compact", refusable=True)
        except RaftError as e:
            if not isinstance(e, CompactionError):
                raise InvariantBroken("core failure", f"node {r.id} compact({index}) raised {e!r}") from e
            # The core may already hold a newer snapshot the driver has not been handed yet
            # (one arrived while the previous Ready was being synced): nothing to do.
            self._trace(f"node {r.id} does not compact: {e}")
            return
        r.disk.save(None, (), snap)
        r.disk.sync()
        r.log.install(snap.meta.index, snap.meta.term)
        self._trace(f"node {r.id} compacts its log up to {index}")
        self.stats["compactions"] += 1

    def _send(self, r: Replica, msgs: Sequence[Message]) -> None:
        for m in msgs:
            self.monitor.observe_send(r.id, m, r.disk, r.log)
            delays = self.network.transmit(m.frm, m.to)
            if self._trace_sink is not None:
                fate = "lost" if not delays else ("dup " if len(delays) > 1 else "") + f"+{delays[0]}ms"
                self._trace(f"send {_msg(m)} [{fate}]")
            for d in delays:
                self.agenda.schedule(d, EventKind.DELIVER, payload=m)
            if not delays and m.type == MessageType.SNAP:
                self._report_snapshot(m, failed=True)

    def _deliver(self, m: Message) -> None:
        r = self.replicas.get(m.to)
        if r is None or r.raft is None or not self.network.link_open(m.frm, m.to):
            self._trace(f"drop {_msg(m)} ({'node down' if r is None or r.raft is None else 'link cut'})")
            if m.type == MessageType.SNAP:
                self._report_snapshot(m, failed=True)
            return
        self._trace(f"recv {_msg(m)}")
        raft = r.raft
        self._core(lambda: raft.step(m), r.id, f"step({m.type.name})")
        self._process(r)
        if m.type == MessageType.SNAP:
            self._report_snapshot(m, failed=False)

    def _report_snapshot(self, m: Message, failed: bool) -> None:
        """Tell the sender how its snapshot send went, a moment later, as a real transport would."""
        s = self.replicas.get(m.frm)
        if s is not None and s.raft is not None:
            status = Message(MessageType.SNAP_STATUS, to=m.frm, frm=m.to, term=0, reject=failed)
            self.agenda.schedule(1, EventKind.REPORT, s.id, s.incarnation, status)

    def _report(self, ev: Event) -> None:
        s = self.replicas[ev.node_id]
        raft = s.raft
        if raft is None or ev.incarnation != s.incarnation:
            return
        assert isinstance(ev.payload, Message)
        status = ev.payload
        self._trace(f"node {s.id} hears its snapshot to {status.frm} {'failed' if status.reject else 'arrived'}")
        self._core(lambda: raft.step(status), s.id, "step(SNAP_STATUS)")
        self._process(s)

    # -- crashes and membership -----------------------------------------------------------

    def _crash(self, r: Replica) -> None:
        """Power off; unless the node was removed, it comes back after a random pause."""
        for op in r.crash():
            self.history.give_up(op, self.step, self.agenda.now_ms)
        self.monitor.reset_node(r.id, 0)
        self._trace(
            f"node {r.id} CRASH (disk keeps term={r.disk.durable.hard_state.term}"
            f" vote={r.disk.durable.hard_state.vote} entries<={_disk_last(r)})"
        )
        self.stats["crashes" if not r.removed else "removals"] += 1
        if not r.removed:
            down_ms = self._nemesis_rng.randint(*self.rates.crash_down_ms) if not self.quiet else 0
            self.agenda.schedule(down_ms, EventKind.RESTART, r.id, r.incarnation)

    def _conf_applied(self, r: Replica, conf: ConfState) -> None:
        gone = r.conf.all_nodes() - conf.all_nodes()
        self._trace(f"node {r.id} applies conf {_conf(conf)}")
        r.conf = conf
        self._configs_seen.add(conf)
        # A removed node learns it is out and shuts down, never to return (ids are not reused).
        for nid in sorted(gone):
            x = self.replicas.get(nid)
            if x is None or x.removed:
                continue
            x.removed = True
            self._trace(f"node {nid} is removed from the cluster and shuts down")
            if x.raft is not None:
                self._crash(x)

    def _leader(self) -> Replica | None:
        """The live leader of the highest term, if any (a deposed one may not know it yet)."""
        best: Replica | None = None
        best_term = -1
        for r in self.replicas.values():
            if r.raft is not None and r.raft.role == Role.LEADER and r.raft.term > best_term:
                best, best_term = r, r.raft.term
        return best

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.raft is not None]

    # -- the nemesis ----------------------------------------------------------------------

    def _faulty(self, kind: str) -> bool:
        return not self.quiet and kind in self.options.faults

    def _nemesis(self) -> None:
        rng, rates, now = self._nemesis_rng, self.rates, self.agenda.now_ms
        ids = sorted(nid for nid, r in self.replicas.items() if not r.removed)
        if self._faulty("partition"):
            if self.network.partitioned and now >= self._partition_until_ms:
                self.network.heal()
                self._trace("nemesis: partition heals")
            elif not self.network.partitioned and rng.random() < rates.partition_start:
                self._partition(ids)
                self._partition_until_ms = now + rng.randint(*rates.partition_ms)
        if self._faulty("crash") and rng.random() < rates.crash:
            up = [nid for nid in ids if self.replicas[nid].raft is not None]
            leader = self._leader()
            limit = len(ids) - 1 if rng.random() < rates.crash_majority_allowed else (len(ids) - 1) // 2
            if up and len(ids) - len(up) < limit:
                pick_leader = leader is not None and rng.random() < rates.crash_leader_bias
                victim = leader.id if pick_leader and leader is not None else rng.choice(up)
                self._crash(self.replicas[victim])
        wire = [k for k in ("drop", "dup", "reorder") if self._faulty(k)]
        if wire and rng.random() < rates.wire_change:
            c = self.network.conditions
            self.network.conditions = LinkConditions(
                latency_min_ms=1,
                latency_max_ms=rng.choice(rates.latency_max_ms) if "reorder" in wire else c.latency_max_ms,
                drop_rate=rng.choice(rates.drop_rates) if "drop" in wire else 0.0,
                dup_rate=rng.choice(rates.dup_rates) if "dup" in wire else 0.0,
            )
            n = self.network.conditions
            self._trace(f"nemesis: wire drop={n.drop_rate} dup={n.dup_rate} latency=1..{n.latency_max_ms}ms")
        if self._faulty("pause") and rng.random() < rates.pause:
            running = [self.replicas[nid] for nid in ids if self.replicas[nid].raft is not None]
            running = [r for r in running if r.paused_until_ms <= now]
            leader = self._leader()
            if running:
                pick_leader = leader is not None and leader in running and rng.random() < rates.pause_leader_bias
                r = leader if pick_leader and leader is not None else rng.choice(running)
                r.paused_until_ms = now + rng.randint(*rates.pause_ms)
                self._trace(f"nemesis: pause node {r.id} until {r.paused_until_ms}ms")
                self.stats["pauses"] += 1
        if self._faulty("membership") and now >= self._membership_after_ms and rng.random() < rates.membership:
            self._change_membership()

    def _leader_moment(self, leader: Replica, moment: str) -> None:
        """Sometimes cut a leader off as it appends or commits (most often the first time
        in its term), swallowing what it has in flight; whatever partition was there gives way.

        Cut off as it first appends, a new leader leaves a divergent higher-term tail
        behind; cut off as it first commits, it leaves a commitment only a bare majority
        knows of. Together they build the logs of Raft's figure 8, where a wrong
        commitment rule loses a committed entry.
        """
        raft = leader.raft
        assert raft is not None
        if not self._hunt_leader_moments or not self._faulty("partition"):
            return
        first = leader.moments.get(moment, 0) < raft.term
        leader.moments[moment] = raft.term
        rates = self.rates
        if moment == "appends":
            chance = rates.isolate_on_first_append if first else rates.isolate_on_append
        else:
            chance = rates.isolate_on_first_commit if first else rates.isolate_on_commit
        if self._nemesis_rng.random() < chance:
            self.network.heal()
            self.network.isolate(leader.id, sorted(self.replicas))
            self._partition_until_ms = self.agenda.now_ms + self._nemesis_rng.randint(*self.rates.partition_ms)
            when = "first " if first else ""
            self._trace(f"nemesis: isolate leader {leader.id} as it {when}{moment} in term {raft.term}")
            self.stats["partitions"] += 1

    def _partition(self, ids: list[int]) -> None:
        rng = self._nemesis_rng
        shape = rng.random()
        leader = self._leader()
        if shape < 0.4:
            victim = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
            self.network.isolate(victim, ids)
            self._trace(f"nemesis: isolate node {victim}")
            self.stats["partitions"] += 1
        elif shape < 0.7:
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            groups = [sorted(shuffled[:cut]), sorted(shuffled[cut:])]
            self.network.partition(groups)
            self._trace(f"nemesis: partition {groups[0]} | {groups[1]}")
            self.stats["partitions"] += 1
        else:
            links = [(a, b) for a in ids for b in ids if a != b]
            chosen = rng.sample(links, rng.randint(1, min(3, len(links))))
            for a, b in chosen:
                self.network.cut(a, b)
            self._trace(f"nemesis: one-way cuts {sorted(chosen)}")
            self.stats["partitions"] += 1

    def _change_membership(self) -> None:
        rng = self._nemesis_rng
        leader = self._leader()
        if leader is None or leader.raft is None:
            return
        conf = leader.conf
        if conf.joint:
            if not conf.auto_leave:  # an explicit joint change waits for the leave to be proposed
                leader_raft = leader.raft
                self._trace(f"nemesis: propose leaving the joint configuration via node {leader.id}")
                self.stats["conf_changes_proposed"] += 1
                self._refusable(lambda: leader_raft.propose_conf_change(ConfChange()), leader, "leave joint")
                self._membership_after_ms = self.agenda.now_ms + self.rates.membership_gap_ms
            return
        voters, learners = sorted(conf.voters), sorted(conf.learners)
        n = self.options.nodes
        choices: list[str] = ["transfer"] if len(voters) > 1 else []
        if len(voters) > max(2, n - 1):
            choices.append("remove_voter")
        if len(voters) < n + 1:
            choices.append("add_voter")
            if not learners:
                choices.append("add_learner")
        if learners:
            choices += ["promote", "remove_learner"]
        if len(voters) >= 3:
            choices.append("replace")
        if not choices:
            return
        what = rng.choice(choices)
        raft = leader.raft
        changes: tuple[ConfChangeSingle, ...]
        transition = ConfChangeTransition.AUTO
        if what == "transfer":
            target = rng.choice([v for v in voters if v != leader.id])
            self._trace(f"nemesis: transfer leadership {leader.id} -> {target}")
            self.stats["transfers"] += 1
            self._refusable(lambda: raft.transfer_leadership(target), leader, "transfer")
            self._membership_after_ms = self.agenda.now_ms + self.rates.membership_gap_ms
            return
        if what == "remove_voter":
            changes = (ConfChangeSingle(ConfChangeType.REMOVE_NODE, rng.choice(voters)),)
        elif what == "remove_learner":
            changes = (ConfChangeSingle(ConfChangeType.REMOVE_NODE, rng.choice(learners)),)
        elif what == "promote":
            changes = (ConfChangeSingle(ConfChangeType.ADD_VOTER, rng.choice(learners)),)
        else:
            new_id = self._next_node_id
            self._next_node_id += 1
            # A joiner starts with an empty log and disk. By default it is told the cluster's
            # founding configuration (the log's conf changes are deltas from it), as
            # etcd's --initial-cluster does; without it the core can only learn the
            # configuration from a snapshot (see SimOptions.joiners_know_bootstrap).
            self._add_replica(new_id, self._bootstrap if self.options.joiners_know_bootstrap else None)
            if what == "add_learner":
                changes = (ConfChangeSingle(ConfChangeType.ADD_LEARNER, new_id),)
            elif what == "add_voter":
                changes = (ConfChangeSingle(ConfChangeType.ADD_VOTER, new_id),)
            else:  # replace one voter by a new one: two changes at once go through joint consensus
                changes = (
                    ConfChangeSingle(ConfChangeType.ADD_VOTER, new_id),
                    ConfChangeSingle(ConfChangeType.REMOVE_NODE, rng.choice(voters)),
                )
                transition = rng.choice((ConfChangeTransition.JOINT_IMPLICIT, ConfChangeTransition.JOINT_EXPLICIT))
        cc = ConfChange(changes, transition)
        self.stats["conf_changes_proposed"] += 1
        self._trace(
            f"nemesis: propose conf change via node {leader.id}: "
            + ", ".join(f"{c.type.name} {c.node_id}" for c in changes)
        )
        if leader.raft is not None:
            self._refusable(lambda: raft.propose_conf_change(cc), leader, "conf change")
        self._membership_after_ms = self.agenda.now_ms + self.rates.membership_gap_ms

    def _refusable(self, call: Callable[[], object], r: Replica, what: str) -> bool:
        """Call into the core where a refusal (``RaftError``) is a normal answer; False if refused."""
        try:
            self._core(call, r.id, what, refusable=True)
        except RaftError as e:
            self._trace(f"node {r.id} refuses {what}: {e}")
            return False
        self._process(r)
        return True

    # -- the simulated driver: batching, retries, leases, watches ------------------------------

    def _submit(self, r: Replica, op: Operation, cmd: Command) -> None:
        """Hand a write to ``r``'s driver. While an fsync is in progress commands queue up and
        enter the log together, as one batch entry, when it ends (as the server batches)."""
        # The server's own request rules (machine.rules, as NodeBackend applies them) come first.
        try:
            cmd = cast(Command, r.machine.validate(cmd, self.limits))
        except EtcdError as e:
            self._trace(f"node {r.id} refuses {op.describe()}: {e}")
            self.history.refuse(op, self.step, self.agenda.now_ms)
            return
        self._seq += 1
        op.origin, op.seq = r.id, self._seq
        r.pending[op.seq] = op
        r.queue.append((op.seq, cmd))
        if r.syncing is None:
            self._flush(r)
        if op.status is OpStatus.PENDING:
            self.agenda.schedule(WRITE_TIMEOUT_MS, EventKind.CLIENT, payload=op)

    def _flush(self, r: Replica) -> None:
        if not r.queue or r.raft is None:
            return
        batch, r.queue = r.queue, []
        data = encode_batch(r.id, batch)
        if len(batch) > 1:
            self.stats["batches"] += 1
            self.stats["batched_commands"] += len(batch)
        raft = r.raft
        if self._refusable(lambda: raft.propose(data), r, "propose"):
            r.proposals.append(Proposal(data, [seq for seq, _ in batch]))
            return
        for seq, _ in batch:
            op = r.pending.pop(seq, None)
            if op is not None:
                self.history.refuse(op, self.step, self.agenda.now_ms)

    def _retry_proposals(self, r: Replica) -> None:
        """A new leader is known: propose again (same ids) what may have been lost with the old
        one (a forwarded proposal the old leader never appended). The state machine applies a
        command once, whichever copy commits first."""
        raft = r.raft
        if raft is None:
            return
        r.proposals = [p for p in r.proposals if any(seq in r.pending for seq in p.seqs)]
        for p in list(r.proposals):
            data = p.data
            if self._refusable(functools.partial(raft.propose, data), r, "re-propose"):
                self.stats["proposals_retried"] += 1

    def _role_changed(self, r: Replica) -> None:
        if self.options.fault_rule == "expire_on_follower_clock":
            return  # every member keeps deadlines as if it led (set up in _reset_lessor)
        if r.role == Role.LEADER and not r.lessor.is_primary:
            r.lessor.promote(self.agenda.now_ms, LEASE_EXTEND_MS)
        elif r.role != Role.LEADER and r.lessor.is_primary:
            r.lessor.demote()

    def _reset_lessor(self, r: Replica) -> None:
        # A restored machine tracks every lease of its store, with no deadline (not primary).
        if self.options.fault_rule == "restore_forgets_leases":
            r.machine.leases = Lessor()  # the broken rule: deadlines are not rebuilt from the image
        now = self.agenda.now_ms
        broken = self.options.fault_rule == "expire_on_follower_clock"
        if broken or (r.raft is not None and r.raft.role == Role.LEADER):
            r.lessor.promote(now, LEASE_EXTEND_MS)

    def _is_current_leader(self, r: Replica) -> bool:
        """``r`` leads the highest term any node has led: a promise it makes is the cluster's."""
        raft = r.raft
        return (
            raft is not None and raft.role == Role.LEADER and raft.term == max(self.monitor.leader_of_term, default=0)
        )

    def _promise(self, lease: int, until_ms: int) -> None:
        self._promise_ms[lease] = max(self._promise_ms.get(lease, 0), until_ms)

    def _check_lease_promise(self, lease: int) -> None:
        until = self._promise_ms.get(lease, 0)
        if self.agenda.now_ms < until:
            raise InvariantBroken(
                "lease kept alive",
                f"lease {lease:x} is revoked by expiry at {self.agenda.now_ms}ms, but the leader kept it alive "
                f"until {until}ms (a keep-alive that reached the current leader)",
            )

    def _expire_leases(self, r: Replica) -> None:
        """The leader proposes the revocation of an expired lease on its own log only (never
        forwarded: a paused old leader's stale expiry must not be committed by a new leader)."""
        raft = r.raft
        if raft is None:
            return
        broken = self.options.fault_rule == "expire_on_follower_clock"
        if raft.role != Role.LEADER and not broken:
            return
        for lid in r.lessor.expired(self.agenda.now_ms):
            data = encode_lease_expiry(lid)
            if self._refusable(functools.partial(raft.propose, data), r, "lease expiry"):
                self._trace(f"node {r.id} proposes the expiry of lease {lid:x}")
                self.stats["lease_expiries_proposed"] += 1
                if lid not in self._expiries:
                    x = Expiry(lid, self.step)
                    self._expiries[lid] = x
                    self._expiry_log.append(x)

    def _keepalive(self, client: int) -> None:
        """A client's keep-alive goes to a member; a follower forwards it to the leader it knows.
        The leader renews only once it has applied everything committed, including an entry of
        its own term (so an older leader's expiry of the lease cannot still be on its way)."""
        lid = self._client_lease.get(client)
        if lid is None or self.quiet:
            return
        self.agenda.schedule(KEEPALIVE_MS, EventKind.CLIENT, payload=("keepalive", client))
        live = [r for r in self._live() if not r.removed and r.paused_until_ms <= self.agenda.now_ms]
        if not live:
            return
        leader = self._leader()
        r = leader if leader in live and self._client_rng.random() < 0.5 else self._client_rng.choice(live)
        assert r is not None
        raft = r.raft
        assert raft is not None
        if raft.role == Role.LEADER:
            self._renew(r, lid)
            return
        to = raft.leader_id
        if not to or to not in self.replicas:
            return
        target = self.replicas[to]
        for d in self.network.transmit(r.id, to):
            self.agenda.schedule(d, EventKind.RPC, to, target.incarnation, functools.partial(self._renew, target, lid))

    def _renew(self, r: Replica, lid: int) -> None:
        raft = r.raft
        if raft is None or raft.role != Role.LEADER:
            return
        commit = raft.commit_index
        if r.machine.applied_index < commit or r.log.term_at(commit) != raft.term:
            self._trace(f"node {r.id} defers keep-alive of lease {lid:x}: it has not applied an entry of its term")
            return
        try:
            ttl = r.lessor.renew(lid, self.agenda.now_ms)
        except EtcdError as e:
            self._trace(f"node {r.id} refuses keep-alive of lease {lid:x}: {e}")
            return  # unknown or expiring lease (or not primary): the client learns NotFound
        self._trace(f"node {r.id} renews lease {lid:x} for {ttl}s")
        self.stats["keepalives"] += 1
        if self._is_current_leader(r):
            self._promise(lid, self.agenda.now_ms + ttl * 1000)

    def _watch_check(self, client: int) -> None:
        """Keep one watch stream per client open, from the revision after the last event it
        saw, and drain it. A stream ends with its member (crash, removal) and is reopened
        elsewhere; one its member's hub cancelled as compacted (a watcher left behind a
        compaction, e.g. across a snapshot) restarts from the compact revision, as an etcd
        client must."""
        if self.quiet:
            return
        self.agenda.schedule(WATCH_CHECK_MS, EventKind.CLIENT, payload=("watch", client))
        w = self._watches.get(client)
        if w is not None:
            r = self.replicas.get(self._watch_node.get(client, 0))
            if r is not None and r.raft is not None and any(x is w for x in r.watches):
                watcher = w.watcher
                assert watcher is not None
                self._deliver_events(w, watcher.take(WATCH_TAKE_EVENTS))
                if not watcher.canceled:
                    return
                r.watches.remove(w)
                r.hub.cancel(watcher.id)
                self._compacted(client, r, watcher.compact_revision)
        live = [r for r in self._live() if not r.removed and r.paused_until_ms <= self.agenda.now_ms]
        if not live:
            return
        r = self._client_rng.choice(live)
        start = self._watch_next.get(client, 1)
        watcher = r.hub.watch(b"\0", b"\0", start, prev_kv=True)
        if watcher.canceled:
            # etcd refuses a watch from a compacted revision; the client starts over from there.
            self._compacted(client, r, watcher.compact_revision)
            start = watcher.compact_revision
            watcher = r.hub.watch(b"\0", b"\0", start, prev_kv=True)
        w = Watch(client, start, watcher=watcher)
        self._watches[client] = w
        self._watch_node[client] = r.id
        self._watch_next[client] = start
        self.stats["watches_opened"] += 1
        r.watches.append(w)
        self._deliver_events(w, watcher.take(WATCH_TAKE_EVENTS))

    def _compacted(self, client: int, r: Replica, compact_revision: int) -> None:
        nxt = self._watch_next.get(client, 1)
        self._trace(f"client {client} watch from {nxt} on node {r.id}: compacted at {compact_revision}")
        self._watch_next[client] = compact_revision
        self.stats["watch_compacted"] += 1

    def _deliver_events(self, w: Watch, events: Sequence[kt.Event]) -> None:
        """Every event must be the next committed one: no gap, no duplicate, in order."""
        for ev in events:
            if ev.kv.mod_revision < w.start_rev:
                continue  # a lagging member applies what the stream started after
            nxt = self._watch_next.get(w.client, 1)
            pos = w.events
            first = bisect.bisect_left(self._event_revs, w.start_rev) + pos
            want = self._events[first] if first < len(self._events) else None
            if want is None or ev != want:
                raise InvariantBroken(
                    "watch",
                    f"client {w.client}'s watch (from revision {w.start_rev}) got {_event(ev)} as its event "
                    f"{pos + 1}, but the committed event there is {_event(want) if want else 'none yet'} "
                    f"(next revision expected {nxt})",
                )
            w.events += 1
            # One apply hands over all the events of its revision, so a stream never ends mid-revision.
            self._watch_next[w.client] = ev.kv.mod_revision + 1
            self.stats["watch_events"] += 1

    # -- clients --------------------------------------------------------------------------

    def _client_call(self, client: int) -> None:
        if self.quiet:
            return
        rng = self._client_rng
        self.agenda.schedule(rng.randint(*CLIENT_THINK_MS), EventKind.CLIENT, payload=client)
        if client not in self._watches:
            self.agenda.schedule(0, EventKind.CLIENT, payload=("watch", client))
            self._watches[client] = Watch(client, 1)
        busy = self._client_op.get(client)
        now = self.agenda.now_ms
        live = [r for r in self._live() if not r.removed and r.paused_until_ms <= now]
        if (busy is not None and busy.status is OpStatus.PENDING) or not live:
            return
        leader = self._leader()
        r = leader if leader is not None and leader in live and rng.random() < 0.5 else rng.choice(live)
        self._client_op[client] = self._request(r, client)

    def _request(self, r: Replica, client: int) -> Operation:
        """One etcd-style request chosen at random, through ``r``'s driver."""
        rng, step, now = self._client_rng, self.step, self.agenda.now_ms
        key = rng.choice(KEYS)
        self._value_seq += 1
        value = f"c{client}.{self._value_seq}"
        lease = self._client_lease.get(client)
        x = rng.random()
        if x < 0.25:
            op = self.history.call(client, "put", r.id, key, value, step, now)
            self._trace(f"client {client} -> put {key}={value} via node {r.id}")
            self._submit(r, op, kt.PutRequest(key=key.encode(), value=value.encode()))
        elif x < 0.50:
            return self._read(r, client, key, serializable=x >= 0.45)
        elif x < 0.65:
            expected = self._client_seen.get((client, key))
            op = self.history.call(client, "cas", r.id, key, value, step, now)
            op.expected = expected
            compare = (
                kt.Compare(kt.CompareResult.EQUAL, kt.CompareTarget.VALUE, key.encode(), value=expected.encode())
                if expected is not None
                else kt.Compare(kt.CompareResult.EQUAL, kt.CompareTarget.CREATE, key.encode(), create_revision=0)
            )
            txn = kt.TxnRequest(
                compare=(compare,),
                success=(kt.RequestOp(request_put=kt.PutRequest(key=key.encode(), value=value.encode())),),
                failure=(kt.RequestOp(request_range=kt.RangeRequest(key=key.encode())),),
            )
            self._trace(f"client {client} -> txn if {key}=={expected} then put {value} via node {r.id}")
            self._submit(r, op, txn)
        elif x < 0.70:
            op = self.history.call(client, "delete", r.id, key, None, step, now)
            self._trace(f"client {client} -> delete {key} via node {r.id}")
            self._submit(r, op, kt.DeleteRangeRequest(key=key.encode()))
        elif x < 0.72:
            op = self.history.call(client, "delrange", r.id, "k", None, step, now)
            self._trace(f"client {client} -> delete range k* via node {r.id}")
            self._submit(r, op, kt.DeleteRangeRequest(key=b"k", range_end=b"l"))
        elif x < 0.75:
            rev = max(1, self.history.visible_rev - 5)
            op = self.history.call(client, "compact", r.id, "", str(rev), step, now)
            self._trace(f"client {client} -> compact at revision {rev} via node {r.id}")
            self._submit(r, op, kt.CompactionRequest(revision=rev))
        elif lease is None and x < 0.85:
            op = self.history.call(client, "grant", r.id, "", None, step, now)
            self._trace(f"client {client} -> lease grant ttl {LEASE_TTL_S}s via node {r.id}")
            self._submit(r, op, kt.LeaseGrantRequest(ttl=LEASE_TTL_S))
        elif lease is not None and x < 0.92:
            lkey = f"l{client}"
            op = self.history.call(client, "put", r.id, lkey, value, step, now)
            self._trace(f"client {client} -> put {lkey}={value} lease {lease:x} via node {r.id}")
            self._submit(r, op, kt.PutRequest(key=lkey.encode(), value=value.encode(), lease=lease))
        elif lease is not None and 0.925 <= x < 0.94:
            # The client walks away (a crash, a lost session) without revoking: its lease must
            # expire on the leader's clock after its TTL, and take the client's key with it.
            self._trace(f"client {client} abandons lease {lease:x}")
            del self._client_lease[client]
            self.stats["leases_abandoned"] += 1
            return self._read(r, client, f"l{client}", serializable=False)
        elif lease is not None and x < 0.925:
            op = self.history.call(client, "revoke", r.id, "", None, step, now)
            self._trace(f"client {client} -> lease revoke {lease:x} via node {r.id}")
            del self._client_lease[client]  # whatever the outcome, the client stops keeping it alive
            self._submit(r, op, kt.LeaseRevokeRequest(id=lease))
        else:
            return self._read(r, client, f"l{client}" if lease is not None else key, serializable=False)
        return op

    def _read(self, r: Replica, client: int, key: str, serializable: bool) -> Operation:
        kind = "sget" if serializable else "get"
        op = self.history.call(client, kind, r.id, key, None, self.step, self.agenda.now_ms)
        raft = r.raft
        assert raft is not None
        if serializable:
            self._serve_read(r, op, "serializable: local state")
            return op
        commit = raft.commit_index
        if (
            self.options.fault_rule == "read_before_term_commit"
            and raft.role == Role.LEADER
            and r.log.term_at(commit) != raft.term
            and r.machine.applied_index >= commit
        ):
            self._serve_read(r, op, "BROKEN: a new leader reads before committing in its term")
            return op
        ctx = f"r{op.op_id}".encode()
        self._trace(f"client {client} -> get {key} via node {r.id} (ctx {ctx.decode()})")
        r.pending_reads[ctx] = op
        if not self._refusable(lambda: raft.read_index(ctx), r, "read_index"):
            if r.pending_reads.pop(ctx, None) is not None:
                self.history.refuse(op, self.step, self.agenda.now_ms)
        elif op.status is OpStatus.PENDING:
            self.agenda.schedule(READ_TIMEOUT_MS, EventKind.CLIENT, payload=op)
        return op

    def _client_timeout(self, op: Operation) -> None:
        if op.status is not OpStatus.PENDING:
            return
        r = self.replicas[op.node]
        if op.seq:
            r.pending.pop(op.seq, None)
        r.pending_reads = {k: v for k, v in r.pending_reads.items() if v is not op}
        r.waiting_reads = [(i, w) for i, w in r.waiting_reads if w is not op]
        self.history.give_up(op, self.step, self.agenda.now_ms)
        self._trace(f"client {op.client} <- timeout op {op.op_id}")

    # -- the quiet phase: liveness and durability -------------------------------------------

    def _quiet_phase(self) -> None:
        self.quiet = True
        self.network.heal()
        self.network.conditions = LinkConditions()
        for r in self.replicas.values():
            r.paused_until_ms = min(r.paused_until_ms, self.agenda.now_ms)
        self._trace("quiet: every fault heals; a leader must commit a probe write")
        for r in list(self.replicas.values()):
            if r.raft is None and not r.removed:
                self._start(r)
        start_ms, start_step = self.agenda.now_ms, self.step
        probe: Operation | None = None
        while probe is None or probe.status is not OpStatus.OK:
            leader = self._leader()
            stale = probe is None or probe.status is not OpStatus.PENDING or probe.node != (leader and leader.id)
            if leader is not None and stale:
                if probe is not None and probe.status is OpStatus.PENDING:
                    self._client_timeout(probe)
                probe = self.history.call(
                    0, "put", leader.id, "probe", f"probe{self.step}", self.step, self.agenda.now_ms
                )
                self._submit(
                    leader, probe, kt.PutRequest(key=b"probe", value=probe.value.encode() if probe.value else b"")
                )
                if probe.status is OpStatus.OK:
                    break
            if self.agenda.now_ms - start_ms > self.options.quiet_ms or self.step - start_step > QUIET_STEPS_MAX:
                roles = ", ".join(
                    f"{r.id}:{r.raft.role.name}/t{r.raft.term}" if r.raft else f"{r.id}:down"
                    for r in self.replicas.values()
                    if not r.removed
                )
                raise InvariantBroken(
                    "liveness",
                    f"{'no leader elected' if leader is None else 'no probe write committed'} within "
                    f"{self.options.quiet_ms}ms after every fault healed (nodes {roles})",
                )
            self._handle(self._next_event())
        leader = self.replicas[probe.node]
        self._trace(f"quiet: leader {leader.id} committed the probe after {self.agenda.now_ms - start_ms}ms")
        applied = self.monitor.applied
        for op in self.history.ops:
            if op.status is not OpStatus.OK or not op.seq:
                continue
            c = self.canonical.get((op.origin, op.seq))
            entry = applied[op.index - 1] if 0 < op.index <= len(applied) else None
            if c is None or entry is None or op.index > leader.machine.applied_index:
                raise InvariantBroken(
                    "durability",
                    f"acknowledged {op.describe()} (entry {op.index}) is not in leader {leader.id}'s state "
                    f"(applied {leader.machine.applied_index})",
                )
        self._let_leases_expire()
        self._check_linearizable()

    def _let_leases_expire(self) -> None:
        """Expiry liveness: quiet clients keep no lease alive, so the leader, on its own clock,
        must revoke every lease within its TTL plus the promotion slack and one retry of the
        revocation (a lease granted by a request whose client timed out included)."""
        start_ms, start_step = self.agenda.now_ms, self.step
        while True:
            leader = self._leader()
            left = leader.machine.store.lease_ids() if leader is not None else []
            if leader is not None and not left:
                return
            ttl_ms = max((leader.machine.store.lease_ttl(lid) for lid in left), default=LEASE_TTL_S) * 1000 \
                if leader is not None else LEASE_TTL_S * 1000
            bound = 2 * (ttl_ms + LEASE_EXTEND_MS + DEFAULT_RETRY_MS)
            if self.agenda.now_ms - start_ms > bound or self.step - start_step > QUIET_STEPS_MAX:
                where = f"leader {leader.id}" if leader is not None else "no leader"
                raise InvariantBroken(
                    "lease expiry",
                    f"{len(left)} lease(s) nobody keeps alive still exist {self.agenda.now_ms - start_ms}ms after "
                    f"the clients went quiet ({where}: {', '.join(f'{lid:x}' for lid in left[:5])})",
                )
            self._handle(self._next_event())

    def _check_linearizable(self) -> None:
        """The whole client history, writes and reads, must have a linearization (verify's checker)."""
        budget = [LINEARIZABILITY_POLLS_MAX]

        def exhausted() -> bool:
            budget[0] -= 1
            return budget[0] < 0

        ops = self.history.to_verify(self.canonical, self._expiry_log)
        result = check_operations(ops, KeyValue(), Limits(should_stop=exhausted, memory_bytes_max=64 << 20))
        self.stats["linearizability_configurations"] += result.configurations
        if result.verdict is Verdict.UNKNOWN:
            self.stats["linearizability_unknown"] += 1
            self._trace(f"quiet: linearizability check gave up ({result.reason})")
        elif result.verdict is Verdict.NOT_LINEARIZABLE:
            part = result.failing[0]
            stuck = "; ".join(f"{b.op.f} {b.op.input or ''}->{b.op.output or ''}: {b.reason}" for b in part.blocked[:3])
            raise InvariantBroken(
                "linearizability",
                f"the client history ({len(ops)} operations) has no linearization; "
                f"longest linearizable prefix {len(part.order)} operations; then {stuck}",
            )
        else:
            self._trace(f"quiet: the {len(ops)} client operations are linearizable")

    # -- trace ------------------------------------------------------------------------------

    def _trace(self, text: str) -> None:
        if self._trace_sink is not None:
            self._trace_sink(f"{self.step:>7} {self.agenda.now_ms:>7}ms  {text}")


def run_seed(seed: int, options: SimOptions = SimOptions(), trace: Callable[[str], None] | None = None) -> SimResult:
    return Simulation(seed, options, trace).run()


def _msg(m: Message) -> str:
    parts = [f"{m.type.name} {m.frm}->{m.to} t{m.term}"]
    if m.type in (MessageType.APP, MessageType.SNAP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"idx={m.index} lt={m.log_term}")
    if m.entries:
        parts.append(f"ents={m.entries[0].index}..{m.entries[-1].index}")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject:
        parts.append(f"REJECT hint={m.reject_hint}")
    elif m.type in (MessageType.APP_RESP, MessageType.READ_INDEX_RESP):
        parts.append(f"idx={m.index}")
    if m.snapshot is not None:
        parts.append(f"snap@{m.snapshot.meta.index}")
    return " ".join(parts)


def _event(e: kt.Event) -> str:
    what = "PUT" if e.type == kt.EventType.PUT else "DELETE"
    return f"{what} {e.kv.key.decode()}={e.kv.value.decode()}@{e.kv.mod_revision}"


def _conf(c: ConfState) -> str:
    s = f"voters={sorted(c.voters)}"
    if c.learners:
        s += f" learners={sorted(c.learners)}"
    if c.voters_outgoing:
        s += f" outgoing={sorted(c.voters_outgoing)}"
    return s


def _disk_last(r: Replica) -> int:
    d = r.disk.durable
    return d.entries[-1].index if d.entries else (d.snapshot.meta.index if d.snapshot else 0)
