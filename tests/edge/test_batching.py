"""The loop side of the compiled edge (api/edge_server.py), driven with a stand-in for the Rust queue.

A fake ``Edge`` hands ``EdgeServer`` the events of one drain exactly as the Rust edge would
(OPEN, MSG, HALF_CLOSE per unary call) and records every ``send``: so these tests check, without
sockets, that a drain's KV.Range calls are served as ONE batch behind ONE ReadIndex barrier, that
their answers leave in one send, and that a bad request in a batch fails only itself.
"""

from __future__ import annotations

import asyncio
import socket
import types
from typing import Any

import grpc
import pytest

from conclave.api import edge_server, pb
from conclave.kv import errors as kverr
from tests.api.fake_backend import FakeBackend

pytestmark = pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")

RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"


class FakeEdge:
    """What EdgeServer uses of ``conclave._edge.Edge``: queued events in, batches of outputs out."""

    def __init__(self, addrs: Any, max_msg: int, max_streams: int, workers: int, **tls: Any) -> None:
        assert tls.get("cert_file") is None  # plain listeners: the TLS options are passed, all unset
        self.ports = [0]
        self.r, self.w = socket.socketpair()
        self.events: list[tuple[Any, ...]] = []
        self.sent: list[list[tuple[Any, ...]]] = []

    def fileno(self) -> int:
        return self.r.fileno()

    def drain(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def send(self, batch: list[tuple[Any, ...]]) -> list[int]:
        self.sent.append(list(batch))
        return []

    def stop(self) -> None:
        self.r.close()
        self.w.close()


@pytest.fixture
def fake_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    real = edge_server._edge
    names = [n for n in dir(real) if n.startswith(("EV_", "OUT_"))]
    fake = types.SimpleNamespace(Edge=FakeEdge, **{n: getattr(real, n) for n in names})
    monkeypatch.setattr(edge_server, "_edge", fake)


def unary(sid: int, path: str, message: bytes) -> list[tuple[Any, ...]]:
    ev = edge_server._edge
    return [(ev.EV_OPEN, sid, path, []), (ev.EV_MSG, sid, message, None), (ev.EV_HALF_CLOSE, sid, None, None)]


def outcome(sent: list[list[tuple[Any, ...]]]) -> dict[int, tuple[int, str, bytes | None]]:
    """Per stream: (status code, message, response bytes or None)."""
    ev = edge_server._edge
    got: dict[int, tuple[int, str, bytes | None]] = {}
    body: dict[int, bytes] = {}
    for batch in sent:
        for item in batch:
            if item[1] == ev.OUT_MSG:
                body[item[0]] = item[2]
            elif item[1] == ev.OUT_TRAILERS:
                got[item[0]] = (item[2], item[3], body.get(item[0]))
    return got


async def serve_one_drain(backend: FakeBackend, events: list[tuple[Any, ...]]) -> tuple[Any, list[Any]]:
    server = edge_server.EdgeServer(backend, [("127.0.0.1", 0)])
    edge: FakeEdge = server.edge
    edge.events = events
    tasks_before = len(asyncio.all_tasks())
    server._on_events()
    tasks_made = len(asyncio.all_tasks()) - tasks_before
    for _ in range(20):  # a few loop turns: the batch task runs, then the flush callback
        await asyncio.sleep(0)
    sent = list(edge.sent)
    await server.stop()
    return tasks_made, sent


def test_a_drain_of_linearizable_ranges_is_one_task_one_barrier_one_send(fake_edge: None) -> None:
    backend = FakeBackend()
    backend.store.apply(pb_put(b"a", b"1"), 1)
    seen: list[bool] = []
    plain_range = backend.range

    async def range_seen(req: Any, **kw: Any) -> Any:
        seen.append(req.serializable)
        return await plain_range(req, **kw)

    backend.range = range_seen  # type: ignore[method-assign]
    n = 40
    events: list[tuple[Any, ...]] = []
    for sid in range(1, n + 1):
        events += unary(sid, RANGE, pb.RangeRequest(key=b"a").SerializeToString())
    tasks_made, sent = asyncio.run(serve_one_drain(backend, events))
    assert tasks_made == 1  # one batch task, not one task per request
    assert backend.calls.count("read_barrier") == 1
    assert backend.calls.count("range") == n
    assert seen == [True] * n  # after the batch's barrier, each is read from the local store
    assert len(sent) == 1  # every answer in one Edge.send
    got = outcome(sent)
    assert sorted(got) == list(range(1, n + 1))
    for code, details, body in got.values():
        assert (code, details) == (0, "")
        assert body is not None
        r = pb.RangeResponse.FromString(body)
        assert r.count == 1 and r.kvs[0].value == b"1"


def test_one_bad_request_in_a_batch_fails_only_itself(fake_edge: None) -> None:
    backend = FakeBackend()
    events = unary(1, RANGE, pb.RangeRequest(key=b"a").SerializeToString())
    events += unary(2, RANGE, b"\xff\xff\xff")  # does not parse
    events += unary(3, RANGE, pb.RangeRequest(key=b"a", sort_order=99).SerializeToString())  # no such order
    events += unary(4, RANGE, pb.RangeRequest(key=b"a", serializable=True).SerializeToString())
    events += unary(5, RANGE, pb.RangeRequest(key=b"a").SerializeToString())
    _, sent = asyncio.run(serve_one_drain(backend, events))
    got = outcome(sent)
    assert got[1][0] == got[4][0] == got[5][0] == 0
    assert got[2][0] == grpc.StatusCode.INTERNAL.value[0]
    assert got[2][1].startswith("grpc: error unmarshalling request")
    assert got[3][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert backend.calls.count("read_barrier") == 1


def test_a_failed_barrier_fails_the_linearizable_reads_of_the_batch_only(fake_edge: None) -> None:
    backend = FakeBackend()

    async def no_leader() -> None:
        raise kverr.NoLeader()

    backend.read_barrier = no_leader  # type: ignore[method-assign]
    events = unary(1, RANGE, pb.RangeRequest(key=b"a").SerializeToString())
    events += unary(2, RANGE, pb.RangeRequest(key=b"a", serializable=True).SerializeToString())
    events += unary(3, PUT, pb.PutRequest(key=b"p", value=b"v").SerializeToString())
    _, sent = asyncio.run(serve_one_drain(backend, events))
    got = outcome(sent)
    assert got[1][:2] == (grpc.StatusCode.UNAVAILABLE.value[0], "etcdserver: no leader")
    assert got[2][0] == 0
    assert got[3][0] == 0  # a write of the same drain runs on its own


def test_a_stream_cancelled_while_its_batch_waits_gets_no_answer(fake_edge: None) -> None:
    backend = FakeBackend()
    gate = asyncio.Event()

    async def slow_barrier() -> None:
        await gate.wait()

    backend.read_barrier = slow_barrier  # type: ignore[method-assign]

    async def scenario() -> dict[int, tuple[int, str, bytes | None]]:
        server = edge_server.EdgeServer(backend, [("127.0.0.1", 0)])
        edge: FakeEdge = server.edge
        edge.events = unary(1, RANGE, pb.RangeRequest(key=b"a").SerializeToString()) + unary(
            2, RANGE, pb.RangeRequest(key=b"a").SerializeToString()
        )
        server._on_events()
        await asyncio.sleep(0)
        edge.events = [(edge_server._edge.EV_CANCEL, 1, None, None)]
        server._on_events()
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        got = outcome(edge.sent)
        await server.stop()
        return got

    got = asyncio.run(scenario())
    assert 1 not in got
    assert got[2][0] == 0


def pb_put(key: bytes, value: bytes) -> Any:
    from conclave.kv import types as kv

    return kv.PutRequest(key, value)
