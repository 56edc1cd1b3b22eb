"""Snapshots: durable files, round trips, release of covered segments, retention,
recovery from snapshot + remaining segments, and the crash windows around them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from storage_fixtures import entries, snapshot

from conclave.raft.types import HardState
from conclave.storage import snapshot as snapfile
from conclave.storage.base import CorruptionError
from conclave.storage.wal import DiskStorage


def fill(s: DiskStorage, first: int, last: int, term: int = 1, size: int = 60, step: int = 10) -> None:
    for i in range(first, last + 1, step):
        hi = min(i + step - 1, last)
        s.save(HardState(term, 1, hi), entries(i, hi, term, size=size))
        s.sync()


def test_round_trip_with_large_data(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    snap = snapshot(40, 2, data, voters=(1, 2, 5))
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 50, term=2)
        s.save(HardState(2, 1, 50), [], snap)
        s.sync()
        before = s.load()
    assert before.snapshot == snap
    assert [e.index for e in before.entries] == list(range(41, 51))
    with DiskStorage(tmp_path) as s:
        assert s.load() == before
    (f,) = snapfile.list_snapshots(tmp_path / "snap")
    assert f.path.name == "0000000000000002-0000000000000028.snap" and (f.index, f.term) == (40, 2)
    assert snapfile.read_snapshot(f.path) == snap


def test_installed_snapshot_past_the_log_drops_the_log(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 5)
        s.save(HardState(3, 0, 20), [], snapshot(20, 3))
        s.save(None, entries(21, 22, 3))
        s.sync()
    with DiskStorage(tmp_path) as s:
        got = s.load()
    assert got.snapshot is not None and got.snapshot.meta.index == 20
    assert [e.index for e in got.entries] == [21, 22]
    assert got.hard_state == HardState(3, 0, 20)


def test_recovery_from_snapshot_and_remaining_segments(tmp_path: Path) -> None:
    kw = {"segment_bytes": 2048, "max_wals": 2, "max_snapshots": 5}
    with DiskStorage(tmp_path, **kw) as s:
        fill(s, 1, 300)
        before_release = s.segments
        s.save(None, [], snapshot(250, 1, b"image@250"))
        s.sync()
        after = s.segments
        fill(s, 301, 340)
        want = s.load()
    assert len(before_release) > 10
    # Everything wholly before the segment holding index 251 went, down to max_wals.
    assert len(after) < len(before_release)
    assert after[0].first_index <= 251
    with DiskStorage(tmp_path, **kw) as s:
        got = s.load()
    assert got == want
    assert got.snapshot is not None and got.snapshot.data == b"image@250"
    assert [e.index for e in got.entries] == list(range(251, 341))


def test_release_never_deletes_segments_the_snapshot_needs(tmp_path: Path) -> None:
    kw = {"segment_bytes": 1024, "max_wals": 1}
    with DiskStorage(tmp_path, **kw) as s:
        fill(s, 1, 200)
        s.save(None, [], snapshot(100, 1))
        s.sync()
        segs = s.segments
        want = s.load()
    # More than max_wals remain: the ones holding 101.. must stay.
    assert len(segs) > 1
    assert segs[0].first_index <= 101 < segs[1].first_index
    with DiskStorage(tmp_path, **kw) as s:
        assert s.load() == want


def test_max_wals_zero_keeps_every_segment(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, segment_bytes=1024, max_wals=0) as s:
        fill(s, 1, 100)
        n = len(s.segments)
        s.save(None, [], snapshot(90, 1))
        s.sync()
        assert len(s.segments) == n
        assert s.segments[0].seq == 0


def test_snapshot_retention(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, max_snapshots=2, segment_bytes=4096) as s:
        fill(s, 1, 100)
        for i in (20, 40, 60, 80):
            s.save(None, [], snapshot(i, 1, f"at {i}".encode()))
            s.sync()
            assert len(snapfile.list_snapshots(tmp_path / "snap")) == min(2, i // 20)
        names = [f.index for f in snapfile.list_snapshots(tmp_path / "snap")]
    assert names == [60, 80]
    with DiskStorage(tmp_path, max_snapshots=2) as s:
        got = s.load()
    assert got.snapshot is not None and got.snapshot.data == b"at 80"


def test_older_or_equal_snapshot_is_ignored(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 30)
        s.save(None, [], snapshot(20, 1, b"new"))
        s.sync()
        s.save(None, [], snapshot(10, 1, b"old"))
        s.save(None, [], snapshot(20, 1, b"again"))
        s.sync()
        assert s.load().snapshot == snapshot(20, 1, b"new")
    assert [f.index for f in snapfile.list_snapshots(tmp_path / "snap")] == [20]


def test_snapshot_file_without_wal_marker_is_ignored(tmp_path: Path) -> None:
    """Crash after the snapshot file was renamed into place but before the WAL fsync."""
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 30)
        s.save(None, [], snapshot(10, 1, b"ten"))
        s.sync()
        want = s.load()
    orphan = snapfile.write_snapshot(tmp_path / "snap", snapshot(25, 1, b"never marked"))
    with DiskStorage(tmp_path) as s:
        assert s.load() == want
    assert not orphan.exists()


def test_unsynced_snapshot_is_lost_like_any_save(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 30)
        want = s.load()
        s.save(None, [], snapshot(25, 1))
    with DiskStorage(tmp_path) as s:
        assert s.load() == want
    assert snapfile.list_snapshots(tmp_path / "snap") == []


def test_corrupt_snapshot_file_refuses_to_start(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 30)
        s.save(None, [], snapshot(25, 1, b"x" * 1000))
        s.sync()
    (f,) = snapfile.list_snapshots(tmp_path / "snap")
    raw = bytearray(f.path.read_bytes())
    raw[-10] ^= 0x04
    f.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=rf"corrupt snapshot file {f.path}.*byte offset \d+.*data checksum"):
        DiskStorage(tmp_path)
    f.path.write_bytes(bytes(raw[:-10]))
    with pytest.raises(CorruptionError, match="data truncated"):
        DiskStorage(tmp_path)


def test_marker_whose_file_is_missing_refuses_to_start(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 30)
        s.save(None, [], snapshot(25, 1))
        s.sync()
    (f,) = snapfile.list_snapshots(tmp_path / "snap")
    f.path.unlink()
    with pytest.raises(CorruptionError, match="marks a snapshot at index 25 term 1 whose file is missing"):
        DiskStorage(tmp_path)


def test_wal_missing_but_snapshots_present_is_corruption(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        fill(s, 1, 30)
        s.save(None, [], snapshot(25, 1))
        s.sync()
        segs = s.segments
    for g in segs:
        g.path.unlink()
    with pytest.raises(CorruptionError, match=r"WAL .* is missing"):
        DiskStorage(tmp_path)


def test_overwrite_below_the_snapshot_index_still_drops_the_stale_suffix(tmp_path: Path) -> None:
    """Recovery replays from the snapshot on: an overwrite at an index the snapshot covers
    is skipped as an entry, but the suffix it truncated must stay truncated."""
    with DiskStorage(tmp_path) as s:
        s.save(HardState(1, 1, 4), entries(1, 10, 1))
        s.sync()
        s.save(HardState(2, 2, 6), entries(5, 6, 2))  # drops 7..10 of term 1
        s.sync()
        s.save(None, [], snapshot(6, 2))
        s.sync()
    with DiskStorage(tmp_path) as s:
        got = s.load()
    assert got.snapshot is not None and got.snapshot.meta.index == 6
    assert got.entries == ()


def test_every_flip_or_truncation_of_a_snapshot_file_is_caught(tmp_path: Path) -> None:
    path = snapfile.write_snapshot(tmp_path, snapshot(7, 3, b"a small state-machine image", voters=(1, 2)))
    raw = path.read_bytes()
    assert snapfile.read_snapshot(path) == snapshot(7, 3, b"a small state-machine image", voters=(1, 2))
    for pos in range(len(raw)):
        damaged = bytearray(raw)
        damaged[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptionError, match=rf"corrupt snapshot file {path} at byte offset \d+"):
            snapfile.read_snapshot(path)
        path.write_bytes(raw[:pos])
        with pytest.raises(CorruptionError, match="corrupt snapshot file"):
            snapfile.read_snapshot(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(CorruptionError, match="trailing bytes"):
        snapfile.read_snapshot(path)
