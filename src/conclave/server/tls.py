"""TLS for the client, native and peer ports: etcd's flags turned into ``ssl`` contexts.

Theory of operation
-------------------
``client_settings(cfg)`` and ``peer_settings(cfg)`` gather one port family's flags into a
frozen ``TlsSettings`` (the flag prefix travels with them, so every error names the flag the
operator typed). ``check_settings`` is the start-up gate: each file is read and parsed
(``cryptography``) and a bad one is a ``ConfigError`` in one sentence: unreadable, not PEM,
a key that does not match its certificate, a certificate that has expired (and when).

``server_context`` / ``client_context`` build ``ssl.SSLContext`` objects: verify mode from
``--[peer-]client-cert-auth``, the trusted CA, the CRL (``VERIFY_CRL_CHECK_LEAF``: a revoked
leaf fails the handshake), TLS versions and TLS1.2 cipher suites (Go/IANA names mapped to
OpenSSL's; TLS1.3 suites are fixed, as in Go). What OpenSSL cannot check during the handshake,
etcd's allowed CN / allowed hostname lists, ``refusal`` checks right after it, before one
byte of the application protocol is read.

Reload: ``ContextSource`` owns the current context of one port family. ``current()`` looks
at the files' (mtime, size, inode) at most once a second and builds a fresh context when
they changed; a half-written renewal (key and cert out of step) fails to build, is logged
and retried on the next look, and the old context keeps serving. Servers hold ONE listening
context whose ``sni_callback`` swaps in ``current()`` for every handshake (OpenSSL takes the
certificate and the CA store from the swapped-in context), so a renewed certificate is served
to the next connection without a restart; dialers simply take ``current()`` per dial.

Auto-TLS (``--auto-tls``, ``--peer-auto-tls``): a self-signed certificate per port family in
``<data-dir>/fixtures/client`` and ``fixtures/peer`` (kept across restarts, as etcd does),
valid ``--self-signed-cert-validity`` years; dialers then do not verify the other side.
``Authority`` issues the throw-away CA and leaf certificates of ``conclave up --tls``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from conclave.server.config import ConfigError, ServerConfig

log = logging.getLogger("conclave.tls")

TLS_VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}

# Go's crypto/tls names (what etcd's --cipher-suites takes) -> OpenSSL's names, TLS1.2 and below.
CIPHER_SUITES: dict[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
"""Accepted by --cipher-suites (Go lists them) but not configurable: TLS1.3 always offers all three."""

RELOAD_CHECK_S = 1.0
SELF_SIGNED_KEY_BITS = 2048


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """One port family's TLS flags (client port and native port share the client's)."""

    prefix: str  # "" or "peer-": the flags' names in errors
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    crl_file: str = ""
    allowed_cn: tuple[str, ...] = ()
    allowed_hostnames: tuple[str, ...] = ()
    min_version: str = "TLS1.2"
    max_version: str = ""
    cipher_suites: tuple[str, ...] = ()
    self_signed: bool = False  # auto-TLS: dialers do not verify the other side

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @property
    def checks_after_handshake(self) -> bool:
        return bool(self.allowed_cn or self.allowed_hostnames)

    def flag(self, name: str) -> str:
        """The etcd flag of this family for ``name``: ``cert-file`` -> ``--peer-cert-file``..."""
        special = _PEER_FLAGS if self.prefix else _CLIENT_FLAGS
        return special.get(name, f"--{self.prefix}{name}")


_CLIENT_FLAGS = {"crl-file": "--client-crl-file", "cert-allowed-hostname": "--client-cert-allowed-hostname"}
_PEER_FLAGS = {"crl-file": "--peer-crl-file", "client-cert-auth": "--peer-client-cert-auth"}


def client_settings(cfg: ServerConfig) -> TlsSettings:
    return TlsSettings(
        prefix="",
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        trusted_ca_file=cfg.trusted_ca_file,
        client_cert_auth=cfg.client_cert_auth,
        crl_file=cfg.client_crl_file,
        allowed_hostnames=tuple(cfg.client_cert_allowed_hostname),
        min_version=cfg.tls_min_version,
        max_version=cfg.tls_max_version,
        cipher_suites=tuple(cfg.cipher_suites),
        self_signed=cfg.auto_tls and not cfg.explicit_client_cert,
    )


def peer_settings(cfg: ServerConfig) -> TlsSettings:
    return TlsSettings(
        prefix="peer-",
        cert_file=cfg.peer_cert_file,
        key_file=cfg.peer_key_file,
        trusted_ca_file=cfg.peer_trusted_ca_file,
        client_cert_auth=cfg.peer_client_cert_auth,
        crl_file=cfg.peer_crl_file,
        allowed_cn=tuple(cfg.peer_cert_allowed_cn),
        allowed_hostnames=tuple(cfg.peer_cert_allowed_hostname),
        min_version=cfg.tls_min_version,
        max_version=cfg.tls_max_version,
        cipher_suites=tuple(cfg.cipher_suites),
        self_signed=cfg.peer_auto_tls and not cfg.explicit_peer_cert,
    )


# ---------------------------------------------------------------------------- start-up checks


def openssl_cipher_list(suites: Iterable[str]) -> str:
    """``--cipher-suites`` as OpenSSL's cipher string (TLS1.3 names dropped: not configurable)."""
    return ":".join(CIPHER_SUITES[c] for c in suites if c in CIPHER_SUITES)


