"""Conclave (rust engine) vs Conclave (python engine) vs etcd 3.4, side by side, one cluster at a time.

The figures issue 11 asks for, from one script, same machine, same run, same load generator
(``conclave.loadgen``: grpc.aio channels, each client one request in flight, 256-byte values):

1. three members of each system: put and linearizable range at 64 and 256 in flight, over 1
   connection (as etcd clients use: one HTTP/2 connection per endpoint) and over 8: ops/s and p99;
2. one member of each: the server's CPU per put and per linearizable range (utime+stime of the
   server process from /proc, read when the load generator releases its workers and again once
   they have all reported, so the range prefill is not counted), 64 in flight, 1 connection;
3. ``etcdctl check perf --load=m`` and ``--load=l`` against three Conclave members (rust engine)
   and three etcd members.

It prints one markdown table per part. Every cluster: 127.0.0.1, free ports, temporary data dirs
on disk, fsync on, heartbeat 100 ms, election 1000 ms; removed afterwards.

    .venv/bin/python bench/edge_bench.py [--duration 5] [--systems rust,python,etcd]
                                         [--parts cluster,cpu,perf] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conclave.loadgen import LoadConfig, LoadError, run_load
from conclave.server.launcher import ProcessCluster

SYSTEMS = {
    "rust": ("conclave", ["--grpc-engine", "rust"]),
    "python": ("conclave", ["--grpc-engine", "python"]),
    "etcd": ("etcd", []),
}
LABELS = {"rust": "Conclave rust", "python": "Conclave python", "etcd": "etcd 3.4"}
# (name, op, clients in flight, connections). One connection means one generator process (each
# process opens at least one connection of its own); eight use two processes.
CLUSTER_WORKLOADS = [
    (f"{op} {c} in flight, {n} conn", op, c, n)
    for op in ("put", "range-l")
    for n in (1, 8)
    for c in (64, 256)
]
CPU_WORKLOADS = [("put", "put"), ("range-l", "range")]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(endpoints: list[str], op: str, clients: int, conns: int, duration: float,
         pids: list[int] | None = None) -> dict[str, Any]:
    """One generator run; with ``pids``, also the servers' CPU seconds spent inside the window."""
    real_op = "range" if op.startswith("range") else op
    cfg = LoadConfig(op=real_op, endpoints=tuple(endpoints), clients=clients, conns=conns,
                     duration_s=duration, val_size=256, consistency="l",
                     processes=1 if conns == 1 else 2)
    marks: dict[str, float] = {}

    def window(edge: str) -> None:
        marks[edge] = sum(cpu_s(p) for p in pids or [])

    rep = run_load(cfg, on_window=window).as_dict()
    if pids:
        rep["server_cpu_s"] = marks["end"] - marks["start"]
        rep["server_cpu_us_per_op"] = 1e6 * rep["server_cpu_s"] / rep["ops"] if rep["ops"] else 0.0
    return rep


def start(system: str, root: Path, size: int) -> ProcessCluster | None:
    """A started cluster, or None (said on stderr) when it does not come up: the run goes on."""
    kind, extra = SYSTEMS[system]
    cluster = ProcessCluster(root, size, kind=kind, heartbeat_ms=100, election_ms=1000, extra_args=extra)
    try:
        cluster.start()
    except RuntimeError as err:
        print(f"  {LABELS[system]}: the cluster did not start: {err}", file=sys.stderr, flush=True)
        cluster.stop()
        return None
    time.sleep(3.0)  # let the first election settle
    return cluster


def check_perf(endpoints: list[str], level: str) -> str:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        return "skipped (no etcdctl)"
    try:
        done = subprocess.run([etcdctl, "--endpoints=" + ",".join(endpoints), "check", "perf", f"--load={level}"],
                              capture_output=True, text=True, timeout=900, env={**os.environ, "ETCDCTL_API": "3"})
    except subprocess.TimeoutExpired:
        return "no answer within 900 s"
    # The progress bar redraws with carriage returns: a verdict line may follow one on the same line.
    text = done.stdout.replace("\r", "\n")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("PASS", "FAIL"))]
    if not lines:
        return f"exit {done.returncode}: {(done.stderr or done.stdout)[-300:].strip()}"
    overall = [ln for ln in lines if ln in ("PASS", "FAIL")]
    details = [ln for ln in lines if ln not in ("PASS", "FAIL")]
    verdict = overall[-1] if overall else ("PASS" if done.returncode == 0 else "FAIL")
    return f"**{verdict}** ({'; '.join(details)})"


def part_cluster(systems: list[str], root: Path, duration: float) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {s: {} for s in systems}
    for system in systems:
        print(f"== 3 members: {LABELS[system]}", flush=True)
        cluster = start(system, root / f"cluster-{system}", 3)
        if cluster is None:
            continue
        try:
            for name, op, clients, conns in CLUSTER_WORKLOADS:
                try:
                    rep = load(cluster.endpoints, op, clients, conns, duration)
                except LoadError as err:
                    print(f"  {name}: FAILED: {err}", flush=True)
                    continue
                figures[system][name] = rep
                print(f"  {name:28s} {rep['ops_per_s']:>9,.0f} ops/s  p99 {rep['latency_ms_p99']:7.2f} ms  "
                      f"errors {rep['errors'] or 'none'}", flush=True)
        finally:
            cluster.stop()
    return figures


