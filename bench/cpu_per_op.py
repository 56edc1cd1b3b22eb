"""CPU each member spends per put: Conclave (gRPC or native protocol) and etcd, same load.

Starts a 3-member cluster, reads each member's utime+stime from /proc around a
`conclave bench put` run and divides by the operations completed.

    .venv/bin/python bench/cpu_per_op.py [--system conclave|etcd] [--protocol grpc|native]
                                         [--grpc-engine auto|rust|python] [--clients 64] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conclave.server.launcher import ProcessCluster


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=("conclave", "etcd"), default="conclave")
    ap.add_argument("--protocol", choices=("grpc", "native"), default="grpc")
    ap.add_argument("--grpc-engine", choices=("auto", "rust", "python"), default=None,
                    help="Conclave's gRPC engine (default: conclave serve's own default)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.system == "etcd" and args.protocol == "native":
        ap.error("etcd speaks only gRPC")
    with tempfile.TemporaryDirectory(prefix="conclave-cpu-") as tmp:
        extra = ["--grpc-engine", args.grpc_engine] if args.grpc_engine and args.system == "conclave" else []
        cluster = ProcessCluster(Path(tmp), 3, kind=args.system, heartbeat_ms=100, election_ms=1000, extra_args=extra)
        cluster.start()
        try:
            time.sleep(3.0)
            eps = [m.native_endpoint if args.protocol == "native" else m.endpoint for m in cluster.members]
            pids = {m.name: m.proc.pid for m in cluster.members if m.proc is not None}
            before = {n: cpu_s(p) for n, p in pids.items()}
            out = subprocess.run(
                [sys.executable, "-m", "conclave", "bench", "put", "--protocol", args.protocol,
                 "--endpoints", ",".join(eps), "--clients", str(args.clients), "--conns", "8",
                 "--processes", "2", "--duration", str(args.duration), "--json"],
                capture_output=True, text=True, timeout=args.duration * 10 + 120, check=True,
            ).stdout
            after = {n: cpu_s(p) for n, p in pids.items()}
        finally:
            cluster.stop()
    rep = json.loads(out)
    ops = rep["ops"]
    per = {n: 1e6 * (after[n] - before[n]) / ops for n in pids}
    engine = f" ({args.grpc_engine} engine)" if extra else ""
    print(f"{args.system} {args.protocol}{engine} put, {args.clients} in flight: {rep['ops_per_s']:,.0f} ops/s, "
          f"p99 {rep['latency_ms_p99']:.1f} ms; generator {rep['generator_cpu_us_per_op']:.0f} us/op")
    print("member CPU per put (us): " + ", ".join(f"{n} {v:.0f}" for n, v in sorted(per.items()))
          + f"; sum {sum(per.values()):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
