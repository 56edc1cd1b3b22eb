"""etcd's remaining client-port TLS options in the compiled edge, seen from real clients.

CRL, allowed client SAN names, TLS version range, cipher suites, certificate reload without a
restart, Go's answer to plain HTTP on a TLS port, and the construction errors. Every certificate
comes from a throw-away CA made here with ``cryptography``; clients are python's ``ssl`` (raw
sockets, so the handshake's outcome is seen directly), grpc and etcdctl.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conclave.api import edge_server, pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import free_ports
from tests.api.conftest import ServedBackend

pytestmark = pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")

ETCDCTL = shutil.which("etcdctl")
UTC = datetime.UTC


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Ca:
    """A CA that issues leaf certificates and CRLs into ``root``."""

    def __init__(self, root: Path, cn: str = "conclave options CA") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.crl_number = 1
        now = datetime.datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = root / f"{cn.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        cn: str,
        *,
        server: bool = False,
        san: list[x509.GeneralName] | None = None,
        not_after: datetime.datetime | None = None,
        not_before: datetime.datetime | None = None,
    ) -> tuple[Path, Path, int]:
        """(cert path, key path, serial) of a new leaf certificate."""
        now = datetime.datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        if server and san is None:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before or min(now, not_after or now) - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert, keyp = self.root / f"{name}.pem", self.root / f"{name}-key.pem"
        cert.write_bytes(b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        keyp.write_bytes(_key_pem(key))
        return cert, keyp, serial

    def crl(self, path: Path, revoked: list[int]) -> Path:
        now = datetime.datetime.now(UTC)
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - datetime.timedelta(minutes=1))
            .next_update(now + datetime.timedelta(days=1))
            .add_extension(x509.CRLNumber(self.crl_number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        self.crl_number += 1
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        path.write_bytes(b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return Ca(tmp_path / "pki")


@pytest.fixture
def server_files(ca: Ca) -> tuple[Path, Path, int]:
    return ca.issue("server", "127.0.0.1", server=True)


class Served:
    """A rust-engine ServedBackend with TLS options; closed by the fixture."""

    def __init__(self) -> None:
        self.made: list[ServedBackend] = []

    def __call__(self, server: tuple[Path, Path, int], **tls: Any) -> ServedBackend:
        s = ServedBackend("rust", cert_file=str(server[0]), key_file=str(server[1]), **tls)
        self.made.append(s)
        return s


@pytest.fixture
def served() -> Iterator[Served]:
    made = Served()
    try:
        yield made
    finally:
        for s in made.made:
            s.close()


def client_ctx(ca: Ca, cert: tuple[Path, Path, int] | None = None, **opts: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    for k, v in opts.items():
        setattr(ctx, k, v)
    return ctx


def port_of(s: ServedBackend) -> int:
    return int(s.endpoint.rsplit(":", 1)[1])


def read_response(s: socket.socket) -> bytes:
    """One HTTP/1.1 response (head + Content-Length body) from ``s``; b"" when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


VERSION_REQUEST = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"


class Conn:
    """A TLS connection to the edge: the handshake's outcome, the certificate seen, requests."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.tls = ctx.wrap_socket(self.raw, server_hostname="127.0.0.1")

    def serial(self) -> int:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def get_version(self) -> bytes:
        self.tls.sendall(VERSION_REQUEST)
        return read_response(self.tls)

    def close(self) -> None:
        self.tls.close()


def outcome(port: int, ctx: ssl.SSLContext) -> str:
    """'ok' when a request over a new connection is answered, else what failed (the server's
    alert for a refused client certificate arrives after the client's side of a TLS 1.3 handshake)."""
    try:
        c = Conn(port, ctx)
        try:
            answer = c.get_version()
        finally:
            c.close()
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {e}"
    return "ok" if answer.startswith(b"HTTP/1.1 200 ") else f"no answer: {answer!r}"


def kv(channel: grpc.Channel) -> EtcdStub:
    return EtcdStub(channel, "etcdserverpb.KV")


def grpc_creds(ca: Ca, cert: tuple[Path, Path, int]) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.path.read_bytes(), private_key=cert[1].read_bytes(), certificate_chain=cert[0].read_bytes()
    )


