"""The storage contract between a Raft driver and its disk.

Theory of operation
-------------------
A driver hands each ``Ready`` to ``save`` (buffered, cheap) and then calls ``sync``
once for the whole batch (group commit): only after ``sync`` returns may it send
``Ready.persisted_messages`` or acknowledge the entries. ``load`` returns what a
restarted node has: the newest snapshot, the hard state and the entries after the
snapshot. What was saved but never synced may or may not survive a crash; what was
synced always survives.

Two implementations keep the same promise: ``storage.wal.DiskStorage`` (segments,
checksums, fsync) and ``storage.memory.MemoryStorage``, which models fsync exactly so
the simulator's crash model and the real disk agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from conclave.raft.types import ConfState, Entry, HardState, PersistedState, Snapshot


class StorageError(Exception):
    """Base of every storage failure."""


class CorruptionError(StorageError):
    """Damage before the tail of the log: the node must refuse to start."""


class RaftStorage(Protocol):
    def load(self) -> PersistedState:
        """What survived: snapshot, hard state, entries after the snapshot."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Buffer a Ready's durable part. Entries replace any stored suffix that starts
        at ``entries[0].index``; a snapshot drops every entry it covers."""
        ...

    def sync(self) -> None:
        """Make everything saved so far durable (one fsync for the batch)."""
        ...

    def save_bootstrap(self, conf_state: ConfState) -> None:
        """Record the initial configuration of a brand-new cluster, durably."""
        ...

    def close(self) -> None: ...
