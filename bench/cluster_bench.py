"""Side by side: a 3-member Conclave cluster vs a 3-member etcd 3.4 cluster on this machine.

Runs the same `conclave bench` workloads against each (one cluster at a time, same
machine, same run) and prints a table with the ratio Conclave / etcd, then runs
`etcdctl check perf --load=s` and `--load=m` against Conclave.

    .venv/bin/python bench/cluster_bench.py [--duration 5] [--skip-check-perf] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conclave.server.launcher import ProcessCluster

WORKLOADS: list[tuple[str, list[str]]] = [
    ("put c=1", ["put", "--clients", "1", "--conns", "1"]),
    ("put c=16", ["put", "--clients", "16", "--conns", "4"]),
    ("put c=64", ["put", "--clients", "64", "--conns", "8", "--processes", "2"]),
    ("put c=256", ["put", "--clients", "256", "--conns", "16", "--processes", "2"]),
    ("range l c=64", ["range", "--consistency", "l", "--clients", "64", "--conns", "8", "--processes", "2"]),
    ("range s c=64", ["range", "--consistency", "s", "--clients", "64", "--conns", "8", "--processes", "2"]),
]


def run_workloads(endpoints: list[str], duration: float) -> dict[str, dict[str, float]]:
    results = {}
    for name, args in WORKLOADS:
        cmd = [sys.executable, "-m", "conclave", "bench", *args, "--endpoints", ",".join(endpoints),
               "--duration", str(duration), "--val-size", "256", "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 10 + 120)
        if done.returncode != 0:
            print(f"  {name}: FAILED\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rep = json.loads(done.stdout)
        results[name] = rep
        print(f"  {name:14s} {rep['ops_per_s']:>10,.0f} ops/s  p50 {rep['latency_ms_p50']:7.2f} ms  "
              f"p99 {rep['latency_ms_p99']:7.2f} ms  errors {rep.get('errors', {})}", flush=True)
    return results


def check_perf(endpoints: list[str], load: str) -> str:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        return "SKIPPED (no etcdctl)"
    done = subprocess.run([etcdctl, "--endpoints=" + ",".join(endpoints), "check", "perf", f"--load={load}"],
                          capture_output=True, text=True, timeout=600)
    tail = [ln for ln in done.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    return " | ".join(tail) if tail else f"exit {done.returncode}: {done.stderr[-300:]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--skip-check-perf", action="store_true")
    ap.add_argument("--json", default=None, help="write all figures to this file")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="conclave-bench-"))
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("conclave", "etcd"):
        if kind == "etcd" and shutil.which("etcd") is None:
            print("etcd is not installed: no side-by-side figures", file=sys.stderr)
            continue
        print(f"== 3-member {kind} cluster (heartbeat 100 ms, election 1000 ms, fsync on)", flush=True)
        cluster = ProcessCluster(root / kind, 3, kind=kind, heartbeat_ms=100, election_ms=1000)
        cluster.start()
        try:
            time.sleep(3.0)  # let the first election settle
            figures[kind] = run_workloads(cluster.endpoints, args.duration)
            if kind == "conclave" and not args.skip_check_perf:
                for load in ("s", "m"):
                    print(f"  etcdctl check perf --load={load}: {check_perf(cluster.endpoints, load)}", flush=True)
        finally:
            cluster.stop()
    if "conclave" in figures and "etcd" in figures:
        print("\n| workload | Conclave ops/s | etcd ops/s | ratio | Conclave p99 ms | etcd p99 ms | p99 ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, _ in WORKLOADS:
            c, e = figures["conclave"].get(name), figures["etcd"].get(name)
            if not c or not e:
                continue
            cp, ep = c["latency_ms_p99"], e["latency_ms_p99"]
            print(f"| {name} | {c['ops_per_s']:,.0f} | {e['ops_per_s']:,.0f} | {c['ops_per_s'] / e['ops_per_s']:.2f} "
                  f"| {cp:.1f} | {ep:.1f} | {cp / ep:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