def until(pred: Any, timeout_s: float = 6.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


# ----------------------------------------------------------------------------------------------- CRL


def test_a_client_certificate_on_the_crl_is_refused_and_the_crl_reloads(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served, tmp_path: Path
) -> None:
    good = ca.issue("good", "good")
    revoked = ca.issue("revoked", "revoked")
    crl = ca.crl(tmp_path / "crl.pem", [revoked[2]])
    s = served(server_files, client_ca_file=str(ca.path), crl_file=str(crl))
    port = port_of(s)
    assert outcome(port, client_ctx(ca, good)) == "ok"
    refused = outcome(port, client_ctx(ca, revoked))
    assert refused.startswith("refused"), refused
    with grpc.secure_channel(s.endpoint, grpc_creds(ca, good)) as ch:
        assert kv(ch).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10).header.revision > 0
    # A new CRL revoking the other one too: new handshakes use it (no restart).
    ca.crl(crl, [revoked[2], good[2]])
    assert until(lambda: outcome(port, client_ctx(ca, good)) != "ok"), "the new CRL was not used"
    assert outcome(port, client_ctx(ca, revoked)).startswith("refused")


# ------------------------------------------------------------------------------------ allowed hostnames


def test_client_certificate_must_carry_an_allowed_san_name(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served
) -> None:
    dns = ca.issue("dns", "a", san=[x509.DNSName("client.example.com")])
    wild = ca.issue("wild", "b", san=[x509.DNSName("*.example.org")])
    ip = ca.issue("ip", "c", san=[x509.IPAddress(ipaddress.ip_address("10.0.0.7"))])
    other = ca.issue("other", "d", san=[x509.DNSName("intruder.example.net")])
    bare = ca.issue("bare", "client.example.com")  # the name only as CN: Go ignores CNs too
    s = served(
        server_files,
        client_ca_file=str(ca.path),
        allowed_hostnames=["client.example.com", "host.example.org", "10.0.0.7"],
    )
    port = port_of(s)
    assert outcome(port, client_ctx(ca, dns)) == "ok"
    assert outcome(port, client_ctx(ca, wild)) == "ok"
    assert outcome(port, client_ctx(ca, ip)) == "ok"
    assert outcome(port, client_ctx(ca, other)).startswith("refused")
    assert outcome(port, client_ctx(ca, bare)).startswith("refused")
    # The CN still reaches the handlers (CN auth) for an allowed certificate.
    server: edge_server.EdgeServer = s.server  # type: ignore[assignment]
    seen: list[list[bytes]] = []
    on_open = server._on_open

    def spy(sid: int, path: str, meta: list[tuple[str, str]]) -> None:
        on_open(sid, path, meta)
        if sid in server.calls:
            seen.append(server.calls[sid].auth_context().get("x509_common_name", []))

    server._on_open = spy  # type: ignore[method-assign]
    with grpc.secure_channel(s.endpoint, grpc_creds(ca, dns)) as ch:
        kv(ch).Range(pb.RangeRequest(key=b"k"), timeout=10)
    assert seen == [[b"a"]]


# ------------------------------------------------------------------------------ versions, cipher suites


def test_tls13_only_refuses_a_tls12_client(ca: Ca, server_files: tuple[Path, Path, int], served: Served) -> None:
    s = served(server_files, tls_min_version="TLS1.3")
    port = port_of(s)
    old = outcome(port, client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2))
    assert old.startswith("refused") and "VERSION" in old.upper(), old
    c = Conn(port, client_ctx(ca))
    try:
        assert c.tls.version() == "TLSv1.3"
    finally:
        c.close()


def test_tls12_max_is_what_a_modern_client_gets(ca: Ca, server_files: tuple[Path, Path, int], served: Served) -> None:
    s = served(server_files, tls_max_version="TLS1.2")
    c = Conn(port_of(s), client_ctx(ca))
    try:
        assert c.tls.version() == "TLSv1.2"
        assert c.get_version().startswith(b"HTTP/1.1 200 ")
    finally:
        c.close()


