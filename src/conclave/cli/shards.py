"""`conclave shards`: the key ranges of a sharded cluster, their Raft groups, leaders and sizes.

Theory of operation: a sharded member's HTTP router answers ``GET /conclave/shards`` with its view
of every group (``ShardedBackend.shard_table``): the split table as the meta group holds it, and per
group its range, leader, key count, revision and applied raft index. The endpoints are client
URLs serving HTTP: the client port on the rust engine (HTTP/1.1 shares it), else a
``--listen-client-http-urls`` URL. The first endpoint that answers is shown; ``--all`` asks each.
The table is drawn with ``rich``, like ``conclave status``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_ENDPOINT = "127.0.0.1:2379"


def register(sub: Any) -> None:
    p = sub.add_parser("shards", help="the key ranges of a sharded cluster: group, leader, keys, revision",
                       description="Show the shards of a cluster created with `conclave serve --shards K` (or "
                       "--shard-split-keys): each key range, its Raft group, leader, keys, revision and raft index. "
                       "Endpoints are client URLs that serve HTTP (the client port on the rust engine, or a "
                       "--listen-client-http-urls URL).")  # fmt: skip
    p.add_argument("--endpoints", default=argparse.SUPPRESS,
                   help=f"comma-separated host:port list of client HTTP endpoints (default {DEFAULT_ENDPOINT}; "
                   "env CONCLAVE_SHARDS_ENDPOINTS)")  # fmt: skip
    p.add_argument("--all", action="store_true", help="ask every endpoint (each member's own view)")
    p.add_argument("-w", "--write-out", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds (default 5)")
    p.set_defaults(func=run)


def fetch(endpoint: str, timeout: float) -> dict[str, Any]:
    url = endpoint if "://" in endpoint else "http://" + endpoint
    with urllib.request.urlopen(url.rstrip("/") + "/conclave/shards", timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read().decode())
    return data


def _hex(member: int) -> str:
    return f"{member:x}" if member else "-"


def render(view: dict[str, Any], endpoint: str) -> Any:
    from rich.table import Table

    split = view.get("split_table")
    title = f"Conclave shards at {endpoint} (member {_hex(int(view['member']))}; split " + (
        ",".join(split) if split else "not yet in the meta group") + ")"
    table = Table(title=title)
    for col in ("range", "group", "leader", "keys", "revision", "raft index", "raft term"):
        table.add_column(col, justify="right" if col not in ("range", "leader") else "left")
    for row in view["groups"]:
        rng = "(meta)" if row["role"] == "meta" else f"[{row['start'] or '-inf'}, {row['end'] or '+inf'})"
        table.add_row(rng, str(row["group"]), _hex(int(row["leader"])), str(row["keys"]), str(row["revision"]),
                      str(row["raft_index"]), str(row["raft_term"]))  # fmt: skip
    return table


def run(args: argparse.Namespace) -> int:
    raw = getattr(args, "endpoints", None) or os.environ.get("CONCLAVE_SHARDS_ENDPOINTS") or DEFAULT_ENDPOINT
    endpoints = [e.strip() for e in raw.split(",") if e.strip()]
    views: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    for ep in endpoints:
        try:
            views.append((ep, fetch(ep, args.timeout)))
        except urllib.error.HTTPError as exc:
            reason = "not a sharded cluster (started without --shards)" if exc.code == 404 else str(exc)
            errors.append(f"{ep}: {reason}")
            continue
        except (OSError, ValueError) as exc:
            errors.append(f"{ep}: {exc}")
            continue
        if not args.all:
            break
    if not views:
        print("conclave shards: no endpoint answered: " + "; ".join(errors), file=sys.stderr)
        return 1
    if args.write_out == "json":
        print(json.dumps([{"endpoint": ep, **v} for ep, v in views], indent=2))
        return 0
    from rich.console import Console

    console = Console()
    for ep, v in views:
        console.print(render(v, ep))
    for e in errors:
        print(f"conclave shards: {e}", file=sys.stderr)
    return 0
