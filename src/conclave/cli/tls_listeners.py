"""TLS for the client listeners, per engine: what each can enforce and how.

Theory of operation
-------------------
The flags arrive as one ``tls.TlsSettings`` (server/tls.py checked its files at start-up).

- Python engine (grpc.aio): ``grpc.dynamic_ssl_server_credentials`` with a fetcher that grpc
  calls on every handshake; it looks at the files at most once a second and hands grpc a new
  certificate configuration when they changed (renewal without restart). grpc python has no
  CRL, TLS-version or verify-callback option: the CRL and ``--client-cert-allowed-hostname``
  are enforced per call by an interceptor that reads the verified client certificate from
  ``context.auth_context()`` (a refused certificate completes the handshake but every call
  fails with UNAUTHENTICATED and the reason); cipher suites go through grpc's process-wide
  ``GRPC_SSL_CIPHER_SUITES`` (set by ``conclave serve`` before grpc loads); TLS versions other
  than grpc's own range (TLS1.2 to TLS1.3) are refused at start-up, naming --grpc-engine rust.
- Rust engine: the compiled edge terminates TLS itself; its keyword arguments are passed when
  this build of the edge has them, and a flag it lacks is refused at start-up, naming the
  python engine where that engine can enforce it.
- Native port: an ``ssl`` context from ``tls.ContextSource`` (reload per handshake), and the
  allowed-hostname check right after the handshake.
"""

from __future__ import annotations

import inspect
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conclave.server import tls
from conclave.server.config import ConfigError

log = logging.getLogger("conclave.tls")

CHECK_CACHE_MAX = 4096


def python_engine_refusals(s: tls.TlsSettings) -> None:
    """What grpc python cannot do at all: a ConfigError naming the engine that can."""
    if s.min_version != "TLS1.2" or s.max_version not in ("", "TLS1.3"):
        raise ConfigError(
            f"--tls-min-version {s.min_version} / --tls-max-version {s.max_version or '(none)'}: the python gRPC "
            "engine (grpc.aio) cannot set TLS versions (it serves TLS1.2 to TLS1.3); use --grpc-engine rust"
        )


def grpc_credentials(s: tls.TlsSettings) -> Any:
    """Server credentials whose certificate configuration is re-read when the files change."""
    import grpc

    def configuration() -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(Path(s.key_file).read_bytes(), Path(s.cert_file).read_bytes())],
            root_certificates=Path(s.trusted_ca_file).read_bytes() if s.client_cert_auth else None,
        )

    files = [p for p in (s.cert_file, s.key_file, s.trusted_ca_file) if p]
    state = {"sig": tls.files_signature(files), "checked": time.monotonic(), "failed": ()}

    def fetch() -> Any:
        # Called by grpc on each handshake: None keeps the current configuration.
        now = time.monotonic()
        if now - float(state["checked"]) < tls.RELOAD_CHECK_S:  # type: ignore[arg-type]
            return None
        state["checked"] = now
        sig = tls.files_signature(files)
        if sig == state["sig"] or sig == state["failed"]:
            return None
        try:
            tls.check_settings(s)
            new = configuration()
        except (ConfigError, OSError, ValueError) as exc:
            state["failed"] = sig
            log.warning("TLS files of --cert-file changed but cannot be used yet (%s); still serving the previous "
                        "certificate", exc)  # fmt: skip
            return None
        state["sig"] = sig
        log.info("TLS: reloaded %s (gRPC, python engine)", ", ".join(files))
        return new

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=s.client_cert_auth)


