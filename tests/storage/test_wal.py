"""DiskStorage: records, segments, recovery, conflicting suffixes, misuse."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from storage_fixtures import entries

from conclave.raft.types import ConfState, EntryType, HardState
from conclave.storage import wal
from conclave.storage.base import CorruptionError, StorageError
from conclave.storage.wal import DiskStorage, Segment, SegmentScan, list_segments


def reopen(path: Path, **kw: int) -> DiskStorage:
    return DiskStorage(path, **kw)


def test_fresh_directory_is_empty_and_laid_out(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    with DiskStorage(d) as s:
        got = s.load()
    assert got.hard_state == HardState() and got.entries == () and got.snapshot is None
    assert (d / "wal").is_dir() and (d / "snap").is_dir()
    assert [p.name for p in (d / "wal").iterdir()] == ["0000000000000000-0000000000000001.wal"]


def test_round_trip_across_reopen(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        s.save(HardState(3, 2, 4), [*entries(1, 4, 3), wal.Entry(3, 5, EntryType.CONF_CHANGE, b"cc")])
        s.sync()
        s.save(HardState(3, 2, 5), [])
        s.sync()
    with reopen(tmp_path) as s:
        got = s.load()
    assert got.hard_state == HardState(3, 2, 5)
    assert got.entries == (*entries(1, 4, 3), wal.Entry(3, 5, EntryType.CONF_CHANGE, b"cc"))


def test_conflicting_suffix_is_replaced_never_resurrected(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        s.save(HardState(1, 1, 3), entries(1, 10, 1))
        s.sync()
        s.save(HardState(2, 2, 3), entries(6, 8, 2))  # a new leader overwrote 6..10
        s.sync()
        assert [(e.index, e.term) for e in s.load().entries][-4:] == [(5, 1), (6, 2), (7, 2), (8, 2)]
    with reopen(tmp_path) as s:
        got = s.load()
    assert got.entries == (*entries(1, 5, 1), *entries(6, 8, 2))


def test_conflicting_suffix_across_segments(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, segment_bytes=1024) as s:
        for i in range(1, 61, 5):
            s.save(HardState(1, 1, 2), entries(i, i + 4, 1, size=60))
            s.sync()
        assert len(s.segments) > 3
        s.save(HardState(2, 1, 2), entries(3, 4, 2))  # reaches back into the first segment
        s.sync()
        s.save(None, entries(5, 7, 2))
        s.sync()
    with reopen(tmp_path, segment_bytes=1024) as s:
        got = s.load()
    assert got.entries == (*entries(1, 2, 1, size=60), *entries(3, 4, 2), *entries(5, 7, 2))


def test_segment_names_show_order_and_first_index(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, segment_bytes=2048) as s:
        for i in range(1, 200, 10):
            s.save(HardState(1, 1, i), entries(i, i + 9, 1, size=50))
            s.sync()
        segs = s.segments
    assert len(segs) >= 5
    assert [g.seq for g in segs] == list(range(len(segs)))
    for g in segs:
        assert g.path.name == Segment.name(g.seq, g.first_index)
    # Each later segment begins where the log ended when it was cut.
    for g in segs[1:]:
        first_entry = next(
            wal._ENTRY_HEAD.unpack_from(buf, a)[1]
            for _, t, buf, a, _b in SegmentScan(g.path).records()
            if t == wal.RecordType.ENTRY
        )
        assert first_entry == g.first_index
    assert list_segments(tmp_path / "wal") == segs


def test_unsynced_saves_are_dropped_by_close(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        s.save(HardState(1, 1, 1), entries(1, 2, 1))
        s.sync()
        s.save(HardState(1, 1, 2), entries(3, 3, 1))
    with reopen(tmp_path) as s:
        assert [e.index for e in s.load().entries] == [1, 2]
        assert s.load().hard_state.commit == 1


def test_sync_without_saves_writes_nothing(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        seg = s.segments[-1].path
        size = seg.stat().st_size
        s.sync()
        assert seg.stat().st_size == size


def test_bootstrap_configuration_is_durable(tmp_path: Path) -> None:
    conf = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    with DiskStorage(tmp_path) as s:
        s.save_bootstrap(conf)
        assert s.load().conf_state == conf
    with reopen(tmp_path) as s:
        assert s.load().conf_state == conf
    raw = bytearray((tmp_path / "bootstrap.conf").read_bytes())
    raw[-1] ^= 0x01
    (tmp_path / "bootstrap.conf").write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=r"corrupt bootstrap file .*bootstrap\.conf at byte offset 12"):
        reopen(tmp_path)


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        (entries(5, 6, 1), "entries start at index 5 but the log ends at 2"),
        ([*entries(3, 3, 1), *entries(5, 5, 1)], "not contiguous"),
    ],
)
def test_bad_saves_are_refused_clearly(tmp_path: Path, batch: list[wal.Entry], why: str) -> None:
    with DiskStorage(tmp_path) as s:
        s.save(None, entries(1, 2, 1))
        with pytest.raises(ValueError, match=why):
            s.save(None, batch)
        s.sync()
        assert [e.index for e in s.load().entries] == [1, 2]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        DiskStorage(tmp_path, segment_bytes=10)
    with pytest.raises(ValueError, match="max_snapshots"):
        DiskStorage(tmp_path, max_snapshots=-1)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        DiskStorage(f)


def test_one_process_per_data_dir(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        DiskStorage(tmp_path)
    s.close()
    DiskStorage(tmp_path).close()


def test_closed_storage_refuses_use(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.save(None, entries(1, 1, 1))
    with pytest.raises(StorageError, match="closed"):
        s.sync()


def test_save_concurrent_with_sync_is_refused(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as s:
        s._guard.acquire()  # what a sync in progress on the worker thread holds
        try:
            with pytest.raises(StorageError, match="concurrently"):
                s.save(None, entries(1, 1, 1))
            with pytest.raises(StorageError, match="concurrently"):
                s.sync()
        finally:
            s._guard.release()


def test_save_on_loop_sync_on_worker_thread(tmp_path: Path) -> None:
    async def drive(s: DiskStorage) -> None:
        for i in range(1, 51):
            s.save(HardState(1, 1, i), entries(i, i, 1))
            await asyncio.to_thread(s.sync)

    with DiskStorage(tmp_path) as s:
        asyncio.run(drive(s))
        assert threading.active_count() >= 1
    with reopen(tmp_path) as s:
        got = s.load()
    assert [e.index for e in got.entries] == list(range(1, 51))
    assert got.hard_state.commit == 50


def test_failed_fsync_makes_storage_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with DiskStorage(tmp_path) as s:
        s.save(None, entries(1, 1, 1))
        monkeypatch.setattr(wal, "sync_data", broken)
        with pytest.raises(StorageError, match="fsync failed"):
            s.sync()
        monkeypatch.undo()
        with pytest.raises(StorageError, match="unusable"):
            s.save(None, entries(2, 2, 1))


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    DiskStorage(tmp_path).close()
    junk = tmp_path / "wal" / "0000000000000001-0000000000000001.wal.tmp"
    junk.write_bytes(b"half a segment")
    with reopen(tmp_path) as s:
        assert not junk.exists()
        assert len(s.segments) == 1


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, segment_bytes=1024) as s:
        for i in range(1, 100, 10):
            s.save(HardState(1, 1, i), entries(i, i + 9, 1, size=40))
            s.sync()
        segs = s.segments
    assert len(segs) >= 3
    os.unlink(segs[1].path)
    with pytest.raises(CorruptionError, match=r"corrupt WAL.*segments missing"):
        reopen(tmp_path, segment_bytes=1024)


def test_missing_first_segment_without_snapshot_is_corruption(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, segment_bytes=1024) as s:
        for i in range(1, 100, 10):
            s.save(HardState(1, 1, i), entries(i, i + 9, 1, size=40))
            s.sync()
        segs = s.segments
    os.unlink(segs[0].path)
    with pytest.raises(CorruptionError, match="no snapshot covers the entries before it"):
        reopen(tmp_path, segment_bytes=1024)


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "wal").write_text("not a directory")
    with pytest.raises(StorageError, match="cannot use data dir"):
        DiskStorage(ro)


def test_entries_larger_than_the_read_chunk(tmp_path: Path) -> None:
    big = os.urandom(3 * wal.READ_CHUNK_BYTES + 17)
    with DiskStorage(tmp_path, segment_bytes=wal.SEGMENT_BYTES_MIN) as s:
        s.save(HardState(1, 1, 3), [wal.Entry(1, 1, data=b"a"), wal.Entry(1, 2, data=big), wal.Entry(1, 3, data=b"")])
        s.sync()
        s.save(None, entries(4, 5, 1))
        s.sync()
    with reopen(tmp_path) as s:
        got = s.load()
    assert [e.data for e in got.entries[:3]] == [b"a", big, b""]
    assert [e.index for e in got.entries] == [1, 2, 3, 4, 5]


def test_close_waits_for_a_sync_in_flight(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.save(None, entries(1, 1, 1))
    s._guard.acquire()  # a sync running on the worker thread
    closer = threading.Thread(target=s.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close is waiting, not tearing the file out from under sync
    s._guard.release()
    closer.join(10)
    assert not closer.is_alive()
    with pytest.raises(StorageError, match="closed"):
        s.sync()


@pytest.mark.parametrize(
    "hard_state, ents",
    [
        (HardState(2**64 - 1, 1, 0), []),  # the forged term of issue 10: refused, never persisted
        (HardState(2**63, 1, 0), []),
        (HardState(1, 2**64, 0), []),
        (HardState(-1, 1, 0), []),
        (None, [wal.Entry(2**64, 1)]),
        (None, [wal.Entry(2**63, 1)]),
    ],
)
def test_values_beyond_the_shared_width_are_refused_and_leave_no_trace(
    tmp_path: Path, hard_state: HardState | None, ents: list[wal.Entry]
) -> None:
    with DiskStorage(tmp_path) as s:
        s.save(HardState(3, 2, 0), [])
        s.sync()
        with pytest.raises(StorageError, match="refusing to write"):
            s.save(hard_state, ents)
        s.save(HardState(4, 2**64 - 1, 0), entries(1, 1, 4))  # a u64 vote (member id) is fine
        s.sync()
    with reopen(tmp_path) as s:
        got = s.load()
    assert got.hard_state == HardState(4, 2**64 - 1, 0) and got.entries == tuple(entries(1, 1, 4))


def test_a_wal_holding_a_term_beyond_the_limit_is_refused_at_recovery(tmp_path: Path) -> None:
    # A data dir written before terms were range-checked: a clear refusal, not a stuck member.
    with DiskStorage(tmp_path) as s:
        s.save(HardState(3, 2, 0), [])
        s.sync()
    seg = sorted((tmp_path / "wal").iterdir())[-1]
    buf = bytearray()
    wal.encode_record(buf, wal._HARD, wal._HARD_STATE.pack(2**64 - 1, 2, 0))
    with seg.open("ab") as f:
        f.write(bytes(buf))
    with pytest.raises(CorruptionError, match="beyond"):
        DiskStorage(tmp_path).load()
