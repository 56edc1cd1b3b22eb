"""TLS in the compiled edge (rustls): grpc's python client with ssl credentials, HTTP/1.1 over TLS, mutual TLS."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conclave.api import edge_server, pb
from conclave.api.stubs import EtcdStub
from tests.api.conftest import ServedBackend

from .tls_support import Pki, make_pki

pytestmark = pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_served(pki: Pki) -> Iterator[ServedBackend]:
    s = ServedBackend("rust", cert_file=str(pki.server_cert), key_file=str(pki.server_key))
    try:
        yield s
    finally:
        s.close()


def kv(channel: grpc.Channel) -> EtcdStub:
    return EtcdStub(channel, "etcdserverpb.KV")


def test_grpc_client_with_ssl_credentials_talks_to_the_edge(tls_served: ServedBackend, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(tls_served.endpoint, creds) as ch:
        assert kv(ch).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10).header.revision > 0
        r = kv(ch).Range(pb.RangeRequest(key=b"k"), timeout=10)
        assert [bytes(x.value) for x in r.kvs] == [b"v"]
        # A server-streaming call over TLS too.
        chunks = list(EtcdStub(ch, "etcdserverpb.Maintenance").Snapshot(pb.SnapshotRequest(), timeout=10))
        assert chunks and chunks[-1].remaining_bytes == 0


def test_plaintext_client_on_a_tls_port_fails_and_the_member_serves_on(tls_served: ServedBackend, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as info:
        kv(tls_served.channel).Range(pb.RangeRequest(key=b"k"), timeout=3)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(tls_served.endpoint, creds) as ch:
        assert kv(ch).Range(pb.RangeRequest(key=b"k"), timeout=10).count == 0


def test_http1_over_tls_on_the_same_port(tls_served: ServedBackend, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    host, port = tls_served.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b'"etcdserver"' in data


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Pki) -> None:
    s = ServedBackend("rust", cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(pki.ca))
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(s.endpoint, anonymous) as ch, pytest.raises(grpc.RpcError) as info:
            kv(ch).Range(pb.RangeRequest(key=b"k"), timeout=3)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        contexts: list[edge_server.EdgeContext] = []
        server: edge_server.EdgeServer = s.server  # type: ignore[assignment]
        on_open = server._on_open

        def spy(sid: int, path: str, meta: list[tuple[str, str]]) -> None:
            on_open(sid, path, meta)
            if sid in server.calls:
                contexts.append(server.calls[sid])  # a call is its own handler context

        server._on_open = spy  # type: ignore[method-assign]
        with grpc.secure_channel(s.endpoint, creds) as ch:
            assert kv(ch).Put(pb.PutRequest(key=b"m", value=b"tls"), timeout=10).header.revision > 0
        # The handlers see the client certificate's CN as grpc.aio shows it (auth_context), never as metadata.
        assert contexts and contexts[0].auth_context()["x509_common_name"] == [b"root"]
        assert all(not k.startswith(":") for k, _ in contexts[0].invocation_metadata())
    finally:
        s.close()


def test_bad_tls_files_are_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match="cert file"):
        ServedBackend("rust", cert_file=str(missing), key_file=str(pki.server_key))
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        ServedBackend("rust", cert_file=str(pki.server_cert))
