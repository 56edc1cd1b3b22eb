"""Memory per key: the Store in-process, and a real Conclave member next to a real etcd 3.4 member.

    .venv/bin/python bench/mem_bench.py                      # everything, 200,000 keys of 256 B
    .venv/bin/python bench/mem_bench.py --only store --keys 50000
    .venv/bin/python bench/mem_bench.py --only members --seq-keys 20000 --json

Part 1 (``store``): builds a ``Store`` with N keys of ``--value-size`` bytes, with 1 and with 3
revisions per key (each key overwritten twice), and reports bytes per key from tracemalloc
(what Python allocated, net of the payload itself) and the RSS delta of this process.

Part 2 (``members``): starts one single-member ``conclave serve`` (ProcessCluster) and one
single-member etcd 3.4 (same flags), loads N keys of the same size into each with the same
loader (gRPC Put over ONE channel, ``--concurrency`` requests in flight) and reports load time
and the member's RSS (VmRSS of its process) after loading and after a gc settle. Then loads
``--seq-keys`` more keys with ONE sequential client (one request at a time) and reports that
load time too, so the two loaders can be compared at the same data size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from conclave.kv.mvcc import Store
from conclave.kv.types import PutRequest


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def key_of(i: int) -> bytes:
    return b"/bench/key/%08d" % i


def _fill(keys: int, value_size: int, revisions: int) -> Store:
    store = Store()
    index = 0
    for r in range(revisions):
        for i in range(keys):
            index += 1
            # a fresh key and value object per put, as a decoded request carries
            store.apply(PutRequest(key=key_of(i), value=bytes([r % 251]) * value_size), index)
    return store


def store_overhead(keys: int, value_size: int, revisions: int) -> dict[str, Any]:
    """Bytes per key of a Store holding ``keys`` keys with ``revisions`` revisions each.

    Two passes: one under tracemalloc (exact Python allocations), one without it for the RSS
    delta and the apply time (tracemalloc's own bookkeeping would inflate both).
    """
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    store = _fill(keys, value_size, revisions)
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_bytes()
    del store
    gc.collect()
    tracemalloc.start()
    store = _fill(keys, value_size, revisions)
    gc.collect()
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    payload = keys * (len(key_of(0)) + value_size * revisions)
    out = {
        "keys": keys,
        "revisions_per_key": revisions,
        "value_size": value_size,
        "traced_bytes_per_key": round(traced / keys, 1),
        "overhead_bytes_per_key": round((traced - payload) / keys, 1),
        "rss_delta_bytes_per_key": round((rss1 - rss0) / keys, 1),
        "apply_us_per_put": round(elapsed / (keys * revisions) * 1e6, 2),
    }
    del store
    gc.collect()
    return out


# ---------------------------------------------------------------------------------- members


async def _load(endpoint: str, start: int, count: int, value_size: int, concurrency: int) -> float:
    """Put ``count`` keys over one gRPC channel with ``concurrency`` in flight; seconds taken."""
    import grpc

    from conclave.api import pb

    value = b"v" * value_size
    async with grpc.aio.insecure_channel(endpoint) as ch:
        put = ch.unary_unary(
            "/etcdserverpb.KV/Put",
            request_serializer=pb.PutRequest.SerializeToString,
            response_deserializer=pb.PutResponse.FromString,
        )
        next_i = start
        end = start + count

        async def worker() -> None:
            nonlocal next_i
            while next_i < end:
                i = next_i
                next_i += 1
                for attempt in range(20):
                    try:
                        await put(pb.PutRequest(key=key_of(i), value=value), timeout=30)
                        break
                    except grpc.aio.AioRpcError:
                        if attempt == 19:
                            raise
                        await asyncio.sleep(0.2)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        return time.perf_counter() - t0


def _wait_writable(endpoint: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(_load(endpoint, 10**9, 1, 1, 1))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def measure_member(kind: str, keys: int, seq_keys: int, value_size: int, concurrency: int,
                   extra: list[str]) -> dict[str, Any]:
    from conclave.server.launcher import ProcessCluster

    with tempfile.TemporaryDirectory(prefix=f"mem-bench-{kind}-") as root:
        cluster = ProcessCluster(Path(root), size=1, kind=kind, snapshot_count=100_000, extra_args=extra)
        cluster.start()
        try:
            member = cluster.members[0]
            assert member.proc is not None
            pid = member.proc.pid
            _wait_writable(member.endpoint)
            rss_idle = rss_bytes(pid)
            load_s = asyncio.run(_load(member.endpoint, 0, keys, value_size, concurrency))
            rss_loaded = rss_bytes(pid)
            time.sleep(3.0)  # let the member settle (gc, snapshot, WAL buffers)
            rss_settled = rss_bytes(pid)
            seq_s = 0.0
            if seq_keys:
                seq_s = asyncio.run(_load(member.endpoint, keys, seq_keys, value_size, 1))
            rss_final = rss_bytes(pid)
            return {
                "kind": kind,
                "keys": keys,
                "value_size": value_size,
                "concurrency": concurrency,
                "load_s": round(load_s, 1),
                "puts_per_s": round(keys / load_s),
                "rss_idle_mb": round(rss_idle / 2**20, 1),
                "rss_loaded_mb": round(rss_loaded / 2**20, 1),
                "rss_settled_mb": round(rss_settled / 2**20, 1),
                "seq_keys": seq_keys,
                "seq_load_s": round(seq_s, 1),
                "seq_puts_per_s": round(seq_keys / seq_s) if seq_s else 0,
                "rss_final_mb": round(rss_final / 2**20, 1),
            }
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("store", "members", "conclave", "etcd"), help="run one part only")
    p.add_argument("--keys", type=int, default=200_000, help="keys to load (default %(default)s)")
    p.add_argument("--store-keys", type=int, default=0, help="keys for the in-process part (default --keys)")
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=256, help="requests in flight on the one channel")
    p.add_argument("--seq-keys", type=int, default=20_000,
                   help="extra keys loaded by one sequential client after the concurrent load (0: skip)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    results: dict[str, Any] = {}
    if args.only in (None, "store"):
        n = args.store_keys or args.keys
        results["store"] = [store_overhead(n, args.value_size, r) for r in (1, 3)]
        for row in results["store"]:
            if not args.json:
                print(f"store: {row}", flush=True)
    if args.only in (None, "members", "conclave", "etcd"):
        kinds = {"conclave": ["conclave"], "etcd": ["etcd"]}.get(args.only or "", ["conclave", "etcd"])
        results["members"] = []
        for kind in kinds:
            row = measure_member(kind, args.keys, args.seq_keys, args.value_size, args.concurrency, [])
            results["members"].append(row)
            if not args.json:
                print(f"member: {row}", flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
