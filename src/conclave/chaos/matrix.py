"""`make chaos`: every workload against every nemesis, several seeds, and a results table.

Each run is ``conclave chaos`` in a subprocess with its own ``--out`` directory under the matrix's
directory; the table (markdown, as docs/chaos.md shows it) is built from their summary.json files,
so a matrix interrupted half-way still reports the runs it made. ``--table-only`` rebuilds the
table from a directory of earlier runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from conclave.chaos.schedule import NEMESES
from conclave.chaos.workloads import WORKLOADS


def table(root: Path) -> str:
    rows = ["| workload | nemesis | nodes | mode | seed | s | faults | ops (ok/fail/info) | verdict "
            "| lost acked writes | worst s to first write after a fault |", "|---" * 11 + "|"]
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        nemesis = s["rerun"].split("--nemesis ")[1].split()[0] if "--nemesis " in s["rerun"] else "?"
        mode = s["mode"] + ("" if s.get("grpc_engine", "python") == "python" else f", {s['grpc_engine']} gRPC")
        mode += f", {s['shards']} shards" if s.get("shards", 1) != 1 else ""
        rows.append(f"| {s['workload']} | {nemesis} | {s['nodes']} | {mode} | {s['seed']} | {s['duration_s']} "
                    f"| {s['faults_injected']} | {s['ops']} ({s['ok']}/{s['fail']}/{s['info']}) | {s['verdict']} "
                    f"| {s['lost_acknowledged_writes']} | {s['worst_recovery_s']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conclave.chaos.matrix", description=__doc__)
    p.add_argument("--out", default="chaos-results")
    p.add_argument("--time", type=float, default=120.0)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--nemeses", default=",".join([*NEMESES, "all"]))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--shards", type=int, default=1,
                   help="every run's members start with this many shards (conclave chaos --shards)")
    p.add_argument("--bank-shards", type=int, default=3,
                   help="shards for the bank workload's runs when --shards is 1 (a one-group bank commits "
                        "nothing across shards; default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="skip every run whose directory already holds a summary.json (a matrix continued)")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    worst = 0
    if not args.table_only:
        for workload in args.workloads.split(","):
            for nemesis in args.nemeses.split(","):
                for seed in args.seeds.split(","):
                    shards = args.bank_shards if workload == "bank" and args.shards == 1 else args.shards
                    shape = f"{args.nodes}" if shards == 1 else f"{args.nodes}x{shards}"
                    out = root / f"{workload}-{nemesis}-{shape}-{seed}"
                    if args.resume and (out / "summary.json").exists():
                        continue
                    cmd = [sys.executable, "-m", "conclave", "chaos", "--time", f"{args.time:g}", "--nodes",
                           str(args.nodes), "--nemesis", nemesis, "--workload", workload, "--seed", seed,
                           "--out", str(out), *(["--shards", str(shards)] if shards != 1 else [])]
                    print("$", " ".join(cmd[2:]), flush=True)
                    rc = subprocess.run(cmd).returncode
                    worst = max(worst, rc)
    print(table(root))
    return worst


if __name__ == "__main__":
    sys.exit(main())
