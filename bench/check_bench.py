"""Benchmark of `conclave check`: the Porcupine reference histories, or a synthetic chaos-like run.

Run on its own: `.venv/bin/python bench/check_bench.py [--repeat N] [--refdata DIR]`.
Times are the median of N runs of the check alone (parsing excluded, as in the
Porcupine figures of the refdata README), next to Porcupine's times from that README.

`bench/check_bench.py --synthetic SEED [--duration S] [--anomaly] [--out FILE]` builds
the history of ``conclave.verify.synth.chaos_history`` (10 clients, 5 keys, 180 s by
default: about 16,000 operations per key, as the run of issue 12), writes it to FILE in
the JSON-lines format when asked (for `conclave check FILE --model cas-register`), and
checks each key alone, printing its time, windows and the search's peak estimate.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path

from conclave.verify.checker import Limits, check, check_partition, partitions
from conclave.verify.formats import dump_json_lines, load
from conclave.verify.history import Status, build_history
from conclave.verify.model import model_named
from conclave.verify.synth import chaos_history

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
    ap.add_argument("--synthetic", type=int, metavar="SEED", help="check a synthetic chaos-like run instead")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of the synthetic run (default 180)")
    ap.add_argument("--anomaly", action="store_true", help="make one read of the synthetic run stale")
    ap.add_argument("--out", type=Path, help="write the synthetic history here (JSON lines)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="per key, seconds (default 60)")
    args = ap.parse_args(argv)
    if args.synthetic is not None:
        return synthetic(args.synthetic, args.duration, args.anomaly, args.out, args.time_limit)
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


def synthetic(seed: int, duration: float, anomaly: bool, out: Path | None, time_limit: float) -> int:
    events = chaos_history(random.Random(seed), duration=duration, anomaly=anomaly)
    if out is not None:
        out.write_text(dump_json_lines(events))
        print(f"history written to {out}")
    history = build_history(events, f"synthetic seed {seed}", "json")
    model = model_named("cas-register")
    ops = history.operations
    info = sum(op.status is Status.INFO for op in ops)
    print(f"seed {seed}: {len(ops)} operations, {info} indeterminate ({100 * info / len(ops):.2f}%), "
          f"{duration:g} s, anomaly {'yes' if anomaly else 'no'}")
    print(f"{'key':<5} {'ops':>6} {'info':>5} {'windows':>8} {'verdict':<17} {'seconds':>8} {'configs':>9} "
          f"{'peak MiB':>9}")
    worst = 0.0
    for key, kept, ignored in partitions(ops, model):
        started = time.perf_counter()
        deadline = started + time_limit
        limits = Limits(should_stop=lambda: time.perf_counter() >= deadline)  # noqa: B023 - called in the loop
        r = check_partition(key, kept, ignored, model, limits)
        seconds = time.perf_counter() - started
        worst = max(worst, seconds)
        n_info = sum(op.status is Status.INFO for op in kept + ignored)
        print(f"{key!s:<5} {len(kept) + len(ignored):>6} {n_info:>5} {r.windows:>8} {r.verdict.value:<17} "
              f"{seconds:>8.2f} {r.configurations:>9} {r.memory_bytes / (1 << 20):>9.1f}")
    print(f"slowest key: {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
