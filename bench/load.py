"""Measure etcd v3 API load side by side: real etcd 3.4 (started here) and any other endpoints.

    .venv/bin/python bench/load.py --duration 5 --clients 64 --processes 1
    .venv/bin/python bench/load.py --target conclave=127.0.0.1:2379 --ops put,range

Starts a single-member etcd from /usr/bin/etcd on 127.0.0.1 (free ports, temp data dir, removed
afterwards) unless --no-etcd, then runs `conclave bench` (conclave.loadgen) for each operation
against each target and prints the reports (or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from load_etcd import EtcdUnavailable, LocalEtcd

from conclave.loadgen import OPS, LoadConfig, LoadError, parse_endpoints, run_load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="put,range,txn-put", help="comma-separated operations (default %(default)s)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--key-size", type=int, default=8)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--consistency", choices=("l", "s"), default="l")
    p.add_argument("--target", action="append", default=[], metavar="NAME=ENDPOINTS", help="another endpoint set")
    p.add_argument("--no-etcd", action="store_true", help="do not start a local etcd")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        p.error(f"unknown operation(s) {bad}; choose from {OPS}")
    targets: list[tuple[str, tuple[str, ...]]] = []
    for spec in args.target:
        name, _, eps = spec.partition("=")
        if not name or not eps:
            p.error(f"--target expects NAME=host:port[,...], got {spec!r}")
        targets.append((name, parse_endpoints(eps)))

    etcd: LocalEtcd | None = None
    results: list[dict[str, Any]] = []
    try:
        if not args.no_etcd:
            try:
                etcd = LocalEtcd()
                etcd.start()
            except EtcdUnavailable as err:
                print(f"bench/load.py: {err}", file=sys.stderr)
                return 1
            targets.insert(0, (f"etcd ({etcd.version()})", (etcd.endpoint,)))
        if not targets:
            p.error("nothing to measure: give --target or drop --no-etcd")
        for name, endpoints in targets:
            for op in ops:
                cfg = LoadConfig(
                    op=op,
                    endpoints=endpoints,
                    clients=args.clients,
                    conns=args.conns,
                    duration_s=args.duration,
                    key_size=args.key_size,
                    val_size=args.val_size,
                    consistency=args.consistency,
                    processes=args.processes,
                )
                try:
                    report = run_load(cfg)
                except LoadError as err:
                    print(f"{name} {op}: {err}", file=sys.stderr)
                    return 1
                results.append({"target": name, **report.as_dict()})
                if not args.json:
                    print(f"== {name}\n{report.text()}", flush=True)
    finally:
        if etcd is not None:
            etcd.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
