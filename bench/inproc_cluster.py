"""What the server costs without any client protocol: three members in ONE process.

Three `Node`s with real peer TCP on 127.0.0.1 and real WALs (fsync on) in temporary dirs,
driven through `NodeBackend.put` directly (no gRPC, no native framing): whole-cluster CPU per
put and puts/s.

    .venv/bin/python bench/inproc_cluster.py [--puts 60000] [--in-flight 256]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time

from conclave.cli.runner import GC_THRESHOLDS, _gc_freezer
from conclave.kv import types as kv
from conclave.server.backend import NodeBackend
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import Node


async def run(puts: int, in_flight: int) -> None:
    root = tempfile.mkdtemp(prefix="conclave-inproc-")
    ports = free_ports(6)
    cluster = {f"n{i}": [f"http://127.0.0.1:{ports[2 * i + 1]}"] for i in range(3)}
    freezer = asyncio.ensure_future(_gc_freezer())  # as `conclave serve` runs
    nodes = []
    for i in range(3):
        cfg = ServerConfig(name=f"n{i}", data_dir=f"{root}/n{i}",
                           listen_client_urls=[f"http://127.0.0.1:{ports[2 * i]}"],
                           listen_peer_urls=cluster[f"n{i}"], initial_cluster=cluster)
        cfg.validate()
        node = Node(cfg)
        await node.start()
        nodes.append(node)
    try:
        for _ in range(200):
            if all(n.has_leader() for n in nodes):
                break
            await asyncio.sleep(0.05)
        leader = next(n for n in nodes if n.raft.leader_id == n.member_id)
        backend = NodeBackend(leader)
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with gate:
                await backend.put(kv.PutRequest(key=b"k%d" % (i % 10_000), value=b"v" * 256))

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(puts)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{puts} puts, {in_flight} in flight: {puts / wall:,.0f} puts/s, "
              f"{1e6 * cpu / puts:.0f} us of CPU per put for the whole 3-member cluster")
    finally:
        freezer.cancel()
        for n in nodes:
            await n.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--puts", type=int, default=60_000)
    ap.add_argument("--in-flight", type=int, default=256)
    args = ap.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)  # as `conclave serve` runs
    asyncio.run(run(args.puts, args.in_flight))
    return 0


if __name__ == "__main__":
    sys.exit(main())
