"""`conclave chaos`: a Jepsen-style run of real faults against real members (see docs/chaos.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from conclave.chaos.schedule import NEMESES
    p = sub.add_parser(
        "chaos",
        help="run a cluster of real members under faults and check what clients saw",
        description="Start a cluster of real `conclave serve` members (each in its own network namespace when "
        "run as root, else on 127.0.0.1 behind a peer proxy), run a workload against it while a seeded "
        "nemesis injects faults, heal everything, measure recovery, and check the history (linearizability "
        "per key, lost acknowledged writes). Exit status: 0 valid, 1 violation, 2 undecided or harness error.",
    )
    p.add_argument("--time", type=float, default=60.0, help="seconds of faults and load (default 60)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5), help="members: 3 or 5 (default 3)")
    p.add_argument("--nemesis", default="kill,pause,partition",
                   help=f"comma-separated: {','.join(NEMESES)}; or all, none (default kill,pause,partition)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between fault starts (default 10)")
    p.add_argument("--workload", default="register", choices=("register", "append", "lock", "watch", "lease", "bank"),
                   help="register (default), append, lock, watch, lease or bank (transfers across shards; "
                   "docs/chaos.md)")
    p.add_argument("--seed", type=int, default=None, help="the schedule's and clients' seed (default: random)")
    p.add_argument("--clients", type=int, default=10, help="concurrent clients (default 10)")
    p.add_argument("--keys", type=int, default=5, help="keys in use at a time (default 5)")
    p.add_argument("--ops-per-key", type=int, default=None,
                   help="operations after which a key is retired for a fresh one (default 200; append 100)")
    p.add_argument("--quiet", type=float, default=10.0, help="seconds of load after healing (default 10)")
    p.add_argument("--recovery-timeout", type=float, default=30.0,
                   help="a write must succeed within this many seconds of the final heal (default 30)")
    p.add_argument("--mode", default="auto", choices=("auto", "netns", "proxy"),
                   help="netns (root), proxy (127.0.0.1), auto: netns when possible (default)")
    p.add_argument("--grpc-engine", default="python", choices=("python", "rust", "mixed"),
                   help="the members' etcd gRPC engine; mixed: even members rust, odd python (default python)")
    p.add_argument("--shards", type=int, default=1,
                   help="start the members with this many shards (data Raft groups); the bank workload's accounts "
                   "are split evenly over them (--shard-split-keys), the other workloads get the server's default "
                   "split; nemeses a sharded cluster refuses (member) are skipped (default 1)")
    p.add_argument("--accounts", type=int, default=100, help="bank workload: accounts (default 100)")
    p.add_argument("--out", default=None, help="write history.jsonl, report.html, summary.json, member logs here")
    p.add_argument("--check-budget", type=float, default=120.0, help="seconds the checker may take (default 120)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import random

    from conclave.chaos.run import ChaosConfig, run_chaos
    from conclave.chaos.schedule import parse_nemeses
    try:
        nemeses = parse_nemeses(args.nemesis)
    except ValueError as exc:
        print(f"conclave chaos: {exc}", file=sys.stderr)
        return 2
    if args.time <= 0 or args.interval <= 0 or args.clients < 1 or args.keys < 1 or (args.ops_per_key or 2) < 2:
        print("conclave chaos: --time, --interval, --clients, --keys must be positive, --ops-per-key at least 2",
              file=sys.stderr)
        return 2
    if not 1 <= args.shards <= 64:
        print("conclave chaos: --shards must be between 1 and 64", file=sys.stderr)
        return 2
    if args.accounts < max(2, args.shards):
        print(f"conclave chaos: --accounts must be at least 2 and at least --shards ({args.shards})", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    cfg = ChaosConfig(time=args.time, nodes=args.nodes, nemesis=nemeses, nemesis_text=args.nemesis,
                      workload=args.workload, seed=seed, interval=args.interval, clients=args.clients,
                      keys=args.keys,
                      ops_per_key=args.ops_per_key or (100 if args.workload == "append" else 200), quiet=args.quiet,
                      recovery_timeout=args.recovery_timeout, out=Path(args.out) if args.out else None,
                      mode=args.mode, check_budget=args.check_budget, grpc_engine=args.grpc_engine,
                      shards=args.shards, accounts=args.accounts)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        rc, s = run_chaos(cfg, say)
    except Exception as exc:
        print(f"conclave chaos: the harness failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"rerun: {cfg.rerun()}", file=sys.stderr)
        return 2
    print(f"workload {s['workload']}: {s['verdict'].upper()} (checker: {s['checker']}, "
          f"{s['keys']} keys in {s['checker_seconds']}s)")
    print(f"  operations {s['ops']}: ok {s['ok']}, fail {s['fail']}, info {s['info']}")
    print(f"  faults injected {s['faults_injected']} (skipped {s['faults_skipped']}), "
          f"worst time to first write after a fault {s['worst_recovery_s']} s, "
          f"after the final heal {s['recovery_after_final_heal_s']} s")
    print(f"  availability: {s['ok_per_s_during_faults']} ok/s during faults, {s['ok_per_s_outside_faults']} "
          f"outside; longest stretch without an acknowledged operation {s['longest_gap_without_ok_s']} s")
    print(f"  acknowledged writes lost: {s['lost_acknowledged_writes']}")
    for v in s["violations"][:10]:
        print(f"  violation: {v}")
    if s["failing_keys"]:
        print(f"  not linearizable: {', '.join(s['failing_keys'][:10])}")
    if s["unknown_keys"]:
        print(f"  undecided keys: {', '.join(s['unknown_keys'][:10])}")
    if args.out:
        print(f"  report: {Path(args.out) / 'report.html'}")
    if rc != 0:
        print(f"seed {cfg.seed}; rerun with: {cfg.rerun()}")
    return rc