def test_cipher_suites_restrict_the_tls12_handshake(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served
) -> None:
    s = served(server_files, cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"])
    port = port_of(s)
    c = Conn(port, client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2))
    try:
        cipher = c.tls.cipher()
        assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    finally:
        c.close()
    only128 = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    only128.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert outcome(port, only128).startswith("refused")
    # Without the restriction the same client is served.
    t = served(server_files)
    assert outcome(port_of(t), only128) == "ok"


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        ({"cipher_suites": ["TLS_NO_SUCH_SUITE"]}, 'unexpected TLS cipher suite "TLS_NO_SUCH_SUITE"'),
        ({"cipher_suites": ["TLS_RSA_WITH_AES_128_CBC_SHA"]}, "is not supported by the compiled edge"),
        ({"tls_min_version": "TLS1.1"}, 'unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)'),
        ({"tls_min_version": "TLS1.3", "tls_max_version": "TLS1.2"}, "min version (TLS1.3) is greater than max"),
        (
            {"tls_min_version": "TLS1.3", "cipher_suites": ["TLS_AES_128_GCM_SHA256"]},
            "cipher suites cannot be configured when only TLS1.3 is enabled",
        ),
        ({"crl_file": "/nonexistent"}, "a client CRL file needs a client CA file"),
        ({"allowed_hostnames": ["x.example"]}, "need a client CA file"),
    ],
)
def test_bad_options_are_a_clear_value_error(
    server_files: tuple[Path, Path, int], served: Served, opts: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError) as info:
        served(server_files, **opts)
    assert words in str(info.value)


def test_blank_names_are_no_names(ca: Ca, server_files: tuple[Path, Path, int], served: Served) -> None:
    """What splitting an empty flag value gives ([""]) restricts nothing and needs no client CA."""
    s = served(server_files, allowed_hostnames=[""], cipher_suites=[" "])
    assert outcome(port_of(s), client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)) == "ok"


def test_bad_files_are_a_clear_value_error(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served, tmp_path: Path
) -> None:
    cert, key, _ = server_files
    other_cert, other_key, _ = ca.issue("other", "127.0.0.1", server=True)
    der = tmp_path / "ca.der"
    der.write_bytes(ca.cert.public_bytes(serialization.Encoding.DER))
    past = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    expired = ca.issue("expired", "127.0.0.1", server=True, not_after=past)

    def error(**kw: Any) -> str:
        with pytest.raises(ValueError) as info:
            ServedBackend("rust", **kw)
        return str(info.value)

    assert "No such file or directory" in error(cert_file=str(tmp_path / "nope.pem"), key_file=str(key))
    assert "Is a directory" in error(cert_file=str(cert), key_file=str(tmp_path))
    assert f"key file {other_key} does not match cert file {cert}" in error(
        cert_file=str(cert), key_file=str(other_key)
    )
    assert "no PEM certificate in it" in error(cert_file=str(cert), key_file=str(key), client_ca_file=str(der))
    assert "no PEM private key in it" in error(cert_file=str(cert), key_file=str(other_cert))
    msg = error(cert_file=str(expired[0]), key_file=str(expired[1]))
    assert f"cert file {expired[0]}: the certificate expired at 2025-03-04 05:06:07 UTC" in msg, msg
    garbage = tmp_path / "crl.pem"
    garbage.write_text("not a crl\n")
    assert f"client CRL file {garbage}" in error(
        cert_file=str(cert), key_file=str(key), client_ca_file=str(ca.path), crl_file=str(garbage)
    )


