"""Value types shared by the Raft core, its drivers (server, simulator) and storage.

Theory of operation
-------------------
Everything the consensus core exchanges with the outside world is one of the frozen
values below: log entries, the durable hard state, snapshots, cluster configurations,
messages between peers, and the ``Ready`` batch the core hands to its driver.

The driver loop (see ``RaftNode`` in ``raft/node.py``)::

    rd = node.ready()
    send(rd.messages)                    # may go out before persistence (leader appends)
    persist(rd.hard_state, rd.entries, rd.snapshot)   # one fsync for the whole batch
    send(rd.persisted_messages)          # votes, append acks: only after the fsync
    apply(rd.snapshot); apply(rd.committed)           # committed entries are already durable
    serve(rd.read_states)
    node.advance(rd)

Rules for this module: no I/O, no clocks, no randomness; values only. Persisted entries
replace any stored suffix that starts at ``rd.entries[0].index`` (a new leader may
overwrite a follower's uncommitted tail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

NONE = 0
"""Node id meaning "nobody" (no vote, no known leader). Real node ids are >= 1."""

U64_MAX = 2**64 - 1
"""The one width of ids, terms and indexes: unsigned 64-bit, on the wire (msgpack) and
in the WAL (``<Q``). Node ids may use the whole width (etcd member ids are random u64)."""

COUNTER_MAX = 2**63 - 1
"""The largest term or index a member accepts from a peer or its disk. Terms and indexes
are incremented, so a value at the width's limit (or near it) can never be allowed in: a
node holding term 2**64-1 could never campaign again. Half the width leaves 2**63
increments of headroom, which no honest cluster reaches."""


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a vote is granted or an append acknowledged."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration.

    While joint (``voters_outgoing`` non-empty) a decision needs a majority of
    ``voters`` AND a majority of ``voters_outgoing``. ``learners_next`` holds voters
    being demoted to learners, who become learners on leaving the joint state.
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    voters_outgoing: frozenset[int] = frozenset()
    learners_next: frozenset[int] = frozenset()
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def all_nodes(self) -> frozenset[int]:
        return self.voters | self.voters_outgoing | self.learners | self.learners_next


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf_state: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An opaque state-machine image that covers the log up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes = b""


class ConfChangeType(IntEnum):
    ADD_VOTER = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2


class ConfChangeTransition(IntEnum):
    AUTO = 0  # simple change when possible, else joint with automatic leave
    JOINT_IMPLICIT = 1  # always joint, leave automatically
    JOINT_EXPLICIT = 2  # always joint, the application proposes the leave


@dataclass(frozen=True, slots=True)
class ConfChangeSingle:
    type: ConfChangeType
    node_id: int


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change. An empty ``changes`` tuple means "leave the joint state"."""

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""


class MessageType(IntEnum):
    APP = 1  # append entries (also carries the commit index)
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9  # install snapshot
    PROP = 10  # a proposal forwarded from a follower to the leader
    READ_INDEX = 11  # a follower asks the leader for a read index
    READ_INDEX_RESP = 12
    TIMEOUT_NOW = 13  # leadership transfer: campaign now, skipping pre-vote
    TRANSFER_LEADER = 14  # a follower asks the leader to transfer to ``frm``
    SNAP_STATUS = 15  # local only: driver reports a snapshot send outcome
    UNREACHABLE = 16  # local only: driver reports a peer it could not reach


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


class Role(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts a driver may want to show (not persisted)."""

    leader: int
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read that may be served once the state machine has applied ``index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What a node recovered from its disk, given to ``RaftNode`` at start.

    ``conf_state`` is the bootstrap configuration, used only when there is no
    snapshot (a snapshot carries its own configuration).
    """

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    conf_state: ConfState = ConfState()


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    persisted_messages: tuple[Message, ...] = ()
    committed: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()

    def contains_updates(self) -> bool:
        return bool(
            self.soft_state is not None
            or self.hard_state is not None
            or self.entries
            or self.snapshot is not None
            or self.messages
            or self.persisted_messages
            or self.committed
            or self.read_states
        )

    def must_sync(self) -> bool:
        """Whether persisting this Ready needs an fsync (anything durable changed)."""
        return bool(self.hard_state is not None or self.entries or self.snapshot is not None)


@dataclass(slots=True)
class Config:
    """Tunables of one Raft node. Ticks are logical; the driver decides their length."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1024 * 1024
    max_inflight_msgs: int = 256
    max_uncommitted_entries_size: int = 64 * 1024 * 1024
    # If True a follower refuses proposals with NotLeader(hint) instead of forwarding.
    disable_proposal_forwarding: bool = False
    step_down_on_removal: bool = True
    # Deliberately broken rules, only for proving the simulator has teeth.
    faults: frozenset[str] = field(default_factory=frozenset)
    # Payload bytes of committed entries handed out per Ready (at least one entry), so a
    # restart over a long log applies in bounded batches instead of one huge one.
    max_committed_size_per_ready: int = 16 * 1024 * 1024


class RandomSource(Protocol):
    """The slice of ``random.Random`` the core uses; pass a seeded instance in.

    A protocol rather than ``random.Random`` itself so the pure core never imports
    the ``random`` module (DESIGN.md rule 1).
    """

    def randint(self, a: int, b: int) -> int: ...

    def random(self) -> float: ...
