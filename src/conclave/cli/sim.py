"""`conclave sim`: run the deterministic simulator over many seeds, or trace one seed.

Every failing seed is printed with the exact command that replays it; the last line
is always ``N seeds, V violations`` and the exit status is 1 when V > 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

DEFAULT_SEEDS = 100
DEFAULT_STEPS = 3000


def register(sub: Any) -> None:
    from conclave.sim.faults import DRIVER_RULES, FAULT_KINDS, FAULT_RULES, RAFT_RULES

    p = sub.add_parser(
        "sim",
        help="deterministic simulation: real Raft nodes and state machine under injected faults",
        description=(
            "Run the real Raft core and the real MVCC state machine on every member of a simulated cluster "
            "(virtual clock, lossy reordering network, crashes that lose unsynced writes, pauses, membership "
            "changes), behind a simulated driver that batches, forwards, serves ReadIndex reads and expires "
            "leases from the leader. Simulated clients issue put, range (linearizable and serializable), txn "
            "with compares, delete range, compaction, lease grant / keep-alive / revoke and watches. Checked: "
            "election safety, log matching, leader completeness, state machine safety (one store hash per "
            "applied index), exactly-once apply, watch streams without gap or duplicate, kept-alive leases "
            "never expiring, durability of acknowledged writes, liveness after faults heal and "
            "linearizability of the whole client history. One seed is one exact replay."
        ),
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, metavar="N", help=f"number of seeds to run (default {DEFAULT_SEEDS})")
    which.add_argument("--seed", type=int, metavar="S", help="run the single seed S (combine with --trace to see it)")
    p.add_argument("--start", type=int, default=0, metavar="S", help="first seed of a --seeds run (default 0)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5, 7), help="voting members at start (default 3)")
    p.add_argument(
        "--faults",
        default="all",
        metavar="KINDS",
        help=f"comma-separated fault kinds from {','.join(FAULT_KINDS)}; or 'all' (default) or 'none'",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="K",
        help=f"simulated events in the faulty phase of each seed, before the quiet phase (default {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--fault-rule",
        choices=FAULT_RULES,
        metavar="NAME",
        help=(
            "break one rule on every node, to show the simulator catches it; of the Raft core: "
            f"{', '.join(RAFT_RULES)}; of the state machine or driver: {', '.join(DRIVER_RULES)}"
        ),
    )
    p.add_argument(
        "--trace", action="store_true", help="with --seed: print every step (messages, roles, crashes, commits)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conclave.sim.errors import SetupError
    from conclave.sim.faults import describe_faults, parse_faults
    from conclave.sim.simulation import SimOptions, run_seed

    try:
        if args.trace and args.seed is None:
            raise SetupError("--trace needs --seed S (one seed at a time)")
        if args.seeds is not None and args.seeds < 1:
            raise SetupError(f"--seeds must be at least 1, not {args.seeds}")
        options = SimOptions(
            nodes=args.nodes, faults=parse_faults(args.faults), steps=args.steps, fault_rule=args.fault_rule
        )
        options.validate()
    except SetupError as e:
        print(f"conclave sim: error: {e}", file=sys.stderr)
        return 2

    count = args.seeds or DEFAULT_SEEDS
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + count))
    replay = f"--nodes {options.nodes} --faults {describe_faults(options.faults)} --steps {options.steps}"
    if options.fault_rule:
        replay += f" --fault-rule {options.fault_rule}"
    trace = print if args.trace else None

    violations = 0
    steps_total = 0
    totals: Counter[str] = Counter()
    began = time.perf_counter()
    for seed in seeds:
        try:
            result = run_seed(seed, options, trace)
        except Exception as e:  # a bug in the simulator itself: report it like a violation, with the seed
            violations += 1
            print(f"FAIL seed {seed}: simulator error {type(e).__name__}: {e}")
            print(f"  replay: conclave sim --seed {seed} {replay} --trace")
            continue
        steps_total += result.steps
        totals.update(result.stats)
        totals.update(result.ops)
        totals["leader_terms"] += result.leader_terms
        if result.violation is not None:
            violations += 1
            print(f"FAIL {result.violation}")
            print(f"  replay: conclave sim --seed {seed} {replay} --trace")
        elif args.seed is not None:
            print(
                f"ok seed {seed}: {result.steps} steps, {result.time_ms}ms simulated, "
                f"{result.leader_terms} leader terms, commit index {result.commit_index}, ops {result.ops}"
            )
        sys.stdout.flush()
    elapsed = time.perf_counter() - began
    print(
        f"{steps_total / len(seeds):.0f} steps/seed, {len(seeds) / elapsed:.1f} seeds/s "
        f"({options.nodes} nodes, faults {describe_faults(options.faults)}"
        f"{', rule ' + options.fault_rule if options.fault_rule else ''})"
    )
    print("coverage: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    print(f"{len(seeds)} seeds, {violations} violations")
    return 1 if violations else 0
