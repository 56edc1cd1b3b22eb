"""The client's TLS settings, as etcdctl takes them, turned into what each transport needs.

Theory of operation: :class:`TLSConfig` holds etcdctl's four options (``--cacert``, ``--cert``,
``--key``, ``--insecure-skip-tls-verify``). The native protocol gets an ``ssl.SSLContext``
(:meth:`TLSConfig.ssl_context`): the CA file, else the system's trust store; the client
certificate when given; no verification at all with ``insecure_skip_verify``. gRPC gets channel
credentials (:meth:`TLSConfig.grpc_credentials`) from the same files; gRPC's Python API cannot turn
verification off, so with ``insecure_skip_verify`` the client fetches the certificate the member
presents (unverified, one extra TLS handshake per connection) and trusts exactly that certificate
as its trust anchor, under a name it carries (self-signed ones from ``--auto-tls`` and CA-issued
ones alike; tests/client/test_client_tls_auth.py runs the latter).

Files are read when a connection is made, so a renewed client certificate is picked up by the next
connection. An unreadable file or a certificate that does not match its key is a :class:`TLSError`
naming the file.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.client.errors import TLSError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def ssl_context(self) -> ssl.SSLContext:
        """The context of a native-protocol connection (a new one per connection: files reread)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            _read(self.ca_file, "CA file")
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as exc:
                raise TLSError(f"the CA file {self.ca_file} holds no usable certificate: {exc.reason}") from None
        else:
            ctx.load_default_certs()
        if self.cert_file and self.key_file:
            _read(self.cert_file, "certificate file")
            _read(self.key_file, "key file")
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except ssl.SSLError as exc:
                raise TLSError(f"cannot use the client certificate {self.cert_file} with the key {self.key_file}: "
                               f"{exc.reason or exc}") from None
        return ctx

    def grpc_credentials(self, endpoint: str) -> tuple[Any, list[tuple[str, str]]]:
        """(channel credentials, channel options) for a gRPC channel to ``endpoint``."""
        import grpc

        root = _read(self.ca_file, "CA file") if self.ca_file else None
        key = _read(self.key_file, "key file") if self.key_file else None
        chain = _read(self.cert_file, "certificate file") if self.cert_file else None
        options: list[tuple[str, str]] = []
        if self.insecure_skip_verify:
            root, name = presented_certificate(endpoint)
            if name:
                options.append(("grpc.ssl_target_name_override", name))
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain), options


def presented_certificate(endpoint: str, timeout: float = 5.0) -> tuple[bytes, str]:
    """The PEM certificate ``endpoint`` presents (not verified) and a name it is valid for."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        raise TLSError(f"cannot fetch the certificate of {endpoint}: {exc}") from None
    if not der:
        raise TLSError(f"{endpoint} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode(), _certificate_name(der)


def _certificate_name(der: bytes) -> str:
    """A DNS name (else an IP address, else the CN) the certificate is issued to."""
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover - cryptography is a dependency
        return ""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            return str(dns[0])
        ips = san.get_values_for_type(x509.IPAddress)
        if ips:
            return str(ips[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""