def check_versions_and_ciphers(min_version: str, max_version: str, suites: Iterable[str]) -> None:
    if min_version not in TLS_VERSIONS:
        raise ConfigError(f"--tls-min-version must be TLS1.2 or TLS1.3, got {min_version!r}")
    if max_version and max_version not in TLS_VERSIONS:
        raise ConfigError(f"--tls-max-version must be TLS1.2, TLS1.3 or empty (no maximum), got {max_version!r}")
    if max_version and TLS_VERSIONS[min_version] > TLS_VERSIONS[max_version]:
        raise ConfigError(f"--tls-min-version {min_version} is greater than --tls-max-version {max_version}")
    suites = list(suites)
    for s in suites:
        if s not in CIPHER_SUITES and s not in TLS13_SUITES:
            raise ConfigError(
                f"--cipher-suites: unexpected TLS cipher suite {s!r} (Go names, e.g. "
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256; TLS1.3 suites are not configurable)"
            )
    if suites and min_version == "TLS1.3":
        raise ConfigError(f"--cipher-suites {','.join(suites)} cannot be configured when only TLS1.3 "
                          "or greater is supported (--tls-min-version TLS1.3)")  # fmt: skip
    openssl = [CIPHER_SUITES[s] for s in suites if s in CIPHER_SUITES]
    if openssl:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(":".join(openssl))
        except ssl.SSLError:
            raise ConfigError(
                f"--cipher-suites: none of {','.join(suites)} is available in this OpenSSL "
                f"({ssl.OPENSSL_VERSION})"
            ) from None


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None