def part_cpu(systems: list[str], root: Path, duration: float) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {s: {} for s in systems}
    for system in systems:
        print(f"== 1 member: {LABELS[system]}", flush=True)
        cluster = start(system, root / f"single-{system}", 1)
        if cluster is None:
            continue
        try:
            pids = [m.proc.pid for m in cluster.members if m.proc is not None]
            for name, op in CPU_WORKLOADS:
                try:
                    rep = load(cluster.endpoints, op, 64, 1, duration, pids)
                except LoadError as err:
                    print(f"  {name}: FAILED: {err}", flush=True)
                    continue
                figures[system][name] = rep
                print(f"  {name:8s} {rep['ops_per_s']:>9,.0f} ops/s  p99 {rep['latency_ms_p99']:7.2f} ms  "
                      f"server CPU {rep['server_cpu_us_per_op']:6.1f} us/op", flush=True)
        finally:
            cluster.stop()
    return figures


def part_perf(systems: list[str], root: Path) -> dict[str, dict[str, str]]:
    figures: dict[str, dict[str, str]] = {}
    for system in [s for s in systems if s in ("rust", "etcd")]:
        print(f"== etcdctl check perf, 3 members: {LABELS[system]}", flush=True)
        figures[system] = {}
        for level in ("m", "l"):
            cluster = start(system, root / f"perf-{system}-{level}", 3)  # a fresh cluster for each load
            if cluster is None:
                figures[system][level] = "cluster did not start"
                continue
            try:
                figures[system][level] = check_perf(cluster.endpoints, level)
            finally:
                cluster.stop()
            print(f"  --load={level}: {figures[system][level]}", flush=True)
    return figures


def tables(systems: list[str], figures: dict[str, Any]) -> str:
    out: list[str] = []
    if "cluster" in figures:
        f = figures["cluster"]
        head = "| 3 members, 256 B values | " + " | ".join(f"{LABELS[s]} ops/s | p99 ms" for s in systems)
        ratio = "rust" in systems and "etcd" in systems
        out += [head + (" | rust/etcd ops | rust/etcd p99 |" if ratio else " |"),
                "|---|" + "---:|---:|" * len(systems) + ("---:|---:|" if ratio else "")]
        for name, *_ in CLUSTER_WORKLOADS:
            cells = []
            for s in systems:
                r = f[s].get(name)
                cells.append(f"{r['ops_per_s']:,.0f} | {r['latency_ms_p99']:.1f}" if r else "— | —")
            row = f"| {name} | " + " | ".join(cells) + " |"
            if ratio:
                a, b = f["rust"].get(name), f["etcd"].get(name)
                row += (f" {a['ops_per_s'] / b['ops_per_s']:.2f} | {a['latency_ms_p99'] / b['latency_ms_p99']:.2f} |"
                        if a and b and b["ops_per_s"] and b["latency_ms_p99"] else " — | — |")
            out.append(row)
        out.append("")
    if "cpu" in figures:
        f = figures["cpu"]
        out += ["| 1 member, 64 in flight, 1 conn | " + " | ".join(f"{LABELS[s]}" for s in systems) + " |",
                "|---|" + "---:|" * len(systems)]
        for name, _ in CPU_WORKLOADS:
            cells = []
            for s in systems:
                r = f[s].get(name)
                cells.append(f"{r['server_cpu_us_per_op']:.0f} us/op ({r['ops_per_s']:,.0f} ops/s)" if r else "—")
            out.append(f"| server CPU per {name} | " + " | ".join(cells) + " |")
        out.append("")
    if "perf" in figures:
        f = figures["perf"]
        out += ["| etcdctl check perf, 3 members | " + " | ".join(LABELS[s] for s in f) + " |",
                "|---|" + "---|" * len(f)]
        for level in ("m", "l"):
            out.append(f"| --load={level} | " + " | ".join(f[s].get(level, "—") for s in f) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load run (default 5)")
    ap.add_argument("--systems", default="rust,python,etcd", help="comma-separated: rust, python, etcd")
    ap.add_argument("--parts", default="cluster,cpu,perf", help="comma-separated: cluster, cpu, perf")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [s for s in systems if s not in SYSTEMS] + [p for p in parts if p not in ("cluster", "cpu", "perf")]
    if bad:
        ap.error(f"unknown system or part: {', '.join(bad)}")
    if "etcd" in systems and shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        print("etcd is not installed (make system-deps): running without it", file=sys.stderr)
        systems.remove("etcd")
    if "rust" in systems:
        from conclave.api import edge_server

        if not edge_server.available():
            print(f"the compiled edge is not built ({edge_server.IMPORT_ERROR}): run `make edge`", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="conclave-edge-bench-"))
    figures: dict[str, Any] = {}
    try:
        if "cluster" in parts:
            figures["cluster"] = part_cluster(systems, root, args.duration)
        if "cpu" in parts:
            figures["cpu"] = part_cpu(systems, root, args.duration)
        if "perf" in parts:
            figures["perf"] = part_perf(systems, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(tables(systems, figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
