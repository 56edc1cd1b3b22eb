"""Throw-away PKIs for the TLS tests (``cryptography``, in a tmp dir): CAs, leaves, CRLs, expired certs,
and small clients that read what a TLS port serves."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conclave.server.tls import Authority

ETCDCTL = shutil.which("etcdctl")


@dataclass
class Leaf:
    cert: Path
    key: Path
    serial: int


@dataclass
class Pki:
    """A CA in ``root`` that issues leaves by name (``<name>.pem`` / ``<name>-key.pem``)."""

    root: Path
    cn: str = "test CA"
    ca: Authority = field(init=False)
    ca_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca = Authority(self.cn, validity_days=2)
        self.ca_file = self.ca.write_ca(self.root / f"{self.cn.replace(' ', '-')}.pem")

    def leaf(self, name: str, cn: str | None = None, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
             server: bool = True, client: bool = True) -> Leaf:  # fmt: skip
        cert, key = self.root / f"{name}.pem", self.root / f"{name}-key.pem"
        serial = self.ca.issue(cert, key, cn or name, hosts, server=server, client=client)
        return Leaf(cert, key, serial)

    def crl(self, path: Path, revoked: list[int]) -> Path:
        now = datetime.datetime.now(datetime.UTC)
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=1))
            .add_extension(x509.CRLNumber(1), critical=False)  # a v2 CRL, as `openssl ca -gencrl` writes
        )
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        path.write_bytes(b.sign(self.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return path

    def expired(self, name: str) -> Leaf:
        """A leaf whose validity ended an hour ago."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now - datetime.timedelta(hours=1))
            .sign(self.ca.key, hashes.SHA256())
        )
        leaf = Leaf(self.root / f"{name}.pem", self.root / f"{name}-key.pem", cert.serial_number)
        leaf.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        leaf.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
        return leaf


def replace_files(src: Leaf, dst: Leaf) -> None:
    """Renew in place: write the new cert and key over the served ones (new inode, as tools do)."""
    for a, b in ((src.key, dst.key), (src.cert, dst.cert)):
        tmp = b.with_name(b.name + ".new")
        shutil.copyfile(a, tmp)
        os.replace(tmp, b)


def client_context(pki: Pki, leaf: Leaf | None = None, max_version: ssl.TLSVersion | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def served_serial(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> int:
    """The serial number of the certificate a TLS port serves now (one fresh handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, ctx.wrap_socket(
        raw, server_hostname="127.0.0.1"
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def wait_serial(port: int, ctx: ssl.SSLContext, serial: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = served_serial(port, ctx)
        except (OSError, ssl.SSLError):
            seen = -1
        if seen == serial:
            return seen
        time.sleep(0.2)
    return seen


def etcdctl(endpoint: str, *args: str, tls: list[str] | None = None, timeout: float = 30) -> tuple[int, str]:
    assert ETCDCTL is not None, "etcdctl is not installed"
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=3s", "--command-timeout=5s", *(tls or []), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def ctl_flags(pki: Pki, leaf: Leaf | None) -> list[str]:
    flags = ["--cacert", str(pki.ca_file)]
    if leaf is not None:
        flags += ["--cert", str(leaf.cert), "--key", str(leaf.key)]
    return flags
