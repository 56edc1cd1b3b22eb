"""Plain HTTP on the client port: a path router, and a standalone asyncio HTTP/1.1 server.

Theory of operation: everything etcd serves over HTTP next to gRPC (the JSON gateway under
``/v3/``, ``/version``, ``/health``, ``/metrics``...) is a *handler* with the edge's signature
(:data:`conclave.api.edge_server.HttpHandler`): ``(method, path, headers, body) -> (status,
headers, body)``, where ``path`` keeps its query string, header names are lower case, and a body
that is an async iterable of bytes goes out as a chunked response. An :class:`HttpRouter` holds
them by path and is itself such a handler, so one router instance can be given to the compiled
edge (HTTP/1.1 beside gRPC on the client port) and to :class:`HttpServer` (the listener of
``--listen-client-http-urls``) alike.

Routes: ``add("/version", h)`` matches that path exactly; ``add("/v3/", h)`` (a trailing slash)
matches every path under it; the longest match wins, an exact path before any prefix.
``alias("/v3beta/", "/v3/")`` rewrites one prefix to another before matching (etcd's
``/v3beta`` compatibility). Unknown paths answer ``404 page not found`` as Go's mux does.

Request bodies: a route added with ``stream_body=True`` may be given its body as an async
iterable of byte chunks instead of ``bytes`` (the JSON gateway reads watch and keepalive
requests from the body stream). :class:`HttpServer` does that, and so does the compiled edge for
a chunked request body (one with a ``Content-Length`` arrives whole, as ``bytes``, which such a
handler accepts too), so a client can keep the request body open and send more requests later.
Every other route always gets ``bytes``.

The client: both servers add the pseudo header ``:peer`` (no HTTP/1.1 client can send a name
starting with ``:``), the client's address as grpc names a peer (``ipv4:1.2.3.4:5678``,
``ipv6:%5B::1%5D:5678``); :func:`peer_of` reads it, so a handler's gRPC context can say
``peer()`` as grpc.aio's does (per-client limits see each HTTP client apart).

The standalone server is aiohttp's low-level server (keep-alive, chunked bodies both ways,
pipelining and malformed-request handling are aiohttp's); this module only adapts it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from conclave.version import __version__
from conclave.wire.contract import EtcdBackend

log = logging.getLogger("conclave.api.http")

Headers = list[tuple[str, str]]
HttpBody = bytes | AsyncIterable[bytes]  # an async iterable is sent as a chunked response
HttpRequestBody = bytes | AsyncIterable[bytes]  # an async iterable only for stream_body routes
HttpResult = tuple[int, Headers, HttpBody]
HttpHandler = Callable[[str, str, Headers, bytes], Awaitable[HttpResult]]
StreamingHttpHandler = Callable[[str, str, Headers, Any], Awaitable[HttpResult]]

NOT_FOUND: HttpResult = (404, [("content-type", "text/plain; charset=utf-8")], b"404 page not found\n")
MAX_BODY_BYTES = 64 * 1024 * 1024  # a whole request body read for a non-streaming route
PEER_HEADER = ":peer"  # the pseudo header carrying the client's address (grpc's form)


def grpc_peer(host: str, port: int) -> str:
    """An address as grpc (core) names a peer; an IPv4-mapped IPv6 address as the IPv4 one."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{host}:{port}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return f"ipv4:{ip}:{port}"
    return f"ipv6:%5B{ip}%5D:{port}"


def peer_of(headers: Headers) -> str:
    """The client's address the server put in the headers (``:peer``), or ``""``."""
    for name, value in reversed(headers):
        if name == PEER_HEADER:
            return value
    return ""


async def not_found(method: str, path: str, headers: Headers, body: Any) -> HttpResult:
    """A handler that serves nothing (the client port once --listen-client-http-urls is set)."""
    return NOT_FOUND


class BodyTooLarge(Exception):
    """A request body above the server's limit."""


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    handler: StreamingHttpHandler
    stream_body: bool

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith("/")


def split_path(path: str) -> tuple[str, str]:
    """``/health?serializable=true`` -> (``/health``, ``serializable=true``)."""
    base, _, query = path.partition("?")
    return base, query


async def read_body(body: HttpRequestBody, limit: int = MAX_BODY_BYTES) -> bytes:
    """A request body as bytes, whichever way it arrived."""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    buf = bytearray()
    async for chunk in body:
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
    return bytes(buf)


