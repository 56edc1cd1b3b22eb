"""Benchmark of `conclave check`: time to check each Porcupine reference history.

Run on its own: `.venv/bin/python bench/check_bench.py [--repeat N] [--refdata DIR]`.
Times are the median of N runs of the check alone (parsing excluded, as in the
Porcupine figures of the refdata README), next to Porcupine's times from that README.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

from conclave.verify.checker import check
from conclave.verify.formats import load
from conclave.verify.model import model_named

REPO = Path(__file__).resolve().parent.parent
# Porcupine's check times from shared/refdata/porcupine/README.md (ms). Files not named there fall in
# its "most etcd files 0.04-0.3 ms" range; their ratio is given against both ends.
PORCUPINE_MS = {
    "jepsen/etcd_002.log": 138.0,
    "jepsen/etcd_057.log": 42.0,
    "jepsen/etcd_040.log": 9.2,
    "jepsen/etcd_080.log": 6.5,
    "kv/c01-bad.txt": 0.03,
    "kv/c10-ok.txt": 0.43,
    "kv/c50-bad.txt": 17.0,
}
PORCUPINE_RANGE_MS = (0.04, 0.3)
ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| (NOT linearizable|linearizable) \|", re.M)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15, help="runs per file; the median is reported (default 15)")
    ap.add_argument("--refdata", type=Path, default=REPO.parent / "shared" / "refdata" / "porcupine")
    args = ap.parse_args(argv)
    readme = args.refdata / "README.md"
    if not readme.is_file():
        print(f"reference data not found at {args.refdata}", file=sys.stderr)
        return 2
    rows = ROW.findall(readme.read_text())
    print(f"{'file':<22} {'ops':>5} {'verdict':<17} {'conclave ms':>11} {'porcupine ms':>13} {'ratio':>11}")
    total_ms = 0.0
    porcupine_lo = porcupine_hi = 0.0
    worst_listed = worst_lo = worst_hi = 0.0
    wrong = 0
    for name, model_name, expected in rows:
        history = load((args.refdata / name).read_text(), name)
        model = model_named("kv" if model_name == "kv" else "cas-register")
        runs = []
        verdict = ""
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            verdict = check(history, model).verdict.value
            runs.append((time.perf_counter() - started) * 1000)
        ms = statistics.median(runs)
        total_ms += ms
        ok = verdict == expected.lower()
        wrong += not ok
        if name in PORCUPINE_MS:
            p_lo = p_hi = PORCUPINE_MS[name]
            porcupine = f"{p_hi:g}"
            ratio = f"{ms / p_hi:.2f}"
            worst_listed = max(worst_listed, ms / p_hi)
        else:
            p_lo, p_hi = PORCUPINE_RANGE_MS
            porcupine = f"{p_lo:g}-{p_hi:g}"
            ratio = f"{ms / p_hi:.1f}-{ms / p_lo:.1f}"
            worst_lo, worst_hi = max(worst_lo, ms / p_hi), max(worst_hi, ms / p_lo)
        porcupine_lo += p_lo
        porcupine_hi += p_hi
        mark = "" if ok else "  WRONG VERDICT"
        print(f"{name:<22} {len(history.operations):>5} {verdict:<17} {ms:>11.3f} {porcupine:>13} {ratio:>11}{mark}")
    print(
        f"{'whole set':<22} {'':>5} {'':<17} {total_ms:>11.1f} {porcupine_lo:>6.1f}-{porcupine_hi:<6.1f}"
        f" {total_ms / porcupine_hi:>5.2f}-{total_ms / porcupine_lo:.2f}"
    )
    print(f"files: {len(rows)}, wrong verdicts: {wrong}")
    print(f"worst ratio, files with their own Porcupine time: {worst_listed:.2f}")
    print(f"worst ratio, other files (against Porcupine's 0.3 ms / 0.04 ms): {worst_lo:.1f} / {worst_hi:.1f}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
