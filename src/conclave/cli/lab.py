"""`conclave lab`: the consistency lab. List the scenarios, run one (story, verdict, counts,
timeline; ``--html OUT`` for a page), or run them all (a table; non-zero exit if any verdict
differs from its expectation; ``--html DIR`` for a page per run and an index).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# flag -> the variant it selects (the flags of docs/lab.md; --variant names any variant)
FLAG_VARIANTS = {"read_repair": "read-repair", "lww": "lww", "sync": "sync", "read_index": "read-index",
                 "linearizable": "linearizable", "fencing": "fencing", "replicated_decision": "replicated-decision"}


def register(sub: Any) -> None:
    p = sub.add_parser("lab", help="the consistency lab: classic anomalies reproduced, judged and drawn",
                       description="Deterministic scenarios of consistency and consensus on virtual time, "
                       "judged by the linearizability checker. See docs/lab.md.")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    ls = lab_sub.add_parser("list", help="list the scenarios and their variants")
    ls.set_defaults(func=run_list)
    r = lab_sub.add_parser("run", help="run one scenario (NAME) or every scenario (all)",
                           description="Run a scenario: print its story, the verdict, counts and an ASCII timeline. "
                           "`run all` prints a table of every scenario and variant and exits 1 if any verdict "
                           "differs from its expectation.")
    r.add_argument("name", metavar="NAME", help="a scenario from `conclave lab list`, or all")
    r.add_argument("--seed", type=int, default=1, help="the seed: one seed is one exact replay (default 1)")
    r.add_argument("--variant", help="the variant to run (default: the scenario's first; see `conclave lab list`)")
    r.add_argument("--html", metavar="OUT", help="write a self-contained HTML page to OUT (with all: a directory "
                   "with one page per run and index.html)")
    r.add_argument("--no-timeline", action="store_true", help="leave out the ASCII timeline")
    g = r.add_argument_group("variant shortcuts")
    g.add_argument("--read-repair", action="store_true", help="quorum-race: synchronous read repair")
    g.add_argument("--lww", action="store_true", help="quorum-race: last-write-wins on skewed clocks (quorum-lww)")
    g.add_argument("--sync", action="store_true", help="async-failover: synchronous replication")
    g.add_argument("--mode", choices=("cp", "ap"), help="cap-partition: Raft (cp) or local replicas (ap)")
    g.add_argument("--read-index", action="store_true", help="stale-follower-read: reads through ReadIndex")
    g.add_argument("--linearizable", action="store_true", help="serializable-not-linearizable: ReadIndex reads")
    g.add_argument("--clock", choices=("counters", "wall-clock", "lamport", "lamport-unique", "tob"),
                   help="sequence-numbers: how events are ordered")
    g.add_argument("--fencing", action="store_true", help="split-brain-lock: the storage checks fencing tokens")
    g.add_argument("--recover-after", type=int, metavar="MS",
                   help="2pc-coordinator-crash: the coordinator recovers after MS ms")
    g.add_argument("--replicated-decision", action="store_true",
                   help="2pc-coordinator-crash: the decision is committed through Raft")
    r.set_defaults(func=run_scenario)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    from conclave.lab.registry import ALIASES, SCENARIOS

    for s in SCENARIOS.values():
        print(f"{s.name:<32} {s.summary}")
        for v in s.variants:
            print(f"    {v.name:<28} expect {v.expected:<24} {v.summary}")
    for alias, (name, variant) in ALIASES.items():
        print(f"{alias:<32} = {name} --variant {variant}")
    return 0


def _variant(args: argparse.Namespace) -> str | None:
    chosen = [v for flag, v in FLAG_VARIANTS.items() if getattr(args, flag)]
    if args.mode:
        chosen.append(args.mode)
    if args.clock:
        chosen.append(args.clock)
    if args.variant:
        chosen.append(args.variant)
    if args.recover_after is not None and not chosen:
        chosen.append("recover")
    if len(set(chosen)) > 1:
        raise ValueError(f"choose one variant, not {', '.join(chosen)}")
    return chosen[0] if chosen else None


def _command(name: str, variant: str, seed: int) -> str:
    return f"conclave lab run {name} --variant {variant} --seed {seed}"


def run_scenario(args: argparse.Namespace) -> int:
    from conclave.lab.registry import ALIASES, scenario_named
    from conclave.lab.render import render_html, render_text
    from conclave.lab.scenario import LabError

    if args.name == "all":
        return _run_all(args)
    try:
        variant = _variant(args)
        if args.name in ALIASES and variant is None:
            variant = ALIASES[args.name][1]
        s = scenario_named(args.name)
        opts = {"recover_after": args.recover_after} if args.recover_after is not None else {}
        out = s.run(args.seed, variant, **opts)
    except (LabError, ValueError) as exc:
        print(f"conclave lab: {exc}", file=sys.stderr)
        return 2
    print(render_text(out, timeline=not args.no_timeline))
    if args.html:
        page = Path(args.html)
        try:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(render_html(out, s.concept, _command(s.name, out.variant, out.seed)), encoding="utf-8")
        except OSError as exc:
            print(f"conclave lab: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"\nwrote {args.html}")
    return 0 if out.matches else 1


def _run_all(args: argparse.Namespace) -> int:
    from conclave.lab import registry
    from conclave.lab.render import render_html, render_index

    outdir = Path(args.html) if args.html else None
    if outdir is not None:
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"conclave lab: cannot write pages into {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    rows = []
    print(f"{'scenario':<30} {'variant':<20} {'verdict':<22} {'expected':<22} {'ops':>5} {'lost writes':>11}")
    bad = 0
    for s in registry.SCENARIOS.values():
        for v in s.variants:
            out = s.run(args.seed, v.name)
            flag = "" if out.matches else "   <-- differs"
            bad += not out.matches
            print(f"{s.name:<30} {v.name:<20} {out.verdict:<22} {out.expected:<22} "
                  f"{out.counts.get('operations', 0):>5} {out.counts.get('lost writes', 0):>11}{flag}")
            if outdir is not None:
                href = f"{s.name}--{v.name}.html"
                (outdir / href).write_text(render_html(out, s.concept, _command(s.name, v.name, args.seed)),
                                           encoding="utf-8")
                rows.append((out, href))
    if outdir is not None:
        (outdir / "index.html").write_text(render_index(rows), encoding="utf-8")
        print(f"\nwrote {len(rows)} pages and {outdir / 'index.html'}")
    print(f"\n{'all verdicts as expected' if not bad else f'{bad} verdict(s) differ from the expectation'}")
    return 0 if not bad else 1
