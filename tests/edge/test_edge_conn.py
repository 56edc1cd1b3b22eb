"""The compiled edge under hostile or heavy clients: many streams and connections, limits, malformed
frames, clients that stop reading or send too fast, deadlines, chunked HTTP/1.1, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from conclave.api import edge_server, pb
from tests.api.conftest import ServedBackend

from .rawh2 import RawH2, grpc_frame, send_flow_controlled

pytestmark = pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")

WATCH = "/etcdserverpb.Watch/Watch"
RANGE = "/etcdserverpb.KV/Range"
LIMIT = 1024 + 512 * 1024  # --max-request-bytes 1024 plus gRPC's 512 KiB overhead


async def http_handler(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes | AsyncIterator[bytes]]:
    if path == "/echo":
        return 200, [("x-method", method)], body

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"a" * 10, b"", b"b" * 20_000, b"c"):
            await asyncio.sleep(0.01)
            yield part

    if path == "/stream":
        return 200, [("content-type", "application/octet-stream")], chunks()
    return 404, [], b"404 page not found\n"


@pytest.fixture
def served() -> Iterator[ServedBackend]:
    s = ServedBackend("rust", max_request_bytes=1024, http_handler=http_handler)
    try:
        yield s
    finally:
        s.close()


def watch_create(key: bytes) -> bytes:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)).SerializeToString()


def put(served: ServedBackend, key: bytes, value: bytes = b"v") -> None:
    served.stub("etcdserverpb.KV").Put(pb.PutRequest(key=key, value=value), timeout=20)


def test_two_hundred_watch_streams_on_one_connection_all_see_the_event(served: ServedBackend) -> None:
    c = RawH2(served.endpoint)
    try:
        sids = [c.open(WATCH, [watch_create(b"many")], end=False) for _ in range(200)]
        assert c.wait(lambda: all(len(c.streams[s].messages()) >= 1 for s in sids), 20)
        put(served, b"many")
        assert c.wait(lambda: all(len(c.streams[s].messages()) >= 2 for s in sids), 20)
        for s in sids:
            first, event = (pb.WatchResponse.FromString(m) for m in c.streams[s].messages()[:2])
            assert first.created and [bytes(e.kv.key) for e in event.events] == [b"many"]
    finally:
        c.close()


@pytest.mark.parametrize("authority", ["http://127.0.0.1:2379", "https://h:1/path?q", "#initially=[x]", "127.0.0.1"])
def test_an_authority_sent_as_a_url_is_accepted_as_grpc_go_does(served: ServedBackend, authority: str) -> None:
    # etcdctl --cluster sends its member's client URL as :authority; h2 alone refuses that.
    c = RawH2(served.endpoint, authority=authority)
    try:
        for i in range(20):  # many header blocks on one connection: HPACK's dynamic table stays in step
            sid = c.open(RANGE, [pb.RangeRequest(key=b"a%d" % i).SerializeToString()], headers=[("x-n", str(i))])
            assert c.wait(lambda sid=sid: c.streams[sid].ended, 10)
            assert c.streams[sid].status == 0, c.streams[sid].headers
    finally:
        c.close()


def test_a_thousand_connections_each_served(served: ServedBackend) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * 1000 + 256  # both ends live in this process
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    conns: list[RawH2] = []
    try:
        req = pb.RangeRequest(key=b"a").SerializeToString()
        for _ in range(1000):
            c = RawH2(served.endpoint)
            c.open(RANGE, [req])
            conns.append(c)
        deadline = time.monotonic() + 60
        for c in conns:
            assert c.wait(lambda c=c: c.streams[1].ended, max(1.0, deadline - time.monotonic()))
            assert c.streams[1].status == 0
        assert served.server.edge.open_connections() >= 1000
    finally:
        for c in conns:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    put(served, b"after")
    deadline = time.monotonic() + 10
    while served.server.edge.open_connections() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.server.edge.open_connections() <= 1  # the test's own grpc channel


@pytest.mark.parametrize("how", ["grpc-client", "raw"])
def test_over_the_size_limit_both_engines_send_the_same_code_and_message(how: str) -> None:
    answers = {}
    for engine in ("rust", "python"):
        s = ServedBackend(engine, max_request_bytes=1024)
        try:
            big = pb.PutRequest(key=b"big", value=b"x" * (LIMIT + 10))
            if how == "grpc-client":
                with pytest.raises(grpc.RpcError) as info:
                    s.stub("etcdserverpb.KV").Put(big, timeout=10)
                answers[engine] = (info.value.code().value[0], info.value.details())
            else:
                c = RawH2(s.endpoint)
                sid = c.open("/etcdserverpb.KV/Put", end=False)
                send_flow_controlled(c, sid, grpc_frame(big.SerializeToString()), timeout=5)
                assert c.wait(lambda c=c, sid=sid: c.streams[sid].ended, 10)
                answers[engine] = (c.streams[sid].status, c.streams[sid].headers.get("grpc-message"))
                c.close()
            put(s, b"small")  # the member serves on
        finally:
            s.close()
    assert answers["rust"] == answers["python"]
    assert answers["rust"][0] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    size = pb.PutRequest(key=b"big", value=b"x" * (LIMIT + 10)).ByteSize()
    assert answers["rust"][1] == f"SERVER: Received message larger than max ({size} vs. {LIMIT})"


def test_truncated_message_ends_that_stream_only(served: ServedBackend) -> None:
    c = RawH2(served.endpoint)
    try:
        sid = c.open(RANGE, end=False)
        c.conn.send_data(sid, b"\x00\x00\x00\x00\x64abc", end_stream=True)  # says 100 bytes, has 3
        c.flush()
        assert c.wait(lambda: c.streams[sid].ended, 10)
        assert c.streams[sid].status == grpc.StatusCode.INTERNAL.value[0]
        ok = c.open(RANGE, [pb.RangeRequest(key=b"a").SerializeToString()])  # same connection
        assert c.wait(lambda: c.streams[ok].ended, 10) and c.streams[ok].status == 0
    finally:
        c.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x10\x00\x00\x00\x00\x00\x01short",  # DATA cut short
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(range(256)) * 4,  # frames of noise
        b"\x16\x03\x01\x02\x00" + bytes(300),  # a TLS hello on the plain port
        bytes(range(1, 256)) + b"\r\n\r\n",  # not HTTP at all
    ],
)
def test_garbage_closes_that_connection_and_the_member_serves_on(served: ServedBackend, garbage: bytes) -> None:
    host, port = served.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    put(served, b"still-here")


def test_random_header_blocks_never_take_the_member_down(served: ServedBackend) -> None:
    rng = random.Random(11)
    host, port = served.endpoint.rsplit(":", 1)
    for _ in range(200):
        block = rng.randbytes(rng.randrange(1, 200))
        flags = rng.choice([0x4, 0x5, 0x0, 0x24, 0x8 | 0x4])
        frame = len(block).to_bytes(3, "big") + bytes([0x1, flags]) + (1).to_bytes(4, "big") + block
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + frame)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while s.recv(4096):
                    pass
    # The same after a first request whose URL :authority put the connection in rewrite mode.
    req = pb.RangeRequest(key=b"a").SerializeToString()
    for _ in range(50):
        c = RawH2(served.endpoint, authority="http://127.0.0.1:1")
        try:
            sid = c.open(RANGE, [req])
            assert c.wait(lambda c=c, sid=sid: c.streams[sid].ended, 10) and c.streams[sid].status == 0
            block = rng.randbytes(rng.randrange(1, 200))
            c.sock.sendall(len(block).to_bytes(3, "big") + b"\x01\x05" + (sid + 2).to_bytes(4, "big") + block)
            c.wait(lambda c=c: c.closed, 2)
        finally:
            c.close()
    put(served, b"still-here")
    deadline = time.monotonic() + 10
    while served.server.edge.open_connections() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.server.edge.open_connections() <= 1


def test_a_watcher_that_never_reads_is_back_pressured_and_others_are_unaffected(served: ServedBackend) -> None:
    slow = RawH2(served.endpoint, read_window=65_535, auto_ack=False)
    try:
        sid = slow.open(WATCH, [watch_create(b"flood")], end=False)
        assert slow.wait(lambda: len(slow.streams[sid].messages()) >= 1, 10)
        value = b"x" * 32 * 1024
        edge = served.server.edge
        worst = 0.0
        peak = 0
        for _ in range(400):  # 12.5 MiB of events for a client that reads none of them
            t0 = time.monotonic()
            put(served, b"flood", value)
            worst = max(worst, time.monotonic() - t0)
            peak = max(peak, edge.outbound_bytes())
        # Python stopped producing once the edge held its high-water mark (4 MiB) for that stream.
        assert peak <= 4 * 1024 * 1024 + 2 * len(value) + 1024, peak
        calls = [c for c in served.server.calls.values() if c.blocked]
        assert calls, "the watch was never reported as blocked"
        assert worst < 5.0, worst
        r = served.stub("etcdserverpb.KV").Range(pb.RangeRequest(key=b"flood"), timeout=10)
        assert r.count == 1
    finally:
        slow.close()


def test_a_client_that_sends_faster_than_python_takes_is_held_by_flow_control(served: ServedBackend) -> None:
    c = RawH2(served.endpoint)
    try:
        sid = c.open(WATCH, end=False)
        # Valid WatchRequests padded with an unknown field: 256 KiB each, 24 MiB in all.
        pad = b"\xfa\x07" + b"\x80\x80\x10" + b"p" * (256 * 1024)  # field 127, length 262144
        msg = grpc_frame(pb.WatchRequest(progress_request=pb.WatchProgressRequest()).SerializeToString() + pad)
        blocker = threading.Event()
        served.loop.call_soon_threadsafe(lambda: blocker.wait(20))  # the asyncio loop stops draining
        try:
            sent = send_flow_controlled(c, sid, msg * 96, end=False, timeout=2)
            queued = served.server.edge.inbound_bytes()
        finally:
            blocker.set()
        # At most the stream's window (1 MiB) plus the 1 MiB the edge queues, plus one message.
        assert sent < 3 * 1024 * 1024 + len(msg), sent
        assert queued <= 1024 * 1024 + len(msg), queued
        put(served, b"after-flood")
    finally:
        c.close()


def test_grpc_timeout_header_ends_the_call_with_deadline_exceeded(served: ServedBackend) -> None:
    c = RawH2(served.endpoint)
    try:
        t0 = time.monotonic()
        sid = c.open(WATCH, [watch_create(b"t")], end=False, headers=[("grpc-timeout", "300m")])
        assert c.wait(lambda: c.streams[sid].ended, 10)
        assert c.streams[sid].status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert 0.25 <= time.monotonic() - t0 < 5
        deadline = time.monotonic() + 5
        while served.call_in_loop(lambda: len(served.server.calls)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.call_in_loop(lambda: len(served.server.calls)) == 0  # the handler was cancelled
    finally:
        c.close()


def http1(served: ServedBackend, raw: bytes) -> socket.socket:
    host, port = served.endpoint.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(raw)
    return s


def read_response(s: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.decode().split(":", 1) for line in lines)}
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            rest += s.recv(65536)
        return status, headers, rest[:n]
    assert headers.get("transfer-encoding") == "chunked"
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += s.recv(65536)
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += s.recv(65536)
        if size == 0:
            return status, headers, body
        body += rest[:size]
        rest = rest[size + 2 :]


def test_http1_chunked_request_and_response_beside_http2(served: ServedBackend) -> None:
    s = http1(
        served,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
    )
    with s:
        status, headers, body = read_response(s)
        assert status.startswith(b"HTTP/1.1 200") and body == b"hello world" and headers["x-method"] == "POST"
        # HTTP/2 on the same port meanwhile.
        assert served.stub("etcdserverpb.KV").Range(pb.RangeRequest(key=b"a"), timeout=10).count == 0
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")  # the same keep-alive connection
        status, headers, body = read_response(s)
        assert status.startswith(b"HTTP/1.1 200") and body == b"a" * 10 + b"b" * 20_000 + b"c"
        assert headers["content-type"] == "application/octet-stream"


def test_http1_chunked_body_over_the_limit_is_413(served: ServedBackend) -> None:
    chunk = b"x" * 65536
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (LIMIT // len(chunk) + 2) + b"0\r\n\r\n"
    with http1(served, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n") as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(body)
        status, _, _ = read_response(s)
        assert status.startswith(b"HTTP/1.1 413")


def test_shutdown_with_many_streams_open_ends_each_with_unavailable(served: ServedBackend) -> None:
    conns = [RawH2(served.endpoint) for _ in range(3)]
    try:
        sids = [(c, c.open(WATCH, [watch_create(b"s%d" % i)], end=False)) for c in conns for i in range(10)]
        for c, sid in sids:
            assert c.wait(lambda c=c, sid=sid: len(c.streams[sid].messages()) >= 1, 10)
        t0 = time.monotonic()
        served.run(served.server.stop(1.0))
        for c, sid in sids:
            c.wait(lambda c=c, sid=sid: c.streams[sid].ended, 10)
            assert c.streams[sid].status == grpc.StatusCode.UNAVAILABLE.value[0], c.streams[sid].headers
        assert time.monotonic() - t0 < 10
    finally:
        for c in conns:
            c.close()
