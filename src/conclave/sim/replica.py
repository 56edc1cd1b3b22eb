"""One simulated server: a real ``RaftNode`` with its disk, the real state machine, its
lease deadlines, its watchers and the driver's waiting requests.

Theory of operation: a ``Replica`` outlives the ``RaftNode`` inside it. A crash drops
the node object and everything volatile (unsynced writes, the pending fsync, the
state machine, the lessor's deadlines, open watches, queued and waiting client
requests); a restart builds a fresh ``RaftNode`` from what ``MemoryStorage.load`` still
holds and restores the state machine from the snapshot on disk, exactly as a real
process would from its WAL. The replica does no scheduling and no checking; the
simulation drives it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from conclave.kv.command import Command
from conclave.kv.lease import Lessor
from conclave.kv.watch import Watcher, WatchHub
from conclave.machine import StateMachine
from conclave.raft.node import RaftNode
from conclave.raft.types import Config, ConfState, Ready, Role
from conclave.sim.history import Operation
from conclave.sim.mirror import LogMirror
from conclave.storage.memory import MemoryStorage


@dataclass(slots=True)
class Watch:
    """A client's watch stream open on one member: every event from ``start_rev`` on, fed by
    that member's ``WatchHub`` (the server's own) and drained by the client."""

    client: int
    start_rev: int
    events: int = 0
    watcher: Watcher | None = None  # the member's WatchHub watcher behind the stream


@dataclass(slots=True)
class Proposal:
    """One entry the driver proposed and may propose again (same ids) after a leader change."""

    data: bytes
    seqs: list[int] = field(default_factory=list)


class Replica:
    def __init__(self, config: Config, bootstrap: ConfState | None, dedupe: bool = True,
                 watch_buffer: int = 8) -> None:
        self.id = config.id
        self.config = config
        self.disk = MemoryStorage()
        if bootstrap is not None:
            self.disk.save_bootstrap(bootstrap)
        self.raft: RaftNode | None = None
        self.incarnation = 0
        self.removed = False
        self.log = LogMirror()
        self.dedupe = dedupe
        self.machine = StateMachine(once_only=dedupe)
        self.watch_buffer = watch_buffer  # small, so slow streams go through the hub's catch-up path
        self.hub = WatchHub(self.machine.store, buffer_events=watch_buffer)
        self.watches: list[Watch] = []
        self.queue: list[tuple[int, Command]] = []  # commands waiting for the fsync in progress to end
        self.pending: dict[int, Operation] = {}  # seq -> the request waiting for its apply
        self.proposals: list[Proposal] = []
        self.leader_seen = 0
        self.syncing: Ready | None = None
        self.role = Role.FOLLOWER
        self.conf = ConfState()
        self.pending_reads: dict[bytes, Operation] = {}
        self.waiting_reads: list[tuple[int, Operation]] = []
        self.paused_until_ms = 0  # a paused process handles nothing before this time
        self.moments: dict[str, int] = {}  # nemesis bookkeeping: last term a leader moment was seen

    @property
    def lessor(self) -> Lessor:
        """The state machine's lease deadlines (member-local, on the simulated clock)."""
        return self.machine.leases

    def restore(self, index: int, image: bytes) -> None:
        """Install a snapshot; open watchers catch up from the new store (as the server's hub)."""
        self.machine = StateMachine.restore(image, index=index, once_only=self.dedupe)
        self.hub.replace_store(self.machine.store)

    @property
    def up(self) -> bool:
        return self.raft is not None

    def start(self, rng: random.Random) -> int:
        """Boot from the disk; return the commit index the disk held."""
        persisted = self.disk.load()
        self.raft = RaftNode(self.config, persisted, rng)
        self.incarnation += 1
        self.log = LogMirror.from_persisted(persisted)
        self.machine = StateMachine(once_only=self.dedupe)
        self.hub = WatchHub(self.machine.store, buffer_events=self.watch_buffer)
        if persisted.snapshot is not None:
            self.restore(persisted.snapshot.meta.index, persisted.snapshot.data)
        self.leader_seen = 0
        self.syncing = None
        self.role = self.raft.role
        self.conf = self.raft.conf_state
        return persisted.hard_state.commit

    def crash(self) -> list[Operation]:
        """Power off: unsynced writes are lost; return the client operations left waiting."""
        self.disk.crash()
        self.raft = None
        self.syncing = None
        self.incarnation += 1
        self.role = Role.FOLLOWER
        self.paused_until_ms = 0
        waiting = [*self.pending.values(), *self.pending_reads.values(), *(op for _, op in self.waiting_reads)]
        self.pending.clear()
        self.queue.clear()
        self.proposals.clear()
        self.watches.clear()
        self.pending_reads.clear()
        self.waiting_reads.clear()
        return waiting
