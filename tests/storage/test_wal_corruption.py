"""Corruption fuzzing: every truncation and bit flip either recovers a synced prefix
(damage at the tail) or refuses to start with a clear corruption error (damage before
the tail), never a different log."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from storage_fixtures import entries

from conclave.raft.types import HardState, PersistedState
from conclave.storage.base import CorruptionError
from conclave.storage.wal import DiskStorage, recover


@dataclass
class Built:
    """A WAL where every sync wrote exactly one record, so sync boundaries are record
    boundaries: ``ends[k]`` is the segment size after record k and ``states[k]`` what
    must be recovered from the first k+1 records."""

    segment: Path
    original: bytes
    ends: list[int]
    states: list[PersistedState]


def build_small(path: Path, n: int = 8) -> Built:
    with DiskStorage(path) as s:
        seg = s.segments[-1].path
        ends = [seg.stat().st_size]  # the segment header record (hard state)
        states = [s.load()]
        for i in range(1, n + 1):
            s.save(None, entries(i, i, 1 + i // 3, size=i * 3))
            s.sync()
            ends.append(seg.stat().st_size)
            states.append(s.load())
            s.save(HardState(1 + i // 3, 1, i), [])
            s.sync()
            ends.append(seg.stat().st_size)
            states.append(s.load())
    return Built(seg, seg.read_bytes(), ends, states)


def restore(b: Built, data: bytes) -> None:
    with open(b.segment, "wb") as f:
        f.write(data)


def record_of(b: Built, offset: int) -> int:
    """Index of the record holding byte ``offset``."""
    return next(k for k, end in enumerate(b.ends) if offset < end)


def open_and_load(path: Path) -> PersistedState:
    with DiskStorage(path) as s:
        return s.load()


def test_every_truncation_recovers_the_prefix(tmp_path: Path) -> None:
    b = build_small(tmp_path)
    assert b.ends[-1] == len(b.original)
    for cut in range(len(b.original)):
        restore(b, b.original[:cut])
        k = record_of(b, cut) - 1  # records wholly before the cut
        want = b.states[max(k, 0)]
        assert open_and_load(tmp_path) == want, f"truncated at {cut}"
        # The torn tail was cut off at the record boundary, and a reopen agrees.
        assert b.segment.stat().st_size == (b.ends[k] if k >= 0 else 0)
        assert open_and_load(tmp_path) == want


def test_every_bit_flip_is_tail_loss_or_named_corruption(tmp_path: Path) -> None:
    b = build_small(tmp_path)
    last = len(b.ends) - 1
    outcomes = {"tail": 0, "corrupt": 0}
    for pos in range(len(b.original)):
        damaged = bytearray(b.original)
        damaged[pos] ^= 1 << (pos % 8)
        restore(b, bytes(damaged))
        r = record_of(b, pos)
        start = b.ends[r - 1] if r else 0
        try:
            got = open_and_load(tmp_path)
        except CorruptionError as exc:
            msg = str(exc)
            assert "corrupt" in msg and str(b.segment) in msg and f"byte offset {start}" in msg, msg
            outcomes["corrupt"] += 1
            continue
        # Only the very last record may be taken for a torn write, and then exactly it is lost.
        assert r == last, f"flip at {pos} (record {r}) was not detected"
        assert got == b.states[r - 1]
        outcomes["tail"] += 1
    assert outcomes["corrupt"] > 0 and outcomes["tail"] > 0


def test_sampled_damage_in_a_large_multi_segment_wal(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, segment_bytes=16 * 1024) as s:
        for i in range(1, 3001, 25):
            s.save(HardState(1, 1, i + 24), entries(i, i + 24, 1, size=40))
            s.sync()
        segs = s.segments
        full = s.load()
    assert len(segs) >= 5
    originals = {g.path: g.path.read_bytes() for g in segs}
    last_seg = segs[-1].path
    rng = random.Random(7)
    for _ in range(400):
        seg = rng.choice(segs).path
        raw = originals[seg]
        pos = rng.randrange(len(raw))
        damaged = bytearray(raw)
        damaged[pos] ^= 1 << rng.randrange(8)
        seg.write_bytes(bytes(damaged))
        try:
            got = recover(tmp_path).image.persisted()
        except CorruptionError as exc:
            assert "corrupt" in str(exc) and str(seg) in str(exc)
        else:
            # Accepted only as a torn last record of the last segment: a prefix of the log.
            assert seg == last_seg
            assert got.entries == full.entries[: len(got.entries)]
            assert len(got.entries) >= len(full.entries) - 25
        seg.write_bytes(raw)
    # Truncations of the last segment lose at most the tail; of any other, refuse.
    for _ in range(150):
        g = rng.choice(segs)
        raw = originals[g.path]
        cut = rng.randrange(len(raw))
        g.path.write_bytes(raw[:cut])
        try:
            got = recover(tmp_path).image.persisted()
        except CorruptionError as exc:
            assert g.path != last_seg, str(exc)
            assert str(g.path) in str(exc)
        else:
            if g.path == last_seg:
                assert got.entries == full.entries[: len(got.entries)]
            else:  # only a cut that loses nothing the next segment does not repeat
                assert got == full, f"truncating {g.path.name} at {cut} went unnoticed"

        g.path.write_bytes(raw)
    assert recover(tmp_path).image.persisted() == full


def test_zero_filled_tail_is_torn_not_corrupt(tmp_path: Path) -> None:
    """A power cut can extend a file with zeros past the last write."""
    b = build_small(tmp_path)
    restore(b, b.original + bytes(5000))
    assert open_and_load(tmp_path) == b.states[-1]
    assert b.segment.stat().st_size == len(b.original)


def test_inspect_command_names_the_corruption_and_exits_nonzero(tmp_path: Path) -> None:
    b = build_small(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "conclave.storage.inspect", str(tmp_path)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "entries:    8 (index 1..8" in ok.stdout and "commit 8" in ok.stdout
    damaged = bytearray(b.original)
    at = b.ends[2] + 20  # inside the third record after the header
    damaged[at] ^= 0x10
    restore(b, bytes(damaged))
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1
    assert "corrupt" in bad.stderr and str(b.segment) in bad.stderr and f"byte offset {b.ends[2]}" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = subprocess.run([*cmd[:-1], str(tmp_path / "nope")], capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 2 and "no wal/" in missing.stderr


def test_server_style_start_refuses_corrupt_dir(tmp_path: Path) -> None:
    """A process that opens DiskStorage on a corrupt dir fails non-zero with the message."""
    b = build_small(tmp_path)
    damaged = bytearray(b.original)
    damaged[b.ends[0] + 3] ^= 0x01
    restore(b, bytes(damaged))
    code = (
        "import sys\n"
        "from conclave.storage.wal import DiskStorage\n"
        "from conclave.storage.base import CorruptionError\n"
        "try:\n"
        "    DiskStorage(sys.argv[1])\n"
        "except CorruptionError as exc:\n"
        "    print(exc, file=sys.stderr); sys.exit(1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "corrupt" in r.stderr and f"byte offset {b.ends[0]}" in r.stderr
    # Refusing to start changed nothing: the damaged bytes are still there to examine.
    assert b.segment.read_bytes() == bytes(damaged)


@pytest.mark.parametrize("where", ["header", "payload"])
def test_damage_in_a_middle_record_is_never_truncated(tmp_path: Path, where: str) -> None:
    b = build_small(tmp_path)
    damaged = bytearray(b.original)
    start = b.ends[4]
    damaged[start + (2 if where == "header" else 15)] ^= 0x80
    restore(b, bytes(damaged))
    with pytest.raises(CorruptionError, match=f"byte offset {start}"):
        DiskStorage(tmp_path)
    assert b.segment.read_bytes() == bytes(damaged)


def test_inspect_reports_a_torn_tail_without_cutting_it(tmp_path: Path) -> None:
    b = build_small(tmp_path)
    torn = b.original[: b.ends[-2] + 5]
    restore(b, torn)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "conclave.storage.inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert f"torn tail:  {b.segment.name} at byte offset {b.ends[-2]}" in r.stdout
    assert "commit 7" in r.stdout and "index 1..8" in r.stdout
    assert b.segment.read_bytes() == torn  # read-only
