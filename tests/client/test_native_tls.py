"""TLS on the native protocol, in process: the client's CA / certificate / skip-verify options,
the certificate's CN reaching the backend, and clear errors for every plain-vs-TLS mismatch."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from api.fake_backend import FakeBackend  # tests/ is on sys.path (rootdir-based import of test packages)
from api.test_native_auth import AuthBackend, Cfg
from edge.tls_support import Pki, make_pki

from conclave import AsyncClient
from conclave.api import native
from conclave.client import TLSError, Unavailable, UserEmpty


def server_context(pki: Pki, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(body: Callable[[str], Awaitable[None]], backend: Any, ctx: ssl.SSLContext | None) -> None:
    async def main() -> None:
        scheme = "https" if ctx is not None else "http"
        server = await native.start_native_server(backend, Cfg([f"{scheme}://127.0.0.1:0"]), ssl=ctx)
        try:
            await asyncio.wait_for(body(f"127.0.0.1:{server.ports[0]}"), 30)
        finally:
            server.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


def test_tls_with_the_ca_and_a_user(pki: Pki) -> None:
    backend = AuthBackend()

    async def body(ep: str) -> None:
        async with AsyncClient([ep], discover=False, ca_file=str(pki.ca), user="alice", password="pw") as c:
            await c.put("/ok/k", "v")
            assert await c.get("/ok/k") == b"v"
        async with AsyncClient([f"https://{ep}"], discover=False, ca_file=str(pki.ca)) as c:
            with pytest.raises(UserEmpty):  # TLS is not an identity without a client certificate
                await c.get("/ok/k")
        async with AsyncClient([ep], discover=False, insecure_skip_tls_verify=True, user="alice",
                               password="pw") as c:
            assert await c.get("/ok/k") == b"v"

    serve(body, backend, server_context(pki))
    assert backend.seen and all(a.cert_cn == "" for a in backend.seen)


def test_the_client_certificate_common_name_reaches_the_backend(pki: Pki) -> None:
    backend = AuthBackend()

    async def body(ep: str) -> None:
        async with AsyncClient([ep], discover=False, ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                               key_file=str(pki.client_key)) as c:
            await c.put("/anything", "v")  # the CN "root" is the user: no token needed
        async with AsyncClient([ep], discover=False, ca_file=str(pki.ca), connect_timeout=2, timeout=4) as c:
            with pytest.raises((TLSError, Unavailable)):  # no client certificate: refused at the handshake
                await c.get("/ok/k")

    serve(body, backend, server_context(pki, require_client_cert=True))
    assert any(a.cert_cn == "root" and a.token == "" for a in backend.seen)


def test_a_plain_client_on_a_tls_port_gets_a_clear_error(pki: Pki) -> None:
    async def body(ep: str) -> None:
        async with AsyncClient([ep], discover=False, connect_timeout=2, timeout=3) as c:
            with pytest.raises((TLSError, Unavailable)) as info:
                await c.put("k", "v")
            assert "TLS" in str(info.value), str(info.value)

    serve(body, FakeBackend(), server_context(pki))


def test_a_tls_client_on_a_plain_port_or_with_the_wrong_ca_gets_a_tls_error(pki: Pki, other_pki: Pki) -> None:
    async def plain(ep: str) -> None:
        async with AsyncClient([ep], discover=False, ca_file=str(pki.ca), connect_timeout=2, timeout=3) as c:
            with pytest.raises(TLSError, match=r"TLS handshake with .* failed"):
                await c.get("k")

    serve(plain, FakeBackend(), None)

    async def wrong_ca(ep: str) -> None:
        async with AsyncClient([ep], discover=False, ca_file=str(other_pki.ca), connect_timeout=2, timeout=3) as c:
            with pytest.raises(TLSError, match=r"certificate does not verify"):
                await c.get("k")

    serve(wrong_ca, FakeBackend(), server_context(pki))


def test_unreadable_or_mismatched_client_files_are_named(pki: Pki, other_pki: Pki, tmp_path: Path) -> None:
    async def body(ep: str) -> None:
        async with AsyncClient([ep], discover=False, ca_file=str(tmp_path / "missing.pem")) as c:
            with pytest.raises(TLSError, match=r"cannot read the CA file .*missing.pem"):
                await c.get("k")
        async with AsyncClient([ep], discover=False, ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                               key_file=str(other_pki.client_key)) as c:
            with pytest.raises(TLSError, match=r"cannot use the client certificate"):
                await c.get("k")
        with pytest.raises(ValueError, match=r"both cert_file and key_file"):
            AsyncClient([ep], cert_file=str(pki.client_cert))

    serve(body, FakeBackend(), server_context(pki))
