"""The Python side of the compiled edge alone: CPU per request of api/edge_server.py + the handlers.

In process, no sockets, no Raft: a stand-in for the Rust queue hands ``EdgeServer`` drains of N
unary calls (OPEN, MSG, HALF_CLOSE each, as the Rust edge queues them) and takes its batches of
answers; the backend is the in-memory fake of the API tests (tests/api/fake_backend.py). So the
figure is what the loop side costs per request (event dispatch, decoding, the shared handlers and
``convert`` mapping, encoding, the answers' batches) plus the fake store: the part of a member's
CPU per request that the edge's Python code owns.

    .venv/bin/python bench/edge_loop_bench.py [--batch 64] [--requests 20000]

To compare with another tree: ``PYTHONPATH=/path/to/other/src .venv/bin/python bench/edge_loop_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.api.fake_backend

from conclave.api import edge_server, pb
from conclave.kv import types as kv
from tests.api.fake_backend import FakeBackend


class BarrierBackend(FakeBackend):
    """The fake store behind a read barrier that costs what ``Node.read_barrier`` costs per call:
    a future per read, queued, resolved for the whole queue in one later loop turn, awaited under
    the request timeout (``asyncio.wait_for``); linearizable ranges take it, as NodeBackend's do."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[asyncio.Future[None]] = []

    def _release(self) -> None:
        queued, self.queued = self.queued, []
        for f in queued:
            if not f.done():
                f.set_result(None)

    async def read_barrier(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.queued:
            asyncio.get_running_loop().call_soon(self._release)
        self.queued.append(fut)
        await asyncio.wait_for(fut, 5.0)

    async def range(self, req: Any) -> Any:
        if not req.serializable:
            await self.read_barrier()
        return await super().range(req)


class LoopEdge:
    def __init__(self, *args: Any) -> None:
        self.ports = [0]
        self.r, self.w = socket.socketpair()
        self.events: list[tuple[Any, ...]] = []
        self.answered = 0

    def fileno(self) -> int:
        return self.r.fileno()

    def drain(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def send(self, batch: list[tuple[Any, ...]]) -> list[int]:
        trailers = edge_server._edge.OUT_TRAILERS
        self.answered += sum(1 for item in batch if item[1] == trailers)
        return []

    def stop(self) -> None:
        self.r.close()
        self.w.close()


async def run(op: str, batch: int, total: int) -> float:
    backend = BarrierBackend()
    for i in range(1000):
        await backend.put(kv.PutRequest(b"k%d" % i, b"v" * 256))
    server = edge_server.EdgeServer(backend, [("127.0.0.1", 0)])
    edge: LoopEdge = server.edge
    ev = edge_server._edge
    if op == "put":
        path = "/etcdserverpb.KV/Put"
        messages = [pb.PutRequest(key=b"k%d" % (i % 1000), value=b"v" * 256).SerializeToString() for i in range(batch)]
    else:
        path = "/etcdserverpb.KV/Range"
        messages = [pb.RangeRequest(key=b"k%d" % (i % 1000)).SerializeToString() for i in range(batch)]
    sid = 1
    done = 0
    t0 = time.process_time()
    while done < total:
        events = []
        for m in messages:
            events += [(ev.EV_OPEN, sid, path, []), (ev.EV_MSG, sid, m, None), (ev.EV_HALF_CLOSE, sid, None, None)]
            sid += 1
        edge.events = events
        want = edge.answered + batch
        server._on_events()
        while edge.answered < want:
            await asyncio.sleep(0)
        done += batch
    spent = time.process_time() - t0
    await server.stop()
    return 1e6 * spent / done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="unary calls per drain (default 64)")
    ap.add_argument("--requests", type=int, default=20_000, help="requests per figure (default 20000)")
    args = ap.parse_args(argv)
    if not edge_server.available():
        print(f"the compiled edge is not built ({edge_server.IMPORT_ERROR}): run `make edge`", file=sys.stderr)
        return 2
    real = edge_server._edge
    names = {n: getattr(real, n) for n in dir(real) if n.startswith(("EV_", "OUT_"))}
    edge_server._edge = types.SimpleNamespace(Edge=LoopEdge, **names)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(f"| loop side, {args.batch} calls per drain | CPU per request |")
    print("|---|---:|")
    for op in ("put", "range-l"):
        us = min(runner(run(op, args.batch, args.requests)) for _ in range(3))
        print(f"| {op} | {us:.1f} us |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