class ClientCertCheck:
    """The CRL and the allowed hostnames, checked on the verified client certificate of a call."""

    def __init__(self, s: tls.TlsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = s
        self.clock = clock
        self._cache: dict[bytes, str | None] = {}
        self._crl: Any = None
        self._crl_sig: Any = None
        self._checked_at = -1e18
        self._load_crl()

    def _load_crl(self) -> None:
        if not self.settings.crl_file:
            return
        from cryptography import x509

        sig = tls.files_signature([self.settings.crl_file])
        if sig == self._crl_sig:
            return
        try:
            self._crl = x509.load_pem_x509_crl(tls.load_crl_pem("--client-crl-file", self.settings.crl_file))
        except ConfigError as exc:
            if self._crl is None:
                raise
            log.warning("TLS: --client-crl-file changed but cannot be used yet (%s); keeping the previous list", exc)
            return
        self._crl_sig = sig
        self._cache.clear()

    def reason(self, pem: bytes | None) -> str | None:
        now = self.clock()
        if now - self._checked_at >= tls.RELOAD_CHECK_S:
            self._checked_at = now
            self._load_crl()
        if not pem:  # only with --client-cert-auth off (config refuses these checks without it)
            return "no verified client certificate" if self.settings.allowed_hostnames else None
        if pem in self._cache:
            return self._cache[pem]
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(pem)
        why: str | None = None
        crl = self._crl
        if crl is not None and cert.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(
            cert.serial_number
        ):
            why = f"client certificate serial {cert.serial_number:x} is revoked (--client-crl-file)"
        if why is None:
            why = tls.refusal(self.settings, ssl.PEM_cert_to_DER_cert(pem.decode()))
        if len(self._cache) >= CHECK_CACHE_MAX:
            self._cache.clear()
        self._cache[pem] = why
        return why

    def interceptor(self) -> Any:
        import grpc

        check = self

        async def refuse(ctx: Any) -> None:
            pems = ctx.auth_context().get("x509_pem_cert") or [b""]
            why = check.reason(pems[0])
            if why is not None:
                await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, f"client certificate refused: {why}")

        def guard(fn: Any) -> Any:
            if fn is None:
                return None
            if inspect.isasyncgenfunction(fn):

                async def gen(req: Any, ctx: Any) -> Any:
                    await refuse(ctx)
                    async for item in fn(req, ctx):
                        yield item

                return gen

            async def call(req: Any, ctx: Any) -> Any:
                await refuse(ctx)
                out = fn(req, ctx)
                return await out if inspect.isawaitable(out) else out

            return call

        class Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
            async def intercept_service(self, continuation: Any, details: Any) -> Any:
                handler = await continuation(details)
                if handler is None:
                    return None
                return handler._replace(
                    unary_unary=guard(handler.unary_unary), unary_stream=guard(handler.unary_stream),
                    stream_unary=guard(handler.stream_unary), stream_stream=guard(handler.stream_stream),
                )  # fmt: skip

        return Interceptor()


# The edge's keyword arguments for the features beyond cert/key/client CA (helper tls-edge's API).
EDGE_FEATURES = (
    ("crl_file", "--client-crl-file"),
    ("allowed_hostnames", "--client-cert-allowed-hostname"),
    ("tls_min_version", "--tls-min-version"),
    ("tls_max_version", "--tls-max-version"),
    ("cipher_suites", "--cipher-suites"),
)


def edge_kwargs(s: tls.TlsSettings, secure: list[bool], edge_init: Callable[..., Any]) -> dict[str, Any]:
    """EdgeServer's TLS keyword arguments; a flag this build of the edge lacks is a ConfigError."""
    kw: dict[str, Any] = {"cert_file": s.cert_file, "key_file": s.key_file, "secure": secure,
                          "client_ca_file": s.trusted_ca_file if s.client_cert_auth else None}  # fmt: skip
    wanted = {
        "crl_file": s.crl_file or None,
        "allowed_hostnames": list(s.allowed_hostnames),
        "tls_min_version": s.min_version if s.min_version != "TLS1.2" else None,
        "tls_max_version": s.max_version or None,
        "cipher_suites": list(s.cipher_suites),
    }
    params = inspect.signature(edge_init).parameters
    for name, flag in EDGE_FEATURES:
        value = wanted[name]
        if not value:
            continue
        if name not in params:
            alt = "--grpc-engine python" if name in ("crl_file", "allowed_hostnames", "cipher_suites") else "no engine"
            raise ConfigError(f"{flag}: the rust gRPC engine of this build does not support it yet ({alt} does)")
        kw[name] = value
    return kw


def native_peer_check(s: tls.TlsSettings) -> Callable[[Any], str | None] | None:
    """The allowed-hostname check of the native port, on the transport after the handshake."""
    if not s.checks_after_handshake:
        return None

    def check(transport: Any) -> str | None:
        sslobj = transport.get_extra_info("ssl_object")
        return tls.refusal(s, sslobj.getpeercert(binary_form=True) if sslobj is not None else None)

    return check
