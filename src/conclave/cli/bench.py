"""`conclave bench`: a load generator over the etcd v3 gRPC API (measures Conclave and etcd alike)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="load-test Conclave or etcd over the etcd v3 API, or Conclave over its native protocol",
        description="Closed-loop load over the etcd v3 gRPC API: N concurrent clients over C connections, "
        "spread over P worker processes so the generator is not the bottleneck. Reports ops/s, "
        "p50/p90/p99 latency and the generator's own CPU use (user+sys per op and per process).",
    )
    p.add_argument("op", choices=("put", "range", "txn-put"), help="operation to issue")
    p.add_argument("--endpoints", default="127.0.0.1:2379", help="comma-separated host:port list (default %(default)s)")
    p.add_argument("--clients", type=int, default=64, help="concurrent requests in flight in total (default 64)")
    p.add_argument("--conns", type=int, default=1, help="gRPC connections in total (default 1)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--key-size", type=int, default=8, help="key size in bytes (default 8)")
    p.add_argument("--val-size", type=int, default=256, help="value size in bytes (default 256)")
    p.add_argument("--key-space", type=int, default=100_000, help="number of distinct keys (default 100000)")
    p.add_argument(
        "--spread-keys", action="store_true",
        help="start each key with a character of 0-9A-Za-z chosen by the key's number, so the keys fall evenly "
        "over the shards of a `conclave serve --shards K` cluster (whose split keys come from that alphabet); "
        "without it every key starts with 'k' or a hex digit and most land in one shard",
    )
    p.add_argument(
        "--consistency", choices=("l", "s"), default="l", help="range reads: l=linearizable (default), s=serializable"
    )
    p.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed for key choice (default 1)")
    p.add_argument(
        "--protocol", choices=("grpc", "native"), default="grpc",
        help="grpc: the etcd v3 API (default; measures etcd too); native: Conclave's own protocol "
        "(--endpoints are then native ports, e.g. 127.0.0.1:2381; --conns = pipelined connections)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conclave.loadgen import LoadConfig, LoadError, parse_endpoints, run_load

    cfg = LoadConfig(
        op=args.op,
        endpoints=parse_endpoints(args.endpoints),
        clients=args.clients,
        conns=args.conns,
        duration_s=args.duration,
        key_size=args.key_size,
        val_size=args.val_size,
        key_space=args.key_space,
        consistency=args.consistency,
        processes=args.processes,
        seed=args.seed,
        protocol=args.protocol,
        spread_keys=args.spread_keys,
    )
    try:
        report = run_load(cfg)
    except LoadError as err:
        print(f"conclave bench: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0 if report.ops > 0 else 1
