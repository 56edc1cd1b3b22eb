"""Crash tests with real processes: SIGKILL a writer at random moments, restart, and
check that every acknowledged record survived and nothing unacknowledged is committed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from wal_crash_child import data_for, snapshot_data

from conclave.storage.wal import DiskStorage

CHILD = Path(__file__).with_name("wal_crash_child.py")
ROUNDS = 25


def run_until_killed(data_dir: Path, seed: int, run_s: float) -> list[str]:
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(CHILD.parent)])}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    started = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(30), f"child never started: {proc.stderr.read() if proc.stderr else ''}"
        time.sleep(run_s)
        assert proc.poll() is None, f"child died by itself: {proc.stderr.read() if proc.stderr else ''}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


def test_sigkill_never_loses_acknowledged_records(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    data_dir = tmp_path / "node"
    acked_total = 0
    killed_mid_sync = 0
    snapshots_seen = 0
    for round_no in range(ROUNDS):
        lines = run_until_killed(data_dir, round_no, rng.uniform(0.02, 0.35))
        assert lines[0].startswith("start ")
        acked = int(lines[0].split()[1])
        inflight = acked
        for line in lines[1:]:
            kind, value = line.split()
            if kind == "ack":
                acked = int(value)
            elif kind == "sync":
                inflight = int(value)
        killed_mid_sync += inflight > acked
        with DiskStorage(data_dir) as s:
            st = s.load()
        base = 0 if st.snapshot is None else st.snapshot.meta.index
        if st.snapshot is not None:
            snapshots_seen += 1
            assert st.snapshot.data == snapshot_data(base)
        last = st.entries[-1].index if st.entries else base
        where = f"round {round_no}: acked {acked}, in flight {inflight}, recovered up to {last}"
        # Every acknowledged record is there, in order, byte for byte.
        assert [e.index for e in st.entries] == list(range(base + 1, last + 1)), where
        assert acked <= last <= inflight, where
        assert all(e.data == data_for(e.index) for e in st.entries), where
        # Committed is the acknowledged batch, or the in-flight one only if all of it landed.
        assert st.hard_state.commit in (acked, inflight), where
        assert st.hard_state.commit <= last, where
        acked_total = acked
    assert acked_total > 1000
    assert killed_mid_sync > 0, "no kill landed while a batch was being synced"
    assert snapshots_seen > 0
