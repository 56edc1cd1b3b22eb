"""The compiled edge (conclave._edge) over the fake backend: framing, limits, HTTP/1.1 beside HTTP/2, shutdown."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest

from conclave.api import edge_server, pb
from conclave.api.stubs import EtcdStub
from tests.api.conftest import ServedBackend

pytestmark = pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> ServedBackend:
    monkeypatch.setenv("CONCLAVE_GRPC_ENGINE", "rust")
    s = ServedBackend(max_request_bytes=1024)
    assert isinstance(s.server, edge_server.EdgeServer)
    yield s
    s.close()


def test_put_range_and_many_concurrent_streams_on_one_connection(served: ServedBackend) -> None:
    kv = served.stub("etcdserverpb.KV")
    futures = [kv.Put.future(pb.PutRequest(key=b"k%d" % i, value=b"v"), timeout=20) for i in range(300)]
    for f in futures:
        f.result()
    r = kv.Range(pb.RangeRequest(key=b"k", range_end=b"l"), timeout=10)
    assert r.count == 300


def test_request_over_the_size_limit_is_resource_exhausted_and_the_member_serves_on(served: ServedBackend) -> None:
    kv = served.stub("etcdserverpb.KV")
    big = b"x" * (1024 + 512 * 1024 + 10)
    with pytest.raises(grpc.RpcError) as info:
        kv.Put(pb.PutRequest(key=b"big", value=big), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert kv.Put(pb.PutRequest(key=b"small", value=b"v"), timeout=10).header.revision > 0


def test_http1_and_http2_on_the_same_port(served: ServedBackend) -> None:
    host, port = served.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b'"etcdserver"' in data
    assert served.stub("etcdserverpb.KV").Range(pb.RangeRequest(key=b"a"), timeout=10).count == 0


def test_truncated_frame_closes_only_that_connection(served: ServedBackend) -> None:
    host, port = served.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x10\x04\x00\x00\x00\x00\x00garbage")
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    assert served.stub("etcdserverpb.KV").Range(pb.RangeRequest(key=b"a"), timeout=10).count == 0


def test_shutdown_with_a_watch_open_gives_unavailable(served: ServedBackend) -> None:
    stub: EtcdStub = served.stub("etcdserverpb.Watch")
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w"))
    done = threading.Event()

    def requests():  # type: ignore[no-untyped-def]
        yield create
        done.wait(15)  # keep the request side open, as a real watcher does

    responses = stub.Watch(requests(), timeout=20)
    first = next(responses)
    assert first.created
    errors: list[grpc.StatusCode] = []

    def drain() -> None:
        try:
            for _ in responses:
                pass
        except grpc.RpcError as err:
            errors.append(err.code())

    t = threading.Thread(target=drain)
    t.start()
    served.run(served.server.stop(0))
    t.join(10)
    done.set()
    assert not t.is_alive()
    assert errors and errors[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
