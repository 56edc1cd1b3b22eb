"""HTTP/1.1 on the compiled edge's client port, through the JSON gateway: a client that goes away
is reported to Python (its watch is released), a chunked request body reaches a streaming route
as it arrives (watch create, then cancel, in one open body), and the handlers see each client's
address as grpc names a peer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.api import edge_server, gateway, pb
from conclave.api.edge_server import EdgeServer, start_edge_server
from conclave.api.grpc_server import service_handler
from conclave.api.http import HttpRouter, peer_of, start_http_server
from conclave.kv import types as kv
from tests.api.fake_backend import FakeBackend

from .tls_support import make_pki

pytestmark = pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")

LIMIT = 1024 + 512 * 1024  # --max-request-bytes 1024 plus the 512 KiB overhead
TIMEOUT_S = 10.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def until(cond: Callable[[], bool], timeout: float = TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


async def with_edge(
    body: Callable[[FakeBackend, EdgeServer], Awaitable[None]],
    routes: Callable[[FakeBackend], HttpRouter] = gateway.gateway_router,
) -> None:
    backend = FakeBackend()
    server = await start_edge_server(backend, "127.0.0.1", 0, max_request_bytes=1024, http_handler=routes(backend))
    try:
        await asyncio.wait_for(body(backend, server), 60)
    finally:
        await server.stop()


class Client:
    """One raw HTTP/1.1 connection: writes what the test says, reads a chunked answer piece by piece."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_chunk(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        await self.send(b"%x\r\n%s\r\n" % (len(data), data))

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
        lines = raw.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        return status, headers

    async def chunk(self) -> bytes:
        size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), TIMEOUT_S)).split(b";")[0], 16)
        data = await asyncio.wait_for(self.reader.readexactly(size + 2), TIMEOUT_S)
        return data[:-2]

    async def result(self) -> dict[str, Any]:
        got: dict[str, Any] = json.loads(await self.chunk())
        return got["result"]

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a client that is killed."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()


WATCH_HEAD = b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


async def open_watch(port: int, extra: bytes = b"") -> Client:
    """A gateway watch on ``foo`` with a Content-Length body, read up to its created response."""
    c = await Client.connect(port)
    body = json.dumps({"create_request": {"key": b64("foo")}}).encode()
    await c.send(WATCH_HEAD + b"Content-Length: %d\r\n\r\n%s%s" % (len(body), body, extra))
    status, headers = await c.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert (await c.result())["created"] is True
    return c


async def put(backend: FakeBackend, key: str, value: str) -> None:
    await backend.put(kv.PutRequest(key=key.encode(), value=value.encode()))


# ----------------------------------------------------------------------- a client that goes away


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_a_gateway_watch_is_reported_and_its_watch_released(how: str) -> None:
    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        c = await open_watch(server.port)
        assert backend.watcher_count() == 1 and len(server.http) == 1
        task = next(iter(server.http.values())).task
        assert task is not None and not task.done()
        if how == "reset":
            c.reset()
        else:
            c.writer.close()  # a FIN; no event is pending, so no write will fail
        started = time.monotonic()
        assert await until(lambda: backend.watcher_count() == 0 and not server.http), "the watch outlived its client"
        took = time.monotonic() - started
        assert task.cancelled(), "the producer task was not cancelled"
        assert took < 2.0, took

    asyncio.run(with_edge(go))


def test_a_failed_write_is_reported_when_the_socket_is_not_read() -> None:
    """The edge stops reading a connection whose unread input fills its buffer (64 KiB); a client
    that is gone then shows only when a write to it fails, and that too cancels the producer."""

    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        c = await open_watch(server.port, extra=b"x" * (200 * 1024))  # pipelined bytes nobody reads yet
        task = next(iter(server.http.values())).task
        assert task is not None
        c.reset()
        await asyncio.sleep(0.3)
        assert backend.watcher_count() == 1, "the edge read past its bound: this test shows nothing"
        for i in range(20):  # events to write: the first writes fail on the reset connection
            await put(backend, "foo", f"v{i}")
            if await until(lambda: backend.watcher_count() == 0, 0.5):
                break
        assert backend.watcher_count() == 0 and not server.http and task.cancelled()

    asyncio.run(with_edge(go))


