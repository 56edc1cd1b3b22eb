"""Write-ahead log benchmark: group-commit append rate against this disk's raw limit,
and recovery time of a large WAL.

    .venv/bin/python bench/wal_bench.py [--dir DIR] [--seconds S] [--recovery-entries N]

Append: 256-byte entries, one ``save`` (entries + hard state) and one ``sync`` per
batch, at batch sizes 1, 16 and 256. The raw limit is measured in the same run on the
same filesystem: a plain loop of ``write`` + the same fdatasync of exactly the bytes
the WAL writes for one batch. Raw and WAL alternate in short slices so that load from
other processes hits both alike; each rate is total entries over total time.

Recovery: a WAL of N (default 1,000,000) 256-byte entries, then the time to open a
``DiskStorage`` on it and ``load()`` everything, with the segment files first evicted
from the page cache (cold, as after a reboot) and again with them cached (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from conclave.raft.types import Entry, HardState
from conclave.storage.disk import sync_data, write_all
from conclave.storage.wal import DiskStorage, encode_entry, encode_hard_state

ENTRY_BYTES = 256
BATCH_SIZES = (1, 16, 256)
TARGET_RATIO_BATCH_1 = 0.9
TARGET_ENTRIES_PER_S_BATCH_256 = 50_000
TARGET_RECOVERY_S = 5.0


def batch_bytes(batch: int) -> bytes:
    buf = bytearray()
    for i in range(batch):
        encode_entry(buf, Entry(1, i + 1, data=b"x" * ENTRY_BYTES))
    encode_hard_state(buf, HardState(1, 1, batch))
    return bytes(buf)


class RawWriter:
    """write + fdatasync of one batch's bytes, appending to one file: the disk's limit."""

    def __init__(self, work: Path, batch: int) -> None:
        self.batch = batch
        self.data = batch_bytes(batch)
        self.path = work / f"raw-{batch}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

    def run(self, seconds: float) -> tuple[int, float]:
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            write_all(self.fd, self.data)
            sync_data(self.fd)
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                return n * self.batch, now - start

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink()


class WalWriter:
    """DiskStorage.save (entries + hard state) + sync, one batch per sync."""

    def __init__(self, work: Path, batch: int) -> None:
        self.batch = batch
        self.dir = work / f"wal-{batch}"
        self.storage = DiskStorage(self.dir)
        self.payload = b"x" * ENTRY_BYTES
        self.last = 0

    def run(self, seconds: float) -> tuple[int, float]:
        s, batch, payload = self.storage, self.batch, self.payload
        first = self.last
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            last = self.last
            ents = [Entry(1, i, data=payload) for i in range(last + 1, last + batch + 1)]
            self.last = last + batch
            s.save(HardState(1, 1, self.last), ents)
            s.sync()
            now = time.perf_counter()
            if now >= deadline:
                return self.last - first, now - start

    def close(self) -> None:
        self.storage.close()
        shutil.rmtree(self.dir)


def measure(work: Path, batch: int, seconds: float, slices: int) -> tuple[float, float]:
    """Entries/s of the raw loop and of the WAL, in alternating short slices so that
    whatever else the machine is doing hits both alike."""
    raw, walw = RawWriter(work, batch), WalWriter(work, batch)
    totals = {"raw": [0, 0.0], "wal": [0, 0.0]}
    try:
        for _ in range(slices):
            for name, w in (("raw", raw), ("wal", walw)):
                n, dt = w.run(seconds / slices)
                totals[name][0] += n
                totals[name][1] += dt
    finally:
        raw.close()
        walw.close()
    return totals["raw"][0] / totals["raw"][1], totals["wal"][0] / totals["wal"][1]


def evict(paths: Sequence[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def recovery(work: Path, n_entries: int) -> dict[str, float]:
    d = work / "recovery"
    payload = b"r" * ENTRY_BYTES
    t0 = time.perf_counter()
    with DiskStorage(d) as s:
        for first in range(1, n_entries + 1, 1000):
            hi = min(first + 999, n_entries)
            s.save(HardState(1, 1, hi), [Entry(1, i, data=payload) for i in range(first, hi + 1)])
            s.sync()
        segments = [g.path for g in s.segments]
    build_s = time.perf_counter() - t0
    wal_bytes = sum(p.stat().st_size for p in segments)
    out = {"entries": float(n_entries), "wal_bytes": float(wal_bytes), "segments": float(len(segments))}
    out["build_s"] = build_s
    for label in ("cold", "warm"):
        if label == "cold":
            evict(segments)
        t0 = time.perf_counter()
        with DiskStorage(d) as s:
            st = s.load()
        out[f"{label}_s"] = time.perf_counter() - t0
        assert len(st.entries) == n_entries and st.entries[-1].index == n_entries
        del st
    shutil.rmtree(d)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="where to write (default: a temp dir in the system temp dir)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per batch size, for each of raw and WAL")
    p.add_argument("--slices", type=int, default=30, help="alternating raw/WAL slices per batch size (default 30)")
    p.add_argument("--recovery-entries", type=int, default=1_000_000, help="entries in the recovery WAL")
    p.add_argument("--json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.slices < 1 or args.recovery_entries < 1:
        p.error("--seconds, --slices and --recovery-entries must be positive")
    work = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir))
    results: dict[str, object] = {"dir": str(work)}
    ok = True
    try:
        print(f"# Write-ahead log benchmark ({work}, {args.seconds:g}s per side in {args.slices} alternating slices)")
        print(f"{'batch':>6} {'raw entries/s':>14} {'WAL entries/s':>14} {'ratio':>6}")
        appends = []
        for batch in BATCH_SIZES:
            raw, walr = measure(work, batch, args.seconds, args.slices)
            ratio = walr / raw
            appends.append({"batch": batch, "raw_entries_per_s": raw, "wal_entries_per_s": walr, "ratio": ratio})
            print(f"{batch:>6} {raw:>14,.0f} {walr:>14,.0f} {ratio:>6.2f}")
        results["append"] = appends
        r1 = appends[0]["ratio"]
        r256 = appends[-1]["wal_entries_per_s"]
        verdict = "met" if r1 >= TARGET_RATIO_BATCH_1 else "MISSED"
        print(f"target: ratio >= {TARGET_RATIO_BATCH_1} at batch 1: {verdict}")
        print(
            f"target: >= {TARGET_ENTRIES_PER_S_BATCH_256:,} entries/s at batch 256: "
            f"{'met' if r256 >= TARGET_ENTRIES_PER_S_BATCH_256 else 'MISSED'}"
        )
        ok = r1 >= TARGET_RATIO_BATCH_1 and r256 >= TARGET_ENTRIES_PER_S_BATCH_256
        rec = recovery(work, args.recovery_entries)
        results["recovery"] = rec
        print(
            f"recovery of {int(rec['entries']):,} entries of {ENTRY_BYTES} B "
            f"({rec['wal_bytes'] / 2**20:,.0f} MiB in {int(rec['segments'])} segments): "
            f"cold cache {rec['cold_s']:.2f}s, warm cache {rec['warm_s']:.2f}s "
            f"(target <= {TARGET_RECOVERY_S:g}s: {'met' if rec['cold_s'] <= TARGET_RECOVERY_S else 'MISSED'})"
        )
        ok = ok and rec["cold_s"] <= TARGET_RECOVERY_S
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