class HttpRouter:
    """Handlers by exact path or by prefix; itself an ``HttpHandler``."""

    def __init__(self) -> None:
        self.exact: dict[str, Route] = {}
        self.prefixes: list[Route] = []  # longest first
        self.aliases: list[tuple[str, str]] = []

    def add(self, prefix_or_path: str, handler: StreamingHttpHandler, *, stream_body: bool = False) -> None:
        """Register ``handler`` for a path (``/version``) or, ending in ``/``, a subtree (``/v3/``).

        Registering the same pattern twice replaces the earlier handler."""
        if not prefix_or_path.startswith("/"):
            raise ValueError(f"an HTTP route must start with '/', got {prefix_or_path!r}")
        route = Route(prefix_or_path, handler, stream_body)
        if route.is_prefix:
            self.prefixes = [r for r in self.prefixes if r.pattern != prefix_or_path]
            self.prefixes.append(route)
            self.prefixes.sort(key=lambda r: len(r.pattern), reverse=True)
        else:
            self.exact[prefix_or_path] = route

    def alias(self, old_prefix: str, new_prefix: str) -> None:
        """Serve ``old_prefix...`` as ``new_prefix...`` (the path the handler sees is rewritten)."""
        self.aliases.append((old_prefix, new_prefix))

    def rewrite(self, path: str) -> str:
        for old, new in self.aliases:
            if path.startswith(old):
                return new + path[len(old):]
        return path

    def match(self, path: str) -> Route | None:
        """The route for ``path`` (query string ignored), after the aliases."""
        base, _ = split_path(path)
        route = self.exact.get(base)
        if route is not None:
            return route
        for r in self.prefixes:
            if base.startswith(r.pattern):
                return r
        return None

    def paths(self) -> list[str]:
        return sorted([*self.exact, *(r.pattern for r in self.prefixes)])

    async def dispatch(self, method: str, path: str, headers: Headers, body: HttpRequestBody) -> HttpResult:
        """Route one request; ``body`` may be a chunk stream (read whole unless the route streams)."""
        path = self.rewrite(path)
        route = self.match(path)
        if route is None:
            return NOT_FOUND
        if not route.stream_body and not isinstance(body, bytes | bytearray):
            body = await read_body(body)
        return await route.handler(method, path, headers, body)

    async def __call__(self, method: str, path: str, headers: Headers, body: bytes) -> HttpResult:
        return await self.dispatch(method, path, headers, body)


async def version_document(backend: EtcdBackend) -> dict[str, str]:
    """``GET /version`` as etcd 3.5 answers it, plus Conclave's own version.

    ``etcdserver`` is the version Maintenance.Status reports (one source, so the two agree), in
    purely numeric dotted form (Patroni parses each part as an int); ``etcdcluster`` is its
    ``major.minor.0``, as etcd derives the cluster version."""
    server = (await backend.status()).version
    major, minor = [*server.split("."), "0", "0"][:2]
    return {"etcdserver": server, "etcdcluster": f"{major}.{minor}.0", "conclave": __version__}


# ------------------------------------------------------------------------------ standalone server


class HttpServer:
    """A started HTTP/1.1 server for ``router`` on ``addrs`` (port 0 picks a free one)."""

    def __init__(
        self, router: HttpRouter, runner: Any, sites: list[Any], ports: list[int], host: str,
        active: set[asyncio.Task[Any]],
    ) -> None:
        self.router = router
        self._runner = runner
        self._active = active  # the requests being answered (a watch may last forever)
        self._sites = sites
        self.ports = ports
        self.host = host

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float | None = 1.0) -> None:
        """Close the listeners, end every request still being answered (streams too), bounded."""
        for site in self._sites:
            await site.stop()
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.wait(list(self._active), timeout=grace or 1.0)
        await self._runner.cleanup()


async def _chunks(content: Any) -> AsyncIterator[bytes]:
    async for chunk in content.iter_any():
        yield bytes(chunk)


def _make_aiohttp_handler(
    router: HttpRouter, max_body_bytes: int, active: set[asyncio.Task[Any]]
) -> Callable[[Any], Awaitable[Any]]:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:
            return await answer(request)
        active.add(task)
        try:
            return await answer(request)
        finally:
            active.discard(task)

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        headers = [(k.lower(), v) for k, v in request.headers.items()]
        peername = request.transport.get_extra_info("peername") if request.transport is not None else None
        if isinstance(peername, tuple) and len(peername) >= 2:
            headers.append((PEER_HEADER, grpc_peer(str(peername[0]), int(peername[1]))))
        path = request.raw_path
        route = router.match(router.rewrite(path))
        body: HttpRequestBody
        try:
            if route is not None and route.stream_body:
                body = _chunks(request.content)
            else:
                body = await read_body(_chunks(request.content), max_body_bytes)
            status, hdrs, out = await router.dispatch(request.method, path, headers, body)
        except BodyTooLarge as exc:
            return web.Response(status=413, text=f"{exc}\n")
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, path)
            return web.Response(status=500, text="internal error\n")
        if isinstance(out, bytes | bytearray):
            resp = web.Response(status=status, body=bytes(out))
            for k, v in hdrs:
                resp.headers.add(k, v)
            return resp
        stream = web.StreamResponse(status=status)
        for k, v in hdrs:
            if k.lower() != "transfer-encoding":
                stream.headers.add(k, v)
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        try:
            async for chunk in out:
                await stream.write(bytes(chunk))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("HTTP body stream failed for %s %s", request.method, path)
        finally:
            aclose = getattr(out, "aclose", None)
            if aclose is not None:
                await aclose()
        await stream.write_eof()
        return stream

    return handle


async def start_http_server(
    router: HttpRouter, addrs: list[tuple[str, int]], *, max_body_bytes: int = MAX_BODY_BYTES
) -> HttpServer:
    """Serve ``router`` over plain HTTP/1.1 on every address; raises OSError when one cannot be bound."""
    from aiohttp import web

    active: set[asyncio.Task[Any]] = set()
    server = web.Server(_make_aiohttp_handler(router, max_body_bytes, active), handler_cancellation=True)
    runner = web.ServerRunner(server, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sites: list[Any] = []
    ports: list[int] = []
    try:
        for host, port in addrs:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            sites.append(site)
            sock = site._server.sockets[0]  # type: ignore[union-attr]
            ports.append(int(sock.getsockname()[1]))
    except BaseException:
        await runner.cleanup()
        raise
    return HttpServer(router, runner, sites, ports, addrs[0][0] if addrs else "127.0.0.1", active)
