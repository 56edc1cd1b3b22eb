"""Soak: a minute of mixed churning load on one real member keeps its RSS bounded.

The member freezes the survivors of every second out of the cyclic collector (server/runner.py)
and collects the frozen objects in full every CONCLAVE_GC_FULL_INTERVAL_S seconds. This test
compresses an hour of put/overwrite/delete/lease/watch/txn churn (bench/soak.py's load, with
compaction) into ~60 s and the full-collection interval into 15 s, then asserts that RSS after
warm-up does not grow beyond a fixed bound and that the full collections did run (and found the
cyclic garbage the freeze alone would have kept). bench/soak.py runs the same load for longer.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak import run_soak

DURATION_S = 60.0
WARMUP_S = 20.0
FULL_INTERVAL_S = 15.0
MAX_GROWTH_MB = 12.0


def test_rss_stays_bounded_under_an_hour_of_churn_compressed(tmp_path: Path) -> None:
    rep = run_soak(tmp_path / "soak", DURATION_S, WARMUP_S, gc_full_interval=FULL_INTERVAL_S)
    numbers = {k: rep[k] for k in ("rss_warm_mb", "rss_end_mb", "rss_peak_mb", "growth_mb", "full_collections",
                                    "ops", "errors")}
    assert rep["alive_at_end"], f"member died during the soak: {numbers}"
    ops = rep["ops"]
    for op in ("put", "delete", "txn", "lease_grant", "lease_revoke", "watch", "compact"):
        assert ops.get(op, 0) > 0, f"the soak never managed a {op}: {numbers}"
    assert rep["full_collections"], f"no full gc collection ran in {DURATION_S}s at a {FULL_INTERVAL_S}s interval"
    assert rep["growth_mb"] <= MAX_GROWTH_MB, (
        f"RSS grew {rep['growth_mb']} MB after warm-up (bound {MAX_GROWTH_MB} MB): {numbers}, "
        f"samples (s, bytes) {rep['samples']}"
    )