def _utc(dt: datetime.datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def load_certificates(flag: str, path: str) -> list[Any]:
    """The PEM certificates of ``path`` (cryptography objects); a ConfigError when there is none."""
    from cryptography import x509

    data = _read(flag, path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{flag}: {path} is not a PEM file of certificates (no 'BEGIN CERTIFICATE' block)")
    try:
        return list(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ConfigError(f"{flag}: {path}: cannot parse the certificate: {exc}") from None


def _check_validity(flag: str, path: str, cert: Any, now: datetime.datetime) -> None:
    if cert.not_valid_after_utc < now:
        raise ConfigError(f"{flag}: the certificate in {path} expired at {_utc(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{flag}: the certificate in {path} is not valid before {_utc(cert.not_valid_before_utc)}")


def load_crl_pem(flag: str, path: str) -> bytes:
    """The CRL of ``path`` as PEM (etcd takes PEM or DER; OpenSSL's loader wants PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = _read(flag, path)
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {path} is not a certificate revocation list (PEM or DER): {exc}") from None
    return crl.public_bytes(serialization.Encoding.PEM)


def check_settings(s: TlsSettings, now: datetime.datetime | None = None) -> None:
    """Every file of ``s`` readable and consistent, or a ConfigError naming the flag and the fault."""
    from cryptography.hazmat.primitives import serialization

    now = now or datetime.datetime.now(datetime.UTC)
    if s.allowed_cn and s.allowed_hostnames:
        raise ConfigError(f"{s.flag('cert-allowed-cn')} and {s.flag('cert-allowed-hostname')} are mutually exclusive")
    if s.cert_file:
        certs = load_certificates(s.flag("cert-file"), s.cert_file)
        _check_validity(s.flag("cert-file"), s.cert_file, certs[0], now)
        key_data = _read(s.flag("key-file"), s.key_file)
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{s.flag('key-file')}: {s.key_file} is not an unencrypted PEM private key: {exc}"
            ) from None
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, pub) != certs[0].public_key().public_bytes(
            serialization.Encoding.DER, pub
        ):
            raise ConfigError(
                f"{s.flag('key-file')}: the private key in {s.key_file} does not match the certificate in "
                f"{s.cert_file} ({s.flag('cert-file')})"
            )
    if s.trusted_ca_file:
        for ca in load_certificates(s.flag("trusted-ca-file"), s.trusted_ca_file):
            _check_validity(s.flag("trusted-ca-file"), s.trusted_ca_file, ca, now)
    if s.crl_file:
        load_crl_pem(s.flag("crl-file"), s.crl_file)
    check_versions_and_ciphers(s.min_version, s.max_version, s.cipher_suites)


def validate_config(cfg: ServerConfig) -> None:
    """Every TLS file, version and suite of ``cfg`` usable, or a ConfigError (after ``cfg.validate()``)."""
    check_versions_and_ciphers(cfg.tls_min_version, cfg.tls_max_version, cfg.cipher_suites)
    for settings in (client_settings(cfg), peer_settings(cfg)):
        check_settings(settings)


# ---------------------------------------------------------------------------- contexts


def _common(ctx: ssl.SSLContext, s: TlsSettings) -> ssl.SSLContext:
    ctx.minimum_version = TLS_VERSIONS[s.min_version]
    if s.max_version:
        ctx.maximum_version = TLS_VERSIONS[s.max_version]
    openssl = [CIPHER_SUITES[c] for c in s.cipher_suites if c in CIPHER_SUITES]
    if openssl:
        ctx.set_ciphers(":".join(openssl))
    if s.trusted_ca_file:
        ctx.load_verify_locations(cafile=s.trusted_ca_file)
    if s.crl_file:
        pem = load_crl_pem(s.flag("crl-file"), s.crl_file)
        # load_verify_locations reads CRLs from PEM files only (cadata takes certificates).
        with tempfile.NamedTemporaryFile(suffix=".crl.pem") as tmp:
            tmp.write(pem)
            tmp.flush()
            ctx.load_verify_locations(cafile=tmp.name)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def server_context(s: TlsSettings) -> ssl.SSLContext:
    """The context a listener of this family serves with (one fresh object per call)."""
    ctx = _common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), s)
    ctx.load_cert_chain(s.cert_file, s.key_file)
    if s.client_cert_auth or (s.checks_after_handshake and s.trusted_ca_file):
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(s: TlsSettings) -> ssl.SSLContext:
    """The context a dialer of this family uses: it presents the family's certificate (etcd's peers
    use --peer-cert-file both ways) and verifies the server with the trusted CA (the system's when
    none is given), or not at all for auto-TLS."""
    ctx = _common(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), s)
    if s.cert_file:
        ctx.load_cert_chain(s.cert_file, s.key_file)
    if s.self_signed and not s.trusted_ca_file:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif not s.trusted_ca_file:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


def _matches_host(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def cert_names(der: bytes) -> tuple[str, list[str], list[str]]:
    """(common name, SAN DNS names, SAN IP addresses) of a DER certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return cn, [], []
    return cn, list(san.get_values_for_type(x509.DNSName)), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def hostname_matches(der: bytes, hostname: str) -> bool:
    """Go's ``Certificate.VerifyHostname``: an IP against the IP SANs, a name against the DNS SANs."""
    _cn, dns, ips = cert_names(der)
    try:
        ip = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return any(_matches_host(p, hostname) for p in dns)
    return any(ipaddress.ip_address(a) == ip for a in ips)


def refusal(s: TlsSettings, der: bytes | None) -> str | None:
    """Why the verified certificate ``der`` of the other side is not allowed (None: it is).

    etcd checks the allowed CN / hostname lists on the first verified chain; a side that sent no
    verified certificate fails them."""
    if not s.checks_after_handshake:
        return None
    if not der:
        return "no verified certificate was presented"
    cn, _dns, _ips = cert_names(der)
    if s.allowed_cn:
        if cn in s.allowed_cn:
            return None
        return f"certificate common name {cn!r} is not in {s.flag('cert-allowed-cn')} {','.join(s.allowed_cn)}"
    if any(hostname_matches(der, h) for h in s.allowed_hostnames):
        return None
    return f"certificate (CN {cn!r}) matches none of {s.flag('cert-allowed-hostname')} {','.join(s.allowed_hostnames)}"


def describe_handshake_error(exc: BaseException) -> str:
    """One line for a failed handshake, naming the usual causes."""
    text = str(exc)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or text
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "PACKET_LENGTH_TOO_LONG"):
            return f"not a TLS client (plain-text connection to a TLS port): {text}"
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
            return f"no client certificate presented: {text}"
        if reason == "UNSUPPORTED_PROTOCOL" or "version" in reason.lower():
            return f"TLS version refused: {text}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ConnectionError):
        return "the connection was closed during the TLS handshake (the other side may have refused it)"
    return text or type(exc).__name__


# ---------------------------------------------------------------------------- reload


def files_signature(paths: Iterable[str]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((p, -1, -1, -1))
            continue
        out.append((p, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


@dataclass
class ContextSource:
    """The current context of one port family; rebuilt when its files change (checked <= 1/s)."""

    settings: TlsSettings
    server: bool
    clock: Callable[[], float] = time.monotonic
    reloads: int = 0
    _ctx: ssl.SSLContext | None = None
    _sig: tuple[tuple[str, int, int, int], ...] = ()
    _checked_at: float = -1e18
    _failed_sig: tuple[tuple[str, int, int, int], ...] = ()
    _listening: ssl.SSLContext | None = None
    _observers: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sig = self._files_signature()
        self._ctx = self._build()
        self._checked_at = self.clock()

    def _files(self) -> list[str]:
        s = self.settings
        return [p for p in (s.cert_file, s.key_file, s.trusted_ca_file, s.crl_file) if p]

    def _files_signature(self) -> tuple[tuple[str, int, int, int], ...]:
        return files_signature(self._files())

    def _build(self) -> ssl.SSLContext:
        return server_context(self.settings) if self.server else client_context(self.settings)

    def changed(self) -> bool:
        """Whether the files changed since the context in use was built (looks at most once a second)."""
        now = self.clock()
        if now - self._checked_at < RELOAD_CHECK_S:
            return False
        self._checked_at = now
        sig = self._files_signature()
        return sig != self._sig and sig != self._failed_sig

    def current(self) -> ssl.SSLContext:
        if self.changed():
            sig = self._files_signature()
            try:
                check_settings(self.settings)
                ctx = self._build()
            except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
                self._failed_sig = sig
                log.warning("TLS files of %s changed but cannot be used yet (%s); still serving the previous "
                            "certificate", self.settings.flag("cert-file"), exc)  # fmt: skip
            else:
                self._ctx, self._sig, self._failed_sig = ctx, sig, ()
                self.reloads += 1
                log.info("TLS: reloaded %s", ", ".join(self._files()))
                for cb in self._observers:
                    cb()
        assert self._ctx is not None
        return self._ctx

    def on_reload(self, cb: Callable[[], None]) -> None:
        self._observers.append(cb)

    def listening_context(self) -> ssl.SSLContext:
        """The one context a server socket is created with: each handshake swaps in ``current()``."""
        assert self.server
        if self._listening is None:
            base = server_context(self.settings)

            def pick(sslobj: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
                ctx = self.current()
                if sslobj.context is not ctx:
                    sslobj.context = ctx

            base.sni_callback = pick
            self._listening = base
        return self._listening


# ---------------------------------------------------------------------------- certificates


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "conclave"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


def _san(hosts: Iterable[str]) -> list[Any]:
    from cryptography import x509

    out: list[Any] = []
    for h in dict.fromkeys(hosts):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))  # fmt: skip


class Authority:
    """A throw-away certificate authority (``conclave up --tls``, tests): EC P-256 keys, SHA-256."""

    def __init__(self, cn: str = "conclave local CA", validity_days: int = 365) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.validity_days = validity_days
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip

    def write_ca(self, path: Path) -> Path:
        from cryptography.hazmat.primitives import serialization

        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, cert_path: Path, key_path: Path, cn: str, hosts: Iterable[str] = (),
              server: bool = True, client: bool = True) -> int:  # fmt: skip
        """Write a leaf certificate and its key; returns its serial number."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])  # fmt: skip
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        san = _san(hosts)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return int(cert.serial_number)


def self_signed(directory: Path, hosts: Iterable[str], validity_years: int, peer: bool) -> tuple[str, str]:
    """etcd's auto-TLS: ``cert.pem`` / ``key.pem`` in ``directory``, made once and then reused."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.is_file() and key_path.is_file():
        return str(cert_path), str(key_path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=SELF_SIGNED_KEY_BITS)
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if peer else [])
    name = _name("conclave auto-tls")
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * validity_years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    san = _san(hosts)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = b.sign(key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("auto-TLS: generated a self-signed certificate in %s, valid %d year(s)", directory, validity_years)
    return str(cert_path), str(key_path)


def _hosts(urls: Iterable[str]) -> list[str]:
    return [h for h in (urlsplit(u if "://" in u else "http://" + u).hostname for u in urls) if h]


def warn_unused(cfg: ServerConfig) -> None:
    """Certificates given for a port family whose URLs are all http:// are not used: say so (as etcd)."""
    if cfg.cert_file and not cfg.client_tls:
        log.warning("--cert-file is given but no client or native URL is https://: clients connect in plain text")
    if cfg.peer_cert_file and not cfg.peer_tls:
        log.warning("--peer-cert-file is given but the peer URLs are http://: peer traffic is not encrypted")


def prepare_auto_tls(cfg: ServerConfig) -> None:
    """Fill the cert/key flags of the families whose auto-TLS is on and that have no files of their own."""
    if cfg.auto_tls and not cfg.explicit_client_cert:
        cfg.cert_file, cfg.key_file = self_signed(
            Path(cfg.data_dir) / "fixtures" / "client",
            _hosts(cfg.listen_client_urls + cfg.advertise_client_urls + cfg.listen_native_urls),
            cfg.self_signed_cert_validity, peer=False,
        )  # fmt: skip
    elif cfg.auto_tls:
        log.warning("ignoring --auto-tls: --cert-file and --key-file are given")
    if cfg.peer_auto_tls and not cfg.explicit_peer_cert:
        cfg.peer_cert_file, cfg.peer_key_file = self_signed(
            Path(cfg.data_dir) / "fixtures" / "peer",
            _hosts(cfg.listen_peer_urls + cfg.initial_advertise_peer_urls),
            cfg.self_signed_cert_validity, peer=True,
        )  # fmt: skip
    elif cfg.peer_auto_tls:
        log.warning("ignoring --peer-auto-tls: --peer-cert-file and --peer-key-file are given")
