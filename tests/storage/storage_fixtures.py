"""Shared helpers for the storage tests: deterministic entries and an oracle of the contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conclave.raft.types import ConfState, Entry, HardState, PersistedState, Snapshot, SnapshotMeta


def payload(index: int, term: int, size: int = 16) -> bytes:
    """Entry data that says which index and term it was written for."""
    head = f"{index}:{term}:".encode()
    return (head * (size // len(head) + 1))[:size]


def entries(first: int, last: int, term: int, size: int = 16) -> list[Entry]:
    return [Entry(term, i, data=payload(i, term, size)) for i in range(first, last + 1)]


def snapshot(index: int, term: int, data: bytes = b"state", voters: Sequence[int] = (1, 2, 3)) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(voters=frozenset(voters))), data)


Op = tuple[HardState | None, tuple[Entry, ...], Snapshot | None]


@dataclass
class Oracle:
    """The contract written as plainly as possible: fold synced saves, lose the rest."""

    durable: list[Op] = field(default_factory=list)
    pending: list[Op] = field(default_factory=list)
    conf_state: ConfState = ConfState()

    def save(self, hs: HardState | None, ents: Sequence[Entry], snap: Snapshot | None = None) -> None:
        self.pending.append((hs, tuple(ents), snap))

    def sync(self) -> None:
        self.durable += self.pending
        self.pending = []

    def crash(self) -> None:
        self.pending = []

    def load(self) -> PersistedState:
        hs = HardState()
        snap: Snapshot | None = None
        log: dict[int, Entry] = {}
        for h, ents, s in self.durable:
            if s is not None and (snap is None or s.meta.index > snap.meta.index):
                snap = s
                log = {i: e for i, e in log.items() if i > s.meta.index}
                if log and min(log) != s.meta.index + 1:
                    log = {}
            floor = 0 if snap is None else snap.meta.index
            kept = [e for e in ents if e.index > floor]
            if kept:
                log = {i: e for i, e in log.items() if i < kept[0].index}
                log.update((e.index, e) for e in kept)
            if h is not None:
                hs = h
        return PersistedState(hs, snap, tuple(log[i] for i in sorted(log)), self.conf_state)
