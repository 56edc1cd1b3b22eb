"""The RaftStorage contract, run against MemoryStorage and DiskStorage alike.

The same random sequence of save / sync / crash (and, for the disk, reopen) must give
the same ``load()`` as a plain oracle of the contract, so the simulator's crash model
(MemoryStorage) and the real disk agree.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_fixtures import Oracle, entries, snapshot

from conclave.raft.types import ConfState, Entry, HardState
from conclave.storage.memory import MemoryStorage
from conclave.storage.wal import DiskStorage


class MemoryHarness:
    def __init__(self, _path: Path) -> None:
        self.storage = MemoryStorage()

    def crash(self) -> None:
        self.storage.crash()

    def close(self) -> None:
        self.storage.close()


class DiskHarness:
    """A crash is: drop the process's unsynced state, then a new process opens the dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.storage = self._open()

    def _open(self) -> DiskStorage:
        # Tiny segments and retention so cuts and releases happen inside short sequences.
        return DiskStorage(self.path, segment_bytes=1024, max_snapshots=2, max_wals=2)

    def crash(self) -> None:
        self.storage.crash()
        self.storage = self._open()

    def close(self) -> None:
        self.storage.close()


HARNESSES: dict[str, Callable[[Path], Any]] = {"memory": MemoryHarness, "disk": DiskHarness}


class Writer:
    """Produces the saves a Raft node could make: appends, overwrites, snapshots."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.term = 1
        self.last = 0
        self.commit = 0
        self.snap_index = 0

    def reset(self, loaded: Any) -> None:
        snap_index = 0 if loaded.snapshot is None else loaded.snapshot.meta.index
        self.snap_index = snap_index
        self.last = loaded.entries[-1].index if loaded.entries else snap_index
        self.term = max(self.term, loaded.hard_state.term, *(e.term for e in loaded.entries[-1:]))
        self.commit = min(max(loaded.hard_state.commit, snap_index), self.last)

    def step(self) -> tuple[HardState | None, list[Entry], Any]:
        rng = self.rng
        kind = rng.choice(["append", "append", "append", "overwrite", "hard_state", "compact", "install"])
        hs: HardState | None = None
        ents: list[Entry] = []
        snap = None
        if kind == "append":
            n = rng.randint(1, 6)
            ents = entries(self.last + 1, self.last + n, self.term, size=rng.randint(0, 40))
            self.last += n
            if rng.random() < 0.6:
                self.commit = rng.randint(self.commit, self.last)
                hs = HardState(self.term, 1, self.commit)
        elif kind == "overwrite" and self.last > max(self.commit, self.snap_index):
            self.term += 1
            first = rng.randint(max(self.commit, self.snap_index) + 1, self.last)
            n = rng.randint(1, 4)
            ents = entries(first, first + n - 1, self.term, size=rng.randint(0, 40))
            self.last = first + n - 1
            hs = HardState(self.term, 2, self.commit)
        elif kind == "hard_state":
            self.term += rng.randint(0, 1)
            hs = HardState(self.term, rng.randint(0, 3), self.commit)
        elif kind == "compact" and self.commit > self.snap_index:
            index = rng.randint(self.snap_index + 1, self.commit)
            snap = snapshot(index, self.term, rng.randbytes(rng.randint(0, 300)))
            self.snap_index = index
        elif kind == "install":
            # A follower far behind receives the leader's snapshot past its own log.
            index = self.last + rng.randint(1, 5)
            self.term += 1
            snap = snapshot(index, self.term, rng.randbytes(rng.randint(0, 300)), voters=(1, 2))
            self.snap_index = self.last = self.commit = index
            hs = HardState(self.term, 0, index)
        return hs, ents, snap


@pytest.mark.parametrize("kind", sorted(HARNESSES))
@pytest.mark.parametrize("seed", range(12))
def test_same_sequence_same_load(kind: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    harness = HARNESSES[kind](tmp_path / "data")
    oracle = Oracle()
    writer = Writer(rng)
    conf = ConfState(voters=frozenset({1, 2, 3}))
    harness.storage.save_bootstrap(conf)
    oracle.conf_state = conf
    checks = 0
    try:
        for _ in range(250):
            r = rng.random()
            if r < 0.65:
                hs, ents, snap = writer.step()
                harness.storage.save(hs, ents, snap)
                oracle.save(hs, ents, snap)
            elif r < 0.9:
                harness.storage.sync()
                oracle.sync()
                assert harness.storage.load() == oracle.load()
                checks += 1
            else:
                harness.crash()
                oracle.crash()
                loaded = harness.storage.load()
                assert loaded == oracle.load()
                writer.reset(loaded)
                checks += 1
        harness.storage.sync()
        oracle.sync()
        harness.crash()
        assert harness.storage.load() == oracle.load()
    finally:
        harness.close()
    assert checks > 20


def test_disk_and_memory_agree_side_by_side(tmp_path: Path) -> None:
    """Both implementations driven by one sequence, compared to each other directly."""
    rng = random.Random(99)
    mem = MemoryHarness(tmp_path)
    disk = DiskHarness(tmp_path / "data")
    writer = Writer(rng)
    try:
        for _ in range(400):
            r = rng.random()
            if r < 0.7:
                hs, ents, snap = writer.step()
                mem.storage.save(hs, ents, snap)
                disk.storage.save(hs, ents, snap)
            elif r < 0.93:
                mem.storage.sync()
                disk.storage.sync()
            else:
                mem.crash()
                disk.crash()
                writer.reset(mem.storage.load())
            assert disk.storage.load() == mem.storage.load()
    finally:
        disk.close()


def test_unsynced_saves_are_lost_and_synced_survive(tmp_path: Path) -> None:
    for harness in (MemoryHarness(tmp_path), DiskHarness(tmp_path / "d")):
        s = harness.storage
        s.save(HardState(1, 1, 2), entries(1, 3, 1))
        s.sync()
        s.save(HardState(1, 1, 3), entries(4, 5, 1))
        harness.crash()
        got = harness.storage.load()
        assert [e.index for e in got.entries] == [1, 2, 3]
        assert got.hard_state == HardState(1, 1, 2)
        harness.close()


def test_entries_covered_by_the_snapshot_are_dropped(tmp_path: Path) -> None:
    for harness in (MemoryHarness(tmp_path), DiskHarness(tmp_path / "d")):
        s = harness.storage
        s.save(None, entries(1, 3, 1), snapshot(5, 1))
        s.save(None, entries(4, 7, 1))
        s.sync()
        got = s.load()
        assert got.snapshot is not None and got.snapshot.meta.index == 5
        assert [e.index for e in got.entries] == [6, 7]
        harness.close()