def test_a_certificate_not_valid_yet_is_served_with_a_warning(
    ca: Ca, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conclave.api.edge")
    later = datetime.datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    files = ca.issue("future", "127.0.0.1", server=True, not_before=later, not_after=later + datetime.timedelta(days=1))
    served(files)
    assert until(lambda: "not valid before 2099-01-02 03:04:05 UTC" in caplog.text), caplog.text


# ------------------------------------------------------------------------------------------- reload


def test_replaced_certificate_is_used_by_new_connections_and_a_broken_one_is_not(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key, first_serial = server_files
    s = served(server_files)
    port = port_of(s)
    old = Conn(port, client_ctx(ca))
    try:
        assert old.serial() == first_serial
        assert old.get_version().startswith(b"HTTP/1.1 200 ")
        new_cert, new_key, new_serial = ca.issue("server2", "127.0.0.1", server=True)
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())

        def seen() -> int:
            c = Conn(port, client_ctx(ca))
            try:
                return c.serial()
            finally:
                c.close()

        assert until(lambda: seen() == new_serial), "the replaced certificate was not served"
        # The connection opened before the replacement keeps working.
        assert old.serial() == first_serial
        assert old.get_version().startswith(b"HTTP/1.1 200 ")
        # A replacement that does not load (the cert without its key) keeps the previous one.
        caplog.set_level(logging.WARNING, logger="conclave.api.edge")
        third_cert, _, _ = ca.issue("server3", "127.0.0.1", server=True)
        cert.write_bytes(third_cert.read_bytes())
        # (the files are looked at when a connection arrives, at most once a second)
        assert until(lambda: seen() == new_serial and "previous ones stay in use" in caplog.text), caplog.text
        assert "does not match" in caplog.text
        assert seen() == new_serial
        assert outcome(port, client_ctx(ca)) == "ok"
    finally:
        old.close()


# ------------------------------------------------------------------------------------- plain text


def test_plain_http_on_the_tls_port_gets_gos_answer(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served
) -> None:
    s = served(server_files)
    port = port_of(s)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(VERSION_REQUEST)
        data = b""
        while chunk := raw.recv(4096):
            data += chunk
    assert data == b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    # An HTTP/2 preface (prior knowledge, no TLS) is closed cleanly: EOF, no answer, no hang.
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
        assert raw.recv(4096) == b""
    assert time.monotonic() - started < 3
    assert outcome(port, client_ctx(ca)) == "ok"


# ----------------------------------------------------------------------------------------- etcdctl


def etcdctl(s: ServedBackend, ca: Ca, cert: tuple[Path, Path, int], *args: str) -> tuple[int, str]:
    assert ETCDCTL is not None
    done = subprocess.run(
        [ETCDCTL, f"--endpoints=https://{s.endpoint}", "--dial-timeout=3s", "--command-timeout=5s",
         "--cacert", str(ca.path), "--cert", str(cert[0]), "--key", str(cert[1]), *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(ETCDCTL is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")
def test_etcdctl_with_client_certificates_and_every_option(
    ca: Ca, server_files: tuple[Path, Path, int], served: Served, tmp_path: Path
) -> None:
    good = ca.issue("etcdctl", "root", san=[x509.DNSName("etcdctl.example")])
    revoked = ca.issue("revoked", "root", san=[x509.DNSName("etcdctl.example")])
    s = served(
        server_files,
        client_ca_file=str(ca.path),
        crl_file=str(ca.crl(tmp_path / "crl.pem", [revoked[2]])),
        allowed_hostnames=["etcdctl.example"],
        tls_min_version="TLS1.2",
        tls_max_version="TLS1.2",  # so the cipher suites below are the ones negotiated
        cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
    )
    rc, out = etcdctl(s, ca, good, "put", "k", "over-tls")
    assert rc == 0 and out == "OK\n", out
    rc, out = etcdctl(s, ca, good, "get", "k", "--print-value-only")
    assert rc == 0 and out.strip() == "over-tls", out
    rc, out = etcdctl(s, ca, revoked, "get", "k")
    assert rc != 0, out


@pytest.mark.skipif(ETCDCTL is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")
def test_a_serving_member_takes_a_rotated_certificate_and_etcdctl_sees_it(ca: Ca, tmp_path: Path) -> None:
    """`conclave serve --grpc-engine rust` with etcd's mTLS flags: the cert and key are replaced
    while it runs; etcdctl keeps working, and a new connection is served the new certificate."""
    assert ETCDCTL is not None
    cert, key, first_serial = ca.issue("member", "127.0.0.1", server=True)
    client = ca.issue("etcdctl", "root")
    port, peer = free_ports(2)
    url = f"https://127.0.0.1:{port}"
    log = tmp_path / "member.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conclave", "serve", "--name", "n1", "--data-dir", str(tmp_path / "data"),
             "--grpc-engine", "rust", "--listen-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--cert-file", str(cert), "--key-file", str(key), "--client-cert-auth", "--trusted-ca-file", str(ca.path)],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ctl(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [ETCDCTL, f"--endpoints={url}", "--dial-timeout=3s", "--command-timeout=5s", "--cacert", str(ca.path),
             "--cert", str(client[0]), "--key", str(client[1]), *args],
            capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    def served_serial() -> int:
        c = Conn(port, client_ctx(ca, client))
        try:
            return c.serial()
        finally:
            c.close()

    try:
        assert until(lambda: proc.poll() is None and ctl("endpoint", "health")[0] == 0, 30), log.read_text()
        assert ctl("put", "k", "before")[0] == 0
        assert served_serial() == first_serial
        new_cert, new_key, new_serial = ca.issue("member2", "127.0.0.1", server=True)
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        assert until(lambda: served_serial() == new_serial), log.read_text()
        rc, out = ctl("get", "k", "--print-value-only")
        assert rc == 0 and out.strip() == "before", out
        assert ctl("put", "k", "after")[0] == 0
        assert "reloaded the client port's files" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