# -------------------------------------------------------------------- a request body kept open


def test_a_watch_body_kept_open_gets_created_events_and_cancel_on_the_edge_port() -> None:
    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        c = await Client.connect(server.port)
        await c.send(WATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        await c.send_chunk({"create_request": {"key": b64("foo")}})
        status, _ = await c.head()
        assert status == 200
        created = await c.result()
        assert created["created"] is True and created.get("watch_id", "0") == "0"
        await put(backend, "foo", "bar")
        event = await c.result()
        assert [(unb(e["kv"]["key"]), unb(e["kv"]["value"])) for e in event["events"]] == [("foo", "bar")]
        # A second create in the same body, split across two chunks mid-object.
        text = json.dumps({"create_request": {"key": b64("zoo")}}).encode()
        await c.send(b"%x\r\n%s\r\n" % (7, text[:7]))
        await asyncio.sleep(0.05)
        await c.send(b"%x\r\n%s\r\n" % (len(text) - 7, text[7:]))
        second = await c.result()
        assert second["created"] is True and second["watch_id"] == "1"
        assert backend.watcher_count() == 2
        await c.send_chunk({"cancel_request": {"watch_id": "0"}})
        canceled = await c.result()
        assert canceled["canceled"] is True and canceled.get("watch_id", "0") == "0"
        assert await until(lambda: backend.watcher_count() == 1)
        await c.send(b"0\r\n\r\n")  # the body's end half-closes: the remaining watch runs on
        await put(backend, "zoo", "z")
        event = await c.result()
        assert event["watch_id"] == "1" and unb(event["events"][0]["kv"]["value"]) == "z"
        c.writer.close()
        assert await until(lambda: backend.watcher_count() == 0 and not server.http)

    asyncio.run(with_edge(go))


def unb(text: str) -> str:
    return base64.b64decode(text).decode()


def test_a_keepalive_body_kept_open_is_answered_per_ping_on_the_edge_port() -> None:
    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        lease = await backend.lease_grant(kv.LeaseGrantRequest(ttl=60))
        c = await Client.connect(server.port)
        await c.send(b"POST /v3/lease/keepalive HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(3):  # each ping answered while the body stays open
            await c.send_chunk({"ID": str(lease.id)})
            if i == 0:
                assert (await c.head())[0] == 200
            got = await c.result()
            assert got["ID"] == str(lease.id) and got["TTL"] == "60"
        await c.send(b"0\r\n\r\n")
        assert await asyncio.wait_for(c.chunk(), TIMEOUT_S) == b""  # the stream ends with the body
        c.writer.close()

    asyncio.run(with_edge(go))


def test_a_streamed_body_over_the_limit_is_413_before_an_answer_and_a_close_after() -> None:
    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        c = await Client.connect(server.port)
        await c.send(WATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % (LIMIT + 1))
        status, _ = await c.head()
        assert status == 413
        c.writer.close()
        # After the created answer: the chunk that passes the limit ends the connection and the watch.
        c = await Client.connect(server.port)
        await c.send(WATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        await c.send_chunk({"create_request": {"key": b64("foo")}})
        assert (await c.head())[0] == 200 and (await c.result())["created"] is True
        filler = b" " * (64 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(LIMIT // len(filler) + 2):
                await c.send(b"%x\r\n%s\r\n" % (len(filler), filler))
        assert await until(lambda: backend.watcher_count() == 0 and not server.http)
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread: a reset
            assert await asyncio.wait_for(c.reader.read(), TIMEOUT_S) == b""  # or a close; no more chunks
        c.writer.close()

    asyncio.run(with_edge(go))


def test_an_ordinary_route_still_gets_a_chunked_body_whole() -> None:
    seen: list[Any] = []

    async def echo(method: str, path: str, headers: list[tuple[str, str]], body: Any) -> Any:
        seen.append(body)
        return 200, [], bytes(body)

    router = HttpRouter()
    router.add("/echo", echo)

    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        c = await Client.connect(server.port)
        await c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.1)
        assert not seen  # not handed over before it is complete
        await c.send(b"6\r\n world\r\n0\r\n\r\n")
        status, headers = await c.head()
        assert status == 200 and await c.reader.readexactly(int(headers["content-length"])) == b"hello world"
        assert seen == [b"hello world"]
        c.writer.close()

    asyncio.run(with_edge(go, lambda _: router))


# ---------------------------------------------------------------------------------- the peer


async def _peer_echo(method: str, path: str, headers: list[tuple[str, str]], body: Any) -> Any:
    return 200, [], peer_of(headers).encode()


@pytest.mark.parametrize("where", ["edge", "standalone"])
def test_http_handlers_see_the_client_address_as_grpc_names_it(where: str) -> None:
    router = HttpRouter()
    router.add("/peer", _peer_echo)

    async def check(port: int) -> None:
        for _ in range(2):  # two connections: two ports, each seen as itself
            c = await Client.connect(port)
            await c.send(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers = await c.head()
            body = await c.reader.readexactly(int(headers["content-length"]))
            host, port_ = c.writer.get_extra_info("sockname")[:2]
            assert status == 200 and body.decode() == f"ipv4:{host}:{port_}"
            c.writer.close()

    async def on_edge(backend: FakeBackend, server: EdgeServer) -> None:
        await check(server.port)

    async def standalone() -> None:
        server = await start_http_server(router, [("127.0.0.1", 0)])
        try:
            await check(server.port)
        finally:
            await server.stop()

    asyncio.run(with_edge(on_edge, lambda _: router) if where == "edge" else standalone())


def test_the_gateway_and_grpc_calls_on_the_edge_see_the_peer_in_their_context() -> None:
    """EdgeContext.peer() (what a per-source limit reads): the client's ip:port, not one name for all."""

    async def leader(request: Any, context: Any) -> Any:
        return pb.LeaderResponse(kv=pb.KeyValue(key=b"peer", value=context.peer().encode()))

    handlers = [service_handler("v3electionpb.Election", {"Leader": leader})]

    async def go() -> None:
        backend = FakeBackend()
        server = await start_edge_server(
            backend, "127.0.0.1", 0, http_handler=gateway.gateway_router(backend, handlers)
        )
        try:
            server.methods.update(edge_server.method_table(handlers))  # gRPC on the same port
            c = await Client.connect(server.port)
            body = json.dumps({"name": b64("e")}).encode()
            await c.send(
                b"POST /v3/election/leader HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            status, headers = await c.head()
            answer = json.loads(await c.reader.readexactly(int(headers["content-length"])))
            host, port = c.writer.get_extra_info("sockname")[:2]
            assert status == 200 and unb(answer["kv"]["value"]) == f"ipv4:{host}:{port}"
            c.writer.close()
            async with grpc.aio.insecure_channel(server.endpoint) as ch:
                call = ch.unary_unary(
                    "/v3electionpb.Election/Leader",
                    request_serializer=pb.LeaderRequest.SerializeToString,
                    response_deserializer=pb.LeaderResponse.FromString,
                )
                resp = await call(pb.LeaderRequest(name=b"e"), timeout=TIMEOUT_S)
            peer = resp.kv.value.decode()
            assert re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", peer) and peer != f"ipv4:127.0.0.1:{server.port}", peer
        finally:
            await server.stop()

    asyncio.run(go())


# ------------------------------------------------------------------- gRPC streams, for comparison


def test_a_grpc_watch_whose_client_goes_away_is_released_too() -> None:
    """gRPC streams already report a client that leaves (the h2 connection's end resets them)."""

    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        ch = grpc.aio.insecure_channel(server.endpoint)
        watch = ch.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchResponse.FromString,
        )

        async def requests() -> AsyncIterator[Any]:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"foo"))
            await asyncio.sleep(3600)

        call = watch(requests())
        first = await asyncio.wait_for(call.read(), TIMEOUT_S)
        assert first.created and backend.watcher_count() == 1
        await ch.close(grace=None)
        assert await until(lambda: backend.watcher_count() == 0 and not server.calls)

    asyncio.run(with_edge(go))


# ------------------------------------------------------------------- a client that half-closes


def test_a_client_that_half_closes_gets_a_one_shot_answer_but_no_stream() -> None:
    """Its end of input before the answer: a complete answer is still written (then the close);
    a streamed one ends after its head, as Go's server cancels such a request."""

    def routes(backend: FakeBackend) -> HttpRouter:
        r = gateway.gateway_router(backend)
        r.add("/peer", _peer_echo)
        return r

    async def go(backend: FakeBackend, server: EdgeServer) -> None:
        c = await Client.connect(server.port)
        await c.send(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
        c.writer.write_eof()
        status, headers = await c.head()
        assert status == 200 and headers["connection"] == "close"
        assert (await c.reader.readexactly(int(headers["content-length"]))).startswith(b"ipv4:127.0.0.1:")
        assert await asyncio.wait_for(c.reader.read(), TIMEOUT_S) == b""
        c.writer.close()
        c = await Client.connect(server.port)
        body = json.dumps({"create_request": {"key": b64("foo")}}).encode()
        await c.send(WATCH_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        c.writer.write_eof()
        assert (await c.head())[0] == 200  # the watch was created, its head written...
        assert await asyncio.wait_for(c.reader.read(), TIMEOUT_S) == b""  # ...and nothing after it
        assert await until(lambda: backend.watcher_count() == 0 and not server.http)
        c.writer.close()

    asyncio.run(with_edge(go, routes))


# ----------------------------------------------------------------------------------- over TLS


def test_over_tls_a_body_kept_open_streams_and_a_client_that_leaves_is_reported(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def go() -> None:
        backend = FakeBackend()
        server = await start_edge_server(
            backend, "127.0.0.1", 0, http_handler=gateway.gateway_router(backend),
            cert_file=str(pki.server_cert), key_file=str(pki.server_key),
        )  # fmt: skip
        try:
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            ctx.set_alpn_protocols(["http/1.1"])
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
            c = Client(reader, writer)
            await c.send(WATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            await c.send_chunk({"create_request": {"key": b64("foo")}})
            assert (await c.head())[0] == 200 and (await c.result())["created"] is True
            await put(backend, "foo", "tls")
            assert unb((await c.result())["events"][0]["kv"]["value"]) == "tls"
            await c.send_chunk({"progress_request": {}})
            assert "events" not in await c.result()  # a progress notification, answered mid-body
            assert backend.watcher_count() == 1
            writer.close()
            assert await until(lambda: backend.watcher_count() == 0 and not server.http)
        finally:
            await server.stop()

    asyncio.run(go())


class _LoginBackend(FakeBackend):
    """Records the source each Authenticate call is counted under (the login rate limit's key)."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    async def authenticate(self, name: str, password: str, *, auth: Any = None) -> tuple[str, int]:
        self.sources.append(auth.source)
        return "tok", self.store.revision


def test_authenticate_on_the_edge_is_counted_per_client_address_over_grpc_and_the_gateway() -> None:
    async def go() -> None:
        backend = _LoginBackend()
        server = await start_edge_server(backend, "127.0.0.1", 0, http_handler=gateway.gateway_router(backend))
        try:
            async with grpc.aio.insecure_channel(server.endpoint) as ch:
                call = ch.unary_unary(
                    "/etcdserverpb.Auth/Authenticate",
                    request_serializer=pb.AuthenticateRequest.SerializeToString,
                    response_deserializer=pb.AuthenticateResponse.FromString,
                )
                assert (await call(pb.AuthenticateRequest(name="u", password="p"), timeout=TIMEOUT_S)).token == "tok"
            c = await Client.connect(server.port)
            body = b'{"name":"u","password":"p"}'
            await c.send(
                b"POST /v3/auth/authenticate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            status, headers = await c.head()
            assert (
                status == 200
                and json.loads(await c.reader.readexactly(int(headers["content-length"])))["token"] == "tok"
            )
            c.writer.close()
            assert backend.sources == ["ipv4:127.0.0.1", "ipv4:127.0.0.1"]  # was "edge" for every client
        finally:
            await server.stop()

    asyncio.run(go())
