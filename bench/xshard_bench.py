"""Cross-shard transactions vs single-group ones, on the same 3 members (issue 16).

Starts 3 ``conclave serve`` members with ``--shard-split-keys g,n`` (data groups: [.., g), [g, n),
[n, ..)), waits for every group to lead and for the leaders to spread, then runs, one after the
other, for ``--duration`` seconds each, a transfer-shaped txn: compares on the mod_revision of
each key read (as a read-modify-write would), a put on each key:

- ``1 group``: both keys in one group (the plain single-group Txn path, as etcd's);
- ``2 groups``: one key in each of two groups (the cross-shard commit: Begin + 2 Prepares,
  Decide, Resolve);
- ``3 groups``: one key in each of the three groups.

Clients behave like etcd's: one HTTP/2 connection (one grpc.aio channel) per endpoint, the
``--clients`` concurrent callers multiplexed over them, each on its own keys (no conflicts, so
what is measured is the protocol's cost, not contention). Reported: txn/s, p50 and p99 latency,
and errors by kind; then the same txns (2 and 3 keys) against a 3-member etcd 3.4 on the same
machine, where they are single-group (etcd has one group).

    .venv/bin/python bench/xshard_bench.py [--duration 10] [--clients 16] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conclave.server.launcher import ProcessCluster

SPLITS = "g,n"
SHAPES: dict[str, tuple[bytes, ...]] = {
    "1 group": (b"a", b"b"),
    "2 groups": (b"a", b"h"),
    "3 groups": (b"a", b"h", b"p"),
}


def wait_spread(endpoint: str, timeout: float = 30.0) -> dict[str, Any]:
    """Every group led, and no member leading more than ceil(4/3) = 2 of the 4 groups."""
    from collections import Counter

    from conclave.cli.shards import fetch

    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            view = fetch(endpoint, 3.0)
            leaders = [r["leader"] for r in view["groups"]]
            if all(leaders) and max(Counter(leaders).values()) <= 2:
                return view
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the groups' leaders did not spread within {timeout:.0f}s: {view}")


async def run_shape(endpoints: list[str], prefixes: tuple[bytes, ...], clients: int,
                    duration: float) -> dict[str, Any]:
    import grpc

    from conclave.api import pb
    from conclave.api.stubs import rpc

    channels = [grpc.aio.insecure_channel(ep) for ep in endpoints]
    txns = [rpc(ch, "etcdserverpb.KV", "Txn") for ch in channels]
    ranges = [rpc(ch, "etcdserverpb.KV", "Range") for ch in channels]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + duration

    async def client(i: int) -> None:
        txn, rng = txns[i % len(txns)], ranges[i % len(ranges)]
        keys = [p + b"/%03d" % i for p in prefixes]
        mods = {}
        for k in keys:  # what a read-modify-write reads first
            r = await rng(pb.RangeRequest(key=k), timeout=10)
            mods[k] = r.kvs[0].mod_revision if r.kvs else 0
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            req = pb.TxnRequest(
                compare=[pb.Compare(key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=mods[k])
                         for k in keys],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"%d" % n, prev_kv=True))
                         for k in keys],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k)) for k in keys])
            t0 = time.perf_counter()
            try:
                resp = await txn(req, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.05)
                for k in keys:  # learn the revisions again
                    r = await rng(pb.RangeRequest(key=k), timeout=10)
                    mods[k] = r.kvs[0].mod_revision if r.kvs else 0
                continue
            latencies.append(time.perf_counter() - t0)
            if resp.succeeded:
                # each put's mod_revision is its own group's revision at the commit
                for k, op in zip(keys, resp.responses, strict=True):
                    mods[k] = op.response_put.header.revision or resp.header.revision
                if any(op.response_put.header.revision == 0 for op in resp.responses):
                    for k in keys:
                        r = await rng(pb.RangeRequest(key=k), timeout=10)
                        mods[k] = r.kvs[0].mod_revision
            else:
                errors["compare failed"] = errors.get("compare failed", 0) + 1
                for k, op in zip(keys, resp.responses, strict=True):
                    kvs = op.response_range.kvs
                    mods[k] = kvs[0].mod_revision if kvs else 0

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    for ch in channels:
        await ch.close()
    lat = sorted(latencies)
    return {
        "txn_per_s": round(len(lat) / elapsed, 1),
        "ok": len(lat),
        "latency_ms_p50": round(statistics.median(lat) * 1000, 2) if lat else None,
        "latency_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2) if lat else None,
        "errors": errors,
    }


def report(label: str, f: dict[str, Any]) -> None:
    print(f"  {label:16s} {f['txn_per_s']:>8,.1f} txn/s  p50 {f['latency_ms_p50']} ms  "
          f"p99 {f['latency_ms_p99']} ms  errors {f['errors']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per shape (default %(default)s)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent callers (default %(default)s)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--skip-etcd", action="store_true", help="no etcd 3.4 reference rows")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="conclave-xshard-bench-"))
    cluster = ProcessCluster(root / "c", 3, extra_args=["--shard-split-keys", SPLITS], heartbeat_ms=100,
                             election_ms=1000)
    figures: dict[str, Any] = {}
    cluster.start()
    try:
        view = wait_spread(cluster.members[0].endpoint)
        print(f"3 members, --shard-split-keys {SPLITS}; leaders by group: "
              f"{ {r['group']: r['leader'] for r in view['groups']} }", flush=True)
        for name, prefixes in SHAPES.items():
            figures[name] = asyncio.run(run_shape(cluster.endpoints, prefixes, args.clients, args.duration))
            report(name, figures[name])
    finally:
        cluster.stop()
    if shutil.which("etcd") is not None and not args.skip_etcd:
        # the reference: etcd 3.4 is one Raft group, so the same txns on 2 and 3 keys are single-group there
        etcd = ProcessCluster(root / "etcd", 3, kind="etcd", heartbeat_ms=100, election_ms=1000)
        etcd.start()
        try:
            time.sleep(3.0)  # the first election settles
            for prefixes in (SHAPES["1 group"], SHAPES["3 groups"]):  # 2 keys, 3 keys
                label = f"etcd 3.4, {len(prefixes)} keys"
                figures[label] = asyncio.run(run_shape(etcd.endpoints, prefixes, args.clients, args.duration))
                report(label, figures[label])
        finally:
            etcd.stop()
    shutil.rmtree(root, ignore_errors=True)
    base = figures.get("1 group", {}).get("txn_per_s") or 0
    print(f"\n| txn shape ({args.clients} clients, 3 members) | txn/s | vs Conclave 1 group | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, f in figures.items():
        ratio = f"{f['txn_per_s'] / base:.2f}" if base else "-"
        print(f"| {name} | {f['txn_per_s']:,.1f} | {ratio} | {f['latency_ms_p50']} | {f['latency_ms_p99']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
