"""In-memory ``RaftStorage`` that models fsync exactly, for the simulator and tests.

Theory of operation: two copies of the state are kept, ``durable`` (what a disk would
hold after the last fsync) and ``pending`` (what ``save`` has buffered since). ``sync``
folds pending into durable. ``crash`` throws pending away, which is what a power cut
does to unsynced writes. ``load`` reads only the durable copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conclave.raft.types import ConfState, Entry, HardState, PersistedState, Snapshot


@dataclass(slots=True)
class _Image:
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    conf_state: ConfState = ConfState()

    def copy(self) -> _Image:
        return _Image(self.hard_state, self.snapshot, list(self.entries), self.conf_state)

    def apply(self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None) -> None:
        if snapshot is not None and (self.snapshot is None or snapshot.meta.index > self.snapshot.meta.index):
            self.snapshot = snapshot
            self.entries = [e for e in self.entries if e.index > snapshot.meta.index]
            if self.entries and self.entries[0].index != snapshot.meta.index + 1:
                self.entries = []
        if entries and self.snapshot is not None and entries[0].index <= self.snapshot.meta.index:
            # A snapshot covers these: keeping them would return entries below the snapshot.
            entries = [e for e in entries if e.index > self.snapshot.meta.index]
        if entries:
            first = entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state


class MemoryStorage:
    def __init__(self) -> None:
        self.durable = _Image()
        self._pending: list[tuple[HardState | None, tuple[Entry, ...], Snapshot | None]] = []
        self.syncs = 0

    def load(self) -> PersistedState:
        d = self.durable
        return PersistedState(d.hard_state, d.snapshot, tuple(d.entries), d.conf_state)

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None = None
    ) -> None:
        self._pending.append((hard_state, tuple(entries), snapshot))

    def sync(self) -> None:
        for hs, ents, snap in self._pending:
            self.durable.apply(hs, ents, snap)
        self._pending.clear()
        self.syncs += 1

    def save_bootstrap(self, conf_state: ConfState) -> None:
        self.durable.conf_state = conf_state

    def crash(self) -> None:
        """Lose everything saved but not synced."""
        self._pending.clear()

    def close(self) -> None:
        self._pending.clear()
