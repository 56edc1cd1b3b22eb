"""One simulated server: a real ``RaftNode`` with its disk, state machine and clients' waiters.

Theory of operation: a ``Replica`` outlives the ``RaftNode`` inside it. A crash drops
the node object and everything volatile (unsynced writes, the pending fsync, the
state machine, waiting client operations); a restart builds a fresh ``RaftNode`` from
what ``MemoryStorage.load`` still holds, exactly as a real process would from its
WAL. The replica does no scheduling and no checking; the simulation drives it.
"""

from __future__ import annotations

import random

from conclave.raft.node import RaftNode
from conclave.raft.types import Config, ConfState, Ready, Role
from conclave.sim.history import Operation
from conclave.sim.machine import AppendOnlyList
from conclave.sim.mirror import LogMirror
from conclave.storage.memory import MemoryStorage


class Replica:
    def __init__(self, config: Config, bootstrap: ConfState | None) -> None:
        self.id = config.id
        self.config = config
        self.disk = MemoryStorage()
        if bootstrap is not None:
            self.disk.save_bootstrap(bootstrap)
        self.raft: RaftNode | None = None
        self.incarnation = 0
        self.removed = False
        self.log = LogMirror()
        self.machine = AppendOnlyList()
        self.syncing: Ready | None = None
        self.role = Role.FOLLOWER
        self.conf = ConfState()
        self.pending_writes: dict[bytes, Operation] = {}
        self.pending_reads: dict[bytes, Operation] = {}
        self.waiting_reads: list[tuple[int, Operation]] = []
        self.paused_until_ms = 0  # a paused process handles nothing before this time
        self.moments: dict[str, int] = {}  # nemesis bookkeeping: last term a leader moment was seen

    @property
    def up(self) -> bool:
        return self.raft is not None

    def start(self, rng: random.Random) -> int:
        """Boot from the disk; return the commit index the disk held."""
        persisted = self.disk.load()
        self.raft = RaftNode(self.config, persisted, rng)
        self.incarnation += 1
        self.log = LogMirror.from_persisted(persisted)
        self.machine = AppendOnlyList()
        if persisted.snapshot is not None:
            self.machine.restore(persisted.snapshot.meta.index, persisted.snapshot.data)
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
        waiting = [*self.pending_writes.values(), *self.pending_reads.values(), *(op for _, op in self.waiting_reads)]
        self.pending_writes.clear()
        self.pending_reads.clear()
        self.waiting_reads.clear()
        return waiting
