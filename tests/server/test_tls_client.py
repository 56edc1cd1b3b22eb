"""TLS on the client and native ports of one `conclave serve` member, reached by etcdctl 3.4 and by Python's ssl:
mutual TLS on both gRPC engines, refusals (no certificate, plain text, revoked, wrong hostname, TLS1.2 against a
TLS1.3-only port), rotation of the served certificate without a restart, auto-TLS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conclave.api import edge_server, pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import free_ports
from conclave.wire.native import FRAME_HEADER, pack_frame

from .tls_pki import (
    ETCDCTL,
    Leaf,
    Pki,
    client_context,
    ctl_flags,
    etcdctl,
    replace_files,
    served_serial,
    wait_serial,
)

ENGINES = ["python", "rust"] if edge_server.available() else ["python"]
EDGE_PARAMS: set[str] = set()
if edge_server.available():
    import inspect

    EDGE_PARAMS = set(inspect.signature(edge_server.EdgeServer.__init__).parameters)

pytestmark = pytest.mark.skipif(ETCDCTL is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")


class Member:
    def __init__(self, tmp: Path, engine: str, *flags: str, native: bool = False) -> None:
        self.client, peer, self.native = free_ports(3)
        self.url = f"https://127.0.0.1:{self.client}"
        self.log = tmp / f"{engine}-{self.client}.log"
        native_flags = ["--listen-native-urls", f"https://127.0.0.1:{self.native}"] if native else []
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conclave", "serve", "--name", "n1", "--data-dir", str(tmp / f"d{self.client}"),
                 "--grpc-engine", engine, "--listen-client-urls", self.url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}", *native_flags, *flags],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, tls: list[str]) -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_text()
            if etcdctl(self.url, "endpoint", "health", tls=tls)[0] == 0:
                return
            time.sleep(0.2)
        raise AssertionError(self.log_text())

    def exit_status(self, timeout: float = 40) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def members(tmp_path: Path) -> Iterator[list[Member]]:
    made: list[Member] = []
    try:
        yield made
    finally:
        for m in made:
            m.stop()


def start(members: list[Member], tmp: Path, engine: str, *flags: str, native: bool = False) -> Member:
    m = Member(tmp, engine, *flags, native=native)
    members.append(m)
    return m


def mtls_flags(pki: Pki, server: Leaf) -> list[str]:
    return ["--cert-file", str(server.cert), "--key-file", str(server.key), "--trusted-ca-file", str(pki.ca_file),
            "--client-cert-auth"]  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_etcdctl_with_client_certificates_and_the_refusals(
    members: list[Member], tmp_path: Path, pki: Pki, engine: str
) -> None:
    server, client = pki.leaf("server"), pki.leaf("root", server=False)
    m = start(members, tmp_path, engine, *mtls_flags(pki, server))
    m.wait_healthy(ctl_flags(pki, client))
    assert etcdctl(m.url, "put", "k", "v", tls=ctl_flags(pki, client))[0] == 0
    rc, out = etcdctl(m.url, "get", "k", "--print-value-only", tls=ctl_flags(pki, client))
    assert rc == 0 and out.strip() == "v", out
    # No client certificate under --client-cert-auth: refused.
    rc, out = etcdctl(m.url, "get", "k", tls=ctl_flags(pki, None))
    assert rc != 0 and "v" not in out.split(), out
    # A certificate from another CA: refused.
    stranger = Pki(tmp_path / "other", cn="other CA").leaf("root", server=False)
    rc, _ = etcdctl(m.url, "get", "k", tls=[*ctl_flags(pki, None)[:2], "--cert", str(stranger.cert), "--key",
                                             str(stranger.key)])  # fmt: skip
    assert rc != 0
    # A plain-text client on the TLS port: a clear failure, in bounded time.
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{m.client}") as ch, pytest.raises(grpc.RpcError) as err:
        EtcdStub(ch, "etcdserverpb.KV").Range(pb.RangeRequest(key=b"k"), timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), err.value
    rc, out = etcdctl(f"http://127.0.0.1:{m.client}", "get", "k")
    assert rc != 0 and time.monotonic() - started < 30, out
    assert f"gRPC engine: {engine}" in m.log_text()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_revoked_client_certificate_is_refused(members: list[Member], tmp_path: Path, pki: Pki, engine: str) -> None:
    server, good, bad = pki.leaf("server"), pki.leaf("good", server=False), pki.leaf("bad", server=False)
    crl = pki.crl(tmp_path / "crl.pem", [bad.serial])
    m = start(members, tmp_path, engine, *mtls_flags(pki, server), "--client-crl-file", str(crl))
    if engine == "rust" and "crl_file" not in EDGE_PARAMS:
        # This build's edge cannot check a CRL: the member says so and does not start half-secured.
        assert m.exit_status() != 0
        assert "--client-crl-file: the rust gRPC engine of this build does not support it yet" in m.log_text()
        return
    m.wait_healthy(ctl_flags(pki, good))
    assert etcdctl(m.url, "put", "k", "v", tls=ctl_flags(pki, good))[0] == 0
    # The streaming RPCs pass the check too (the python engine wraps every handler kind).
    rc, out = etcdctl(m.url, "lease", "grant", "30", tls=ctl_flags(pki, good))
    assert rc == 0, out
    lease = out.split()[1]
    rc, out = etcdctl(m.url, "lease", "keep-alive", "--once", lease, tls=ctl_flags(pki, good))
    assert rc == 0 and "keepalived with TTL" in out, out
    rc, out = etcdctl(m.url, "snapshot", "save", str(tmp_path / f"{engine}.db"), tls=ctl_flags(pki, good))
    assert rc == 0, out
    rc, out = etcdctl(m.url, "get", "k", tls=ctl_flags(pki, bad))
    assert rc != 0, out
    if engine == "python":  # checked per call (grpc python has no CRL option): the reason reaches the client
        assert "revoked" in out, out


@pytest.mark.parametrize("engine", ENGINES)
def test_client_cert_allowed_hostname(members: list[Member], tmp_path: Path, pki: Pki, engine: str) -> None:
    server = pki.leaf("server")
    ok, other = pki.leaf("ok", hosts=("app.example.com",), server=False), pki.leaf("other", hosts=("x.example.com",))
    m = start(members, tmp_path, engine, *mtls_flags(pki, server), "--client-cert-allowed-hostname",
              "db.example.com,app.example.com")  # fmt: skip
    if engine == "rust" and "allowed_hostnames" not in EDGE_PARAMS:
        assert m.exit_status() != 0
        assert "--client-cert-allowed-hostname: the rust gRPC engine of this build does not support" in m.log_text()
        return
    m.wait_healthy(ctl_flags(pki, ok))
    assert etcdctl(m.url, "put", "k", "v", tls=ctl_flags(pki, ok))[0] == 0
    rc, out = etcdctl(m.url, "get", "k", tls=ctl_flags(pki, other))
    assert rc != 0, out


def test_python_engine_reloads_a_renewed_certificate_without_restart(
    members: list[Member], tmp_path: Path, pki: Pki
) -> None:
    served, renewed, client = pki.leaf("served"), pki.leaf("renewed"), pki.leaf("root", server=False)
    m = start(members, tmp_path, "python", *mtls_flags(pki, served))
    m.wait_healthy(ctl_flags(pki, client))
    ctx = client_context(pki, client, alpn=["h2"])
    assert served_serial(m.client, ctx) == served.serial
    pid = m.proc.pid
    time.sleep(1.1)  # mtime granularity and the once-a-second look
    replace_files(renewed, served)
    assert wait_serial(m.client, ctx, renewed.serial) == renewed.serial
    assert m.proc.pid == pid and m.proc.poll() is None
    rc, out = etcdctl(m.url, "put", "after", "renewal", tls=ctl_flags(pki, client))
    assert rc == 0, out
    assert "TLS: reloaded" in m.log_text()


def test_python_engine_refuses_tls_versions_it_cannot_set(members: list[Member], tmp_path: Path, pki: Pki) -> None:
    server = pki.leaf("server")
    m = start(members, tmp_path, "python", "--cert-file", str(server.cert), "--key-file", str(server.key),
              "--tls-min-version", "TLS1.3")  # fmt: skip
    assert m.exit_status() != 0
    assert "cannot set TLS versions" in m.log_text() and "--grpc-engine rust" in m.log_text()


def _native_ping(port: int, ctx: ssl.SSLContext) -> list[object]:
    import msgpack

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname="127.0.0.1"
    ) as s:
        s.sendall(pack_frame([1, "ping", []]))
        head = b""
        while len(head) < FRAME_HEADER.size:
            chunk = s.recv(FRAME_HEADER.size - len(head))
            assert chunk, "connection closed"
            head += chunk
        (length,) = FRAME_HEADER.unpack(head)
        body = b""
        while len(body) < length:
            chunk = s.recv(length - len(body))
            assert chunk, "connection closed"
            body += chunk
    answer = msgpack.unpackb(body)
    assert isinstance(answer, list)
    return answer


def test_native_port_tls_versions_and_rotation(members: list[Member], tmp_path: Path, pki: Pki) -> None:
    served, renewed, client = pki.leaf("served"), pki.leaf("renewed"), pki.leaf("root", server=False)
    engine = "rust" if "tls_min_version" in EDGE_PARAMS else "python"
    only13 = ["--tls-min-version", "TLS1.3"] if engine == "rust" else []
    m = start(members, tmp_path, engine, *mtls_flags(pki, served), *only13, native=True)
    m.wait_healthy(ctl_flags(pki, client))
    ctx = client_context(pki, client)
    answer = _native_ping(m.native, ctx)
    assert answer[0] == 1 and answer[1] is True, answer
    # Without a client certificate: the handshake (or the first read, with TLS1.3) fails.
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        _native_ping(m.native, client_context(pki))
    # Plain text on the TLS port: closed, no answer.
    with socket.create_connection(("127.0.0.1", m.native), timeout=5) as raw:
        raw.sendall(pack_frame([1, "ping", []]))
        raw.settimeout(5)
        try:
            data = raw.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data or data[0] == 0x15, data  # nothing, or a TLS alert record: never an answer
    if only13:
        with pytest.raises(ssl.SSLError):
            _native_ping(m.native, client_context(pki, client, max_version=ssl.TLSVersion.TLSv1_2))
    time.sleep(1.1)
    replace_files(renewed, served)
    assert wait_serial(m.native, ctx, renewed.serial) == renewed.serial
    assert _native_ping(m.native, ctx)[1] is True


def test_tls13_only_member_refuses_a_tls12_client(members: list[Member], tmp_path: Path, pki: Pki) -> None:
    """On the rust engine when its build supports --tls-min-version; the native port otherwise (python engine)."""
    server, client = pki.leaf("server"), pki.leaf("root", server=False)
    if "tls_min_version" in EDGE_PARAMS:
        m = start(members, tmp_path, "rust", *mtls_flags(pki, server), "--tls-min-version", "TLS1.3")
        m.wait_healthy(ctl_flags(pki, client))
        with pytest.raises(ssl.SSLError):
            served_serial(m.client, client_context(pki, client, max_version=ssl.TLSVersion.TLSv1_2, alpn=["h2"]))
        assert served_serial(m.client, client_context(pki, client, alpn=["h2"])) == server.serial
        return
    c, p, n = free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "conclave", "serve", "--data-dir", str(tmp_path / "d13"), "--grpc-engine", "python",
         "--listen-client-urls", f"http://127.0.0.1:{c}", "--listen-peer-urls", f"http://127.0.0.1:{p}",
         "--listen-native-urls", f"https://127.0.0.1:{n}", "--cert-file", str(server.cert), "--key-file",
         str(server.key), "--tls-min-version", "TLS1.3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                served_serial(n, client_context(pki))
                break
            except OSError:
                time.sleep(0.2)
        assert served_serial(n, client_context(pki)) == server.serial
        with pytest.raises(ssl.SSLError):
            served_serial(n, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    finally:
        proc.terminate()
        proc.wait(15)


def test_auto_tls_serves_a_self_signed_certificate(members: list[Member], tmp_path: Path) -> None:
    m = start(members, tmp_path, "python", "--auto-tls")
    m.wait_healthy(["--insecure-transport=false", "--insecure-skip-tls-verify"])
    rc, out = etcdctl(m.url, "put", "auto", "tls", tls=["--insecure-transport=false", "--insecure-skip-tls-verify"])
    assert rc == 0, out
    assert (tmp_path / f"d{m.client}" / "fixtures" / "client" / "cert.pem").is_file()
    rc, out = etcdctl(m.url, "get", "auto")  # verifying the self-signed certificate fails
    assert rc != 0, out


def _negotiated(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname="127.0.0.1"
    ) as s:
        cipher = s.cipher()
    assert cipher is not None
    return cipher[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_cipher_suites_choose_the_tls12_suite(members: list[Member], tmp_path: Path, pki: Pki, engine: str) -> None:
    """A TLS1.2 client offering every suite gets the one --cipher-suites names, on the gRPC and native ports."""
    server = pki.leaf("server")
    m = start(members, tmp_path, engine, "--cert-file", str(server.cert), "--key-file", str(server.key),
              "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", native=True)  # fmt: skip
    m.wait_healthy(ctl_flags(pki, None))
    offer = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
    for port, alpn in ((m.client, ["h2"]), (m.native, None)):
        ctx = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2, alpn=alpn)
        ctx.set_ciphers(offer)
        assert _negotiated(port, ctx) == "ECDHE-ECDSA-CHACHA20-POLY1305", port
        # A client that offers none of the configured suites is refused.
        ctx = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2, alpn=alpn)
        ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with pytest.raises(ssl.SSLError):
            _negotiated(port, ctx)
    assert etcdctl(m.url, "put", "k", "v", tls=ctl_flags(pki, None))[0] == 0
