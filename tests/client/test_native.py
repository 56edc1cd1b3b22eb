"""The native protocol server adapter, in process, over the real kv store (no Raft): framing,
pipelining, typed errors, watches, limits and malformed input."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from api.fake_backend import FakeBackend  # tests/ is on sys.path (rootdir-based import of test packages)

from conclave import AsyncClient
from conclave.api import native
from conclave.client import (
    Compacted,
    InvalidArgument,
    LeaseNotFound,
    ServerError,
    create_revision,
    get_op,
    put_op,
    value,
)
from conclave.client.native import NativeChannel
from conclave.kv import types as kv
from conclave.wire import native as codec


@dataclass
class Cfg:
    listen_native_urls: list[str]
    max_request_bytes: int = 4096


def run(body: Callable[[native.NativeServer, str, Any], Awaitable[None]], backend: Any = None) -> None:
    async def main() -> None:
        b = backend or FakeBackend()
        server = await native.start_native_server(b, Cfg(["http://127.0.0.1:0"]))
        try:
            await asyncio.wait_for(body(server, f"127.0.0.1:{server.ports[0]}", b), 20)
        finally:
            server.close()

    asyncio.run(main())


def test_codec_round_trips_nested_store_values() -> None:
    txn = kv.TxnRequest(
        compare=(kv.Compare(result=kv.CompareResult.GREATER, target=kv.CompareTarget.MOD, key=b"k", mod_revision=3),),
        success=(kv.RequestOp(request_put=kv.PutRequest(b"k", b"v", lease=7)),),
        failure=(kv.RequestOp(request_txn=kv.TxnRequest(success=(kv.RequestOp(request_range=kv.RangeRequest(b"a")),))),),
    )
    raw = msgpack.unpackb(codec.pack_value(txn), raw=False)
    assert codec.unpack_as(kv.TxnRequest, raw) == txn
    with pytest.raises(native.MalformedRequest):
        codec.unpack_as(kv.PutRequest, ["key-as-str", b"v"])
    with pytest.raises(native.MalformedRequest):
        codec.unpack_as(kv.RequestOp, [None, None, None, None])  # oneof with nothing set
    with pytest.raises(native.MalformedRequest):
        codec.unpack_as(kv.RangeRequest, [b"k"] * 20)


def test_kv_calls_and_typed_errors() -> None:
    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        async with AsyncClient([ep], discover=False) as c:
            r = await c.put("a", "1")
            assert r.header.revision == 2 and r.header.cluster_id == backend.cluster_id
            assert await c.get("a") == b"1" and await c.get(b"missing") is None
            t = await c.txn().if_(value("a") == "1").then(put_op("b", "2")).else_(get_op("a")).commit()
            assert t.succeeded and await c.get("b") == b"2"
            t = await c.transaction([create_revision("a") == 0], [put_op("a", "x")], [get_op("a")])
            assert not t.succeeded and t.responses[0].response_range.kvs[0].value == b"1"
            assert [x.key for x in await c.get_prefix("")] == [b"a", b"b"]
            await c.put("a", "3")
            await c.compact(3)
            with pytest.raises(Compacted):
                await c.range("a", revision=2)
            with pytest.raises(LeaseNotFound):
                await c.lease_keep_alive(12345)
            with pytest.raises(InvalidArgument):
                await c.put("", "no key")
            lease = await c.lease(30)
            await c.put("eph", "x", lease=lease.id)
            assert (await lease.time_to_live(keys=True)).keys == (b"eph",)
            await lease.revoke()
            assert await c.get("eph") is None
            assert (await c.status()).member_id == backend.member_id

    run(body)


def test_pipelined_requests_are_answered_out_of_order() -> None:
    class SlowFirst(FakeBackend):
        async def range(self, req: kv.RangeRequest) -> kv.RangeResponse:
            if req.key == b"slow":
                await asyncio.sleep(0.2)
            return await super().range(req)

    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        ch = await NativeChannel.connect(ep, 2)
        order: list[bytes] = []

        async def get(key: bytes) -> None:
            await ch.call("range", [kv.RangeRequest(key)])
            order.append(key)

        await asyncio.gather(get(b"slow"), *(get(b"fast%d" % i) for i in range(50)))
        assert order[-1] == b"slow" and len(order) == 51
        ch.close()

    run(body, SlowFirst())


def test_in_flight_limit_stops_reading_instead_of_queueing() -> None:
    gate = asyncio.Event()
    seen_max = 0

    class Blocking(FakeBackend):
        async def range(self, req: kv.RangeRequest) -> kv.RangeResponse:
            await gate.wait()
            return await super().range(req)

    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        nonlocal seen_max
        ch = await NativeChannel.connect(ep, 2)
        total = native.IN_FLIGHT_MAX + 300
        calls = [asyncio.ensure_future(ch.call("range", [kv.RangeRequest(b"k")])) for _ in range(total)]
        for _ in range(100):
            await asyncio.sleep(0.01)
            seen_max = max(seen_max, *(c.in_flight for c in server.connections))
        conn = next(iter(server.connections))
        assert conn.reading_paused and seen_max == native.IN_FLIGHT_MAX
        gate.set()
        results = await asyncio.gather(*calls)
        assert len(results) == native.IN_FLIGHT_MAX + 300
        ch.close()

    run(body, Blocking())


def _raw(ep: str) -> socket.socket:
    host, port = ep.split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


async def _closed_by_server(s: socket.socket) -> bool:
    def read() -> bytes:
        try:
            return s.recv(1024)
        except ConnectionResetError:
            return b""

    return await asyncio.to_thread(read) == b""


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # not msgpack
        struct.pack(">I", 2) + msgpack.packb({"a": 1}),  # not an envelope (length matches below)
        struct.pack(">I", 10_000_000),  # over the frame limit
        native.FRAME_HEADER.pack(4) + msgpack.packb(["x", "put", []]),  # request id not an int
    ],
)
def test_malformed_frames_close_only_that_connection(frame: bytes, caplog: pytest.LogCaptureFixture) -> None:
    if frame.startswith(struct.pack(">I", 2)):
        body = msgpack.packb({"a": 1})
        frame = struct.pack(">I", len(body)) + body

    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        async with AsyncClient([ep], discover=False) as good:
            await good.put("k", "v")
            bad = _raw(ep)
            bad.sendall(frame)
            assert await _closed_by_server(bad)
            bad.close()
            assert await good.get("k") == b"v"  # the other connection is unaffected

    with caplog.at_level("WARNING", logger="conclave.native"):
        run(body)
    assert "closing connection" in caplog.text


def test_unknown_method_and_bad_arguments_get_error_answers() -> None:
    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        ch = await NativeChannel.connect(ep, 2)
        with pytest.raises(ServerError, match="unknown native method"):
            await ch.call("drop_database", [])
        with pytest.raises(InvalidArgument, match="malformed native request"):
            await ch.call("put", [["key-as-str"]])
        assert (await ch.call("range", [kv.RangeRequest(b"k")]))  # still usable
        assert await ch.call("ping", []) == [True, backend.current_revision()]
        backend.leader = False
        assert (await ch.call("ping", []))[0] is False
        ch.close()

    run(body)


def test_watch_streams_events_and_cancel_stops_them() -> None:
    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        async with AsyncClient([ep], discover=False) as c:
            await c.put("w/0", "before")
            w = c.watch("w/", prefix=True, start_revision=1, prev_kv=True)
            await w.start()
            await c.put("w/1", "a")
            await c.delete("w/0")
            got = [await w.next(5) for _ in range(3)]
            assert [(e.type, e.kv.key) for e in got if e] == [
                (kv.EventType.PUT, b"w/0"), (kv.EventType.PUT, b"w/1"), (kv.EventType.DELETE, b"w/0")]
            w.close()
            async with c.watch("w/", prefix=True, start_revision=1) as again:  # async iterator, from history
                keys = []
                async for ev in again:
                    keys.append(ev.kv.key)
                    if len(keys) == 3:
                        break
            assert keys == [b"w/0", b"w/1", b"w/0"]
            await asyncio.sleep(0.05)
            conn = next(iter(server.connections))
            assert not conn.streams and backend.watcher_count() == 0
            await c.compact((await c.put("w/2", "b")).header.revision)
            old = c.watch("w/", prefix=True, start_revision=1)
            with pytest.raises(Compacted):
                await old.next(5)

    run(body)


def test_retries_only_where_safe() -> None:
    """A write refused before proposing moves to another member; a write whose answer is lost
    raises OutcomeUnknown; a read whose answer is lost is retried."""
    from conclave.client import OutcomeUnknown
    from conclave.kv import errors as kverr

    class NoLeaderHere(FakeBackend):
        async def put(self, req: kv.PutRequest) -> kv.PutResponse:
            raise kverr.NoLeader()

    class Hangs(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.entered = asyncio.Event()
            self.range_calls = 0

        async def put(self, req: kv.PutRequest) -> kv.PutResponse:
            self.entered.set()
            await asyncio.sleep(3600)
            raise AssertionError

        async def range(self, req: kv.RangeRequest) -> kv.RangeResponse:
            self.range_calls += 1
            if self.range_calls == 1:
                self.entered.set()
                await asyncio.sleep(3600)
            return await super().range(req)

    async def main() -> None:
        refusing, good, hanging = NoLeaderHere(), FakeBackend(), Hangs()
        servers = [await native.start_native_server(b, Cfg(["http://127.0.0.1:0"])) for b in (refusing, good, hanging)]
        eps = [f"127.0.0.1:{s.ports[0]}" for s in servers]
        try:
            async with AsyncClient([eps[0], eps[1]], discover=False) as c:
                await c.put("k", "v")  # NoLeader on the first member: safely sent to the second
                assert good.store.revision == 2 and refusing.store.revision == 1
            async with AsyncClient([eps[2]], discover=False) as c:
                put = asyncio.ensure_future(c.put("k", "v"))
                await hanging.entered.wait()
                for conn in list(servers[2].connections):
                    conn.transport.abort()  # the answer is lost after the request left
                with pytest.raises(OutcomeUnknown):
                    await put
            async with AsyncClient([eps[2]], discover=False) as c:
                hanging.entered.clear()
                get = asyncio.ensure_future(c.get("k"))
                await hanging.entered.wait()
                for conn in list(servers[2].connections):
                    conn.transport.abort()
                assert await get is None  # retried on a new connection
                assert hanging.range_calls == 2
        finally:
            for s in servers:
                s.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_moving_to_another_member_does_not_cut_requests_in_flight() -> None:
    from conclave.kv import errors as kverr

    class Refuses(FakeBackend):
        async def put(self, req: kv.PutRequest) -> kv.PutResponse:
            raise kverr.NoLeader()

        async def range(self, req: kv.RangeRequest) -> kv.RangeResponse:
            await asyncio.sleep(0.3)
            return await super().range(req)

    async def main() -> None:
        servers = [await native.start_native_server(b, Cfg(["http://127.0.0.1:0"])) for b in (Refuses(), FakeBackend())]
        eps = [f"127.0.0.1:{s.ports[0]}" for s in servers]
        try:
            async with AsyncClient(eps, discover=False) as c:
                slow = asyncio.ensure_future(c.get("k"))
                await asyncio.sleep(0.05)
                await c.put("k", "v")  # refused by the first member, applied by the second
                assert await slow is None  # the read in flight on the first member still completes
                assert c.endpoint == eps[1]
        finally:
            for s in servers:
                s.close()

    asyncio.run(asyncio.wait_for(main(), 30))


class _FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        pass


def test_a_peer_that_does_not_read_its_answers_is_not_read_either() -> None:
    async def main() -> None:
        server = native.NativeServer(FakeBackend(), 4096)
        conn = native.NativeConnection(server)
        transport = _FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        frames = b"".join(native.pack_frame([i, "no_such_method", []]) for i in range(10))
        conn.pause_writing()  # the socket's send buffer is full
        assert not transport.reading
        conn.data_received(frames)
        await asyncio.sleep(0.01)
        assert transport.written == [] and len(conn.buffer) == len(frames)  # nothing taken on
        conn.resume_writing()
        await asyncio.sleep(0.01)
        assert transport.reading and conn.buffer == bytearray()
        assert b"".join(transport.written).count(b"unknown native method") == 10

    asyncio.run(main())


def test_keep_alive_stream_pushes_ttls_until_the_lease_is_gone() -> None:
    async def body(server: native.NativeServer, ep: str, backend: Any) -> None:
        async with AsyncClient([ep], discover=False) as c:
            lease = await c.lease(30)
            ch = await NativeChannel.connect(ep, 2)
            items: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
            rid, first = await ch.open_stream("lease_keep_alive_stream", [lease.id, 50],
                                              lambda item, exc: items.put_nowait((item, exc)))
            assert first is None
            assert [await asyncio.wait_for(items.get(), 5) for _ in range(2)] == [(30, None), (30, None)]
            await lease.revoke()
            while True:
                _, exc = await asyncio.wait_for(items.get(), 5)
                if exc is not None:
                    break
            assert isinstance(exc, LeaseNotFound) and all(not conn.streams for conn in server.connections)
            other = await c.lease(30)
            rid, _ = await ch.open_stream("lease_keep_alive_stream", [other.id, 50], lambda item, exc: None)
            ch.cancel_stream(rid)
            await asyncio.sleep(0.1)
            assert all(not conn.streams for conn in server.connections)
            ch.close()

    run(body)


def test_a_watch_leaves_a_member_that_knows_no_leader() -> None:
    async def main() -> None:
        cut_off, healthy = FakeBackend(), FakeBackend()
        servers = [await native.start_native_server(b, Cfg(["http://127.0.0.1:0"])) for b in (cut_off, healthy)]
        eps = [f"127.0.0.1:{s.ports[0]}" for s in servers]
        try:
            async with AsyncClient(eps, discover=False) as c:
                w = c.watch("k")
                await w.start()
                assert c.endpoint == eps[0]
                cut_off.leader = False  # e.g. on the minority side of a partition
                await healthy.put(kv.PutRequest(b"k", b"v"))  # revision 2 elsewhere
                ev = await w.next(timeout=10)
                assert ev is not None and ev.kv.value == b"v" and c.endpoint == eps[1]
                w.close()
        finally:
            for s in servers:
                s.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_random_bytes_never_raise_out_of_the_connection() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
    def check(chunks: list[bytes], framed: bool) -> None:
        async def main() -> None:
            server = native.NativeServer(FakeBackend(), 4096)
            conn = native.NativeConnection(server)
            conn.connection_made(_FakeTransport())  # type: ignore[arg-type]
            for chunk in chunks:  # garbage, or garbage wrapped in well-formed length prefixes
                conn.data_received(native.FRAME_HEADER.pack(len(chunk)) + chunk if framed else chunk)
            await asyncio.sleep(0)
            for task in list(conn.tasks):
                task.cancel()

        asyncio.run(main())

    check()
