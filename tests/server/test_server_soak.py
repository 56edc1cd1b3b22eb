"""Soak: a minute of mixed churning load on one real member keeps its RSS bounded.

The member's gc policy (server/runner.py): freeze once after start-up, then CPython's own
collections; the previous policy froze the survivors of every second, which kept every cycle
that lived a second (+92 MB in 10 minutes of this load, bench/README.md). This test compresses
an hour of put/overwrite/delete/lease/watch/txn churn (bench/soak.py's load, with compaction)
into ~75 s (60 s measured after warm-up) under the default policy and asserts that the RSS
troughs after warm-up do not rise beyond a fixed bound (the freeze-only policy grew ~9 MB a minute).
bench/soak.py runs it for longer.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak import run_soak

DURATION_S = 75.0
WARMUP_S = 15.0
# Growth of the RSS troughs (bench/soak.py summarize) between the first and the last 25 s after
# warm-up, about 35 s apart: the default policy's allocator noise is ~1.5 MB a minute (~1 MB here);
# the freeze-only policy grew ~9 MB a minute (~5 MB here).
MAX_GROWTH_MB = 3.0


def test_rss_stays_bounded_under_an_hour_of_churn_compressed(tmp_path: Path) -> None:
    rep = run_soak(tmp_path / "soak", DURATION_S, WARMUP_S)
    numbers = {k: rep[k] for k in ("rss_warm_mb", "rss_end_mb", "rss_peak_mb", "growth_mb", "ops", "errors",
                                   "error_details")}
    assert rep["alive_at_end"], f"member died during the soak: {numbers}"
    ops = rep["ops"]
    for op in ("put", "delete", "txn", "lease_grant", "lease_revoke", "watch", "compact"):
        assert ops.get(op, 0) > 0, f"the soak never managed a {op}: {numbers}"
    assert rep["growth_mb"] <= MAX_GROWTH_MB, (
        f"RSS grew {rep['growth_mb']} MB after warm-up (bound {MAX_GROWTH_MB} MB): {numbers}, "
        f"samples (s, bytes) {rep['samples']}"
    )
