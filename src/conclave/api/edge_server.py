"""The etcd v3 gRPC API on the compiled edge (``conclave._edge``), with the same handlers as grpc.aio.

Theory of operation: the Rust edge owns the client listeners, speaks HTTP/2 + gRPC framing and
HTTP/1.1, and queues what arrives as events. The asyncio loop watches one fd (``loop.add_reader``)
and drains every queued event in one call per wake-up. Each gRPC stream is dispatched to the
*same* method handlers the grpc.aio engine registers (``etcd_handlers``: ``api/convert.py`` and the
service classes, one mapping for both engines), looked up through the public
``GenericRpcHandler.service`` API, with an :class:`EdgeContext` giving them ``abort()`` and
``invocation_metadata()``. Responses are serialised here and handed back to the edge in batches:
one ``Edge.send`` per loop iteration (scheduled with ``call_soon``), the GIL released while Rust
hands them to the streams. A stream the client does not read is reported as blocked; its
producer awaits the edge's WRITABLE event, so nothing is buffered without bound.

Per batch, not per request (the hot path): every KV.Range of one drain is served by ONE task
(``_serve_reads``), not one task each; the linearizable ones share ONE ReadIndex barrier
(``backend.read_barrier()``, taken after the drain, so it covers every write that completed before
any of them arrived) and are then served from the local store in one loop, their responses encoded
in that loop. The context tells the shared handler the barrier is passed (``EdgeContext.linearized``);
the mapping from messages to domain calls stays the one in ``grpc_server``/``convert``. A request of
the batch that fails (undecodable, invalid, no leader) fails only itself. Other unary calls run as
one task each (writes await their own commit; the member batches them into one log entry).

Plain HTTP/1.1 requests on the same port go to ``http_handler(method, path, headers, body)``,
which answers ``(status, headers, body)``; a body that is an async iterable of bytes goes out as a
chunked response. A ``Content-Length`` request body arrives whole with its request; a chunked one
arrives piece by piece (``EV_HTTP_BODY`` events, then ``EV_HTTP_BODY_END``) and is given to an
:class:`~conclave.api.http.HttpRouter` as an async iterable (its ``stream_body`` routes read it as
it comes: a gateway watch whose client keeps its body open), to any other handler whole. The
headers carry the client's address as the pseudo header ``:peer`` (grpc's form,
``ipv4:1.2.3.4:5678``). A client that goes away (a reset, a failed write, or its end of input while
a chunked answer streams) is an ``EV_CANCEL``: the request's task is cancelled, so its producer's
``finally`` runs. The default handler serves ``/health`` and ``/version``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from conclave.api import pb
from conclave.api.grpc_server import DEFAULT_MAX_REQUEST_BYTES, GRPC_OVERHEAD_BYTES, error_status, etcd_handlers
from conclave.api.http import (  # noqa: F401  (HttpBody: re-exported)
    PEER_HEADER,
    HttpBody,
    HttpHandler,
    HttpRouter,
    version_document,
)
from conclave.wire.contract import EtcdBackend

log = logging.getLogger("conclave.api.edge")

try:
    from conclave import _edge  # type: ignore[attr-defined]
except ImportError as exc:  # no Rust toolchain when this tree was installed: the python engine runs
    _edge = None
    IMPORT_ERROR: str = str(exc)
else:
    IMPORT_ERROR = ""

ENGINES = ("auto", "rust", "python")
RANGE_PATH = "/etcdserverpb.KV/Range"
PEER_CN = ":tls-client-cn"  # metadata key the edge adds for a mutual-TLS client's certificate CN
PEER_ADDR = ":peer"  # metadata key the edge adds (before PEER_CN) for the client's address
FLUSH_EVERY = 256  # a producer that yields without awaiting flushes after this many outputs


def available() -> bool:
    return _edge is not None


def choose_engine(requested: str) -> str:
    """``auto`` -> rust when the extension imports, else python; ``rust`` without it is an error."""
    if requested not in ENGINES:
        raise ValueError(f"--grpc-engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "rust" and _edge is None:
        raise RuntimeError(f"--grpc-engine rust: the compiled edge is not built ({IMPORT_ERROR}); run `make edge`")
    if requested == "auto":
        return "rust" if _edge is not None else "python"
    return requested


class _Details:
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[Any, ...] = ()


def method_table(handlers: list[grpc.GenericRpcHandler]) -> dict[str, Any]:
    """gRPC method path -> its RpcMethodHandler, through the public ``GenericRpcHandler.service`` API
    (the edge and the JSON gateway dispatch to the handlers the grpc.aio engine registers)."""
    table: dict[str, Any] = {}
    for service, desc in pb.SERVICES.items():
        for m in desc.methods:
            path = f"/{service}/{m.name}"
            for h in handlers:
                mh = h.service(_Details(path))
                if mh is not None:
                    table[path] = mh
                    break
    return table


class EdgeContext:
    """The part of ``grpc.aio.ServicerContext`` the service handlers use."""

    __slots__ = ("_cancelled", "_meta", "_peer", "_peer_cn", "code", "details", "linearized")

    def __init__(self, meta: list[tuple[str, str]], peer: str = "") -> None:
        """``peer``: the client's address as grpc says it (``ipv4:1.2.3.4:5678``), when known."""
        self._peer_cn = ""
        if meta and meta[-1][0] == PEER_CN:  # the edge appends it last, on mutual-TLS connections
            self._peer_cn = meta.pop()[1]
        self._peer = peer or "edge"
        self._meta = tuple(meta)
        self.code: grpc.StatusCode = grpc.StatusCode.OK
        self.details = ""
        self._cancelled = False
        # Set once the edge has taken the ReadIndex barrier of this request's batch (KVService.range).
        self.linearized = False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._meta

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.code = code
        self.details = details
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._cancelled

    def peer(self) -> str:
        """The client's address, as grpc.aio's: ``ipv4:1.2.3.4:5678`` (``edge`` when unknown)."""
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        """As grpc.aio's: the verified TLS client certificate's common name, when there is one."""
        if not self._peer_cn:
            return {}
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self._peer_cn.encode()]}

    def time_remaining(self) -> float | None:
        return None


class _Requests:
    """The request iterator of a client-streaming call, fed by the edge's events."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        return item


_END = object()


class _Call(EdgeContext):
    """One gRPC stream, and the context its handler sees (one object per request, not two).
    ``started``: its handler runs (in its own task or in a batch's)."""

    __slots__ = ("blocked", "id", "method", "path", "requests", "started", "t0", "task", "writable")

    def __init__(self, sid: int, method: Any, meta: list[tuple[str, str]], path: str) -> None:
        self._peer_cn = ""
        if meta and meta[-1][0] == PEER_CN:  # the edge appends it last, on mutual-TLS connections
            self._peer_cn = meta.pop()[1]
        self._peer = "edge"
        if meta and meta[-1][0] == PEER_ADDR:  # and the client's address before it, always
            self._peer = meta.pop()[1]
        self._meta = tuple(meta)
        self.code = grpc.StatusCode.OK
        self.details = ""
        self._cancelled = False
        self.linearized = False
        self.id = sid
        self.method = method  # grpc.RpcMethodHandler
        self.path = path
        self.requests: _Requests | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = False
        self.blocked = False
        self.writable: asyncio.Event | None = None  # made when the stream first blocks
        self.t0 = 0.0  # the metrics' start time (extensive mode)


class _HttpStream:
    """One HTTP/1.1 request on the edge: its task, flow control for a chunked answer, and the
    pieces of a chunked request body as they arrive (None ends it)."""

    __slots__ = ("blocked", "body", "task", "writable")

    def __init__(self, streamed: bool) -> None:
        self.task: asyncio.Task[None] | None = None
        self.blocked = False
        self.writable: asyncio.Event | None = None
        self.body: asyncio.Queue[bytes | None] | None = asyncio.Queue() if streamed else None


async def _body_pieces(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    """A chunked request body as the edge hands it over (bounded there by the request limit)."""
    while (piece := await queue.get()) is not None:
        yield piece


async def default_http_handler(
    backend: EtcdBackend, method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    ctype = [("content-type", "application/json")]
    if path == "/health":
        ok = backend.has_leader()
        return (200 if ok else 503), ctype, json.dumps({"health": "true" if ok else "false"}).encode()
    if path == "/version":
        return 200, ctype, json.dumps(await version_document(backend)).encode()
    return 404, [], b"404 page not found\n"


class EdgeServer:
    """A started edge serving the etcd v3 API for ``backend`` on ``addrs`` (port 0 picks a free one)."""

    def __init__(
        self,
        backend: EtcdBackend,
        addrs: list[tuple[str, int]],
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_streams: int = 1000,
        workers: int = 1,
        http_handler: HttpHandler | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        client_ca_file: str | None = None,
        secure: list[bool] | None = None,
        crl_file: str | None = None,
        allowed_hostnames: Sequence[str] = (),
        tls_min_version: str = "TLS1.2",
        tls_max_version: str = "",
        cipher_suites: Sequence[str] = (),
        rpc_metrics: Any = None,
    ) -> None:
        """``cert_file``/``key_file`` (PEM) turn on TLS for the addresses whose ``secure`` entry is
        true (all of them when ``secure`` is None); ``client_ca_file`` also requires client
        certificates signed by that CA (mutual TLS), not revoked by ``crl_file`` and, when
        ``allowed_hostnames`` is given, carrying one of them in their SAN. ``tls_min_version`` /
        ``tls_max_version`` (``TLS1.2``, ``TLS1.3``; max empty = the newest) and ``cipher_suites``
        (Go/IANA names) restrict the handshake. ALPN offers h2 and http/1.1. Changed files are
        reloaded for new handshakes; files that do not load keep the old ones (a warning here).
        Bad options or files raise ValueError saying which and why."""
        if _edge is None:
            raise RuntimeError(f"the compiled edge is not built: {IMPORT_ERROR}")
        self.backend = backend
        self.methods: dict[str, Any] = method_table(etcd_handlers(backend))
        self.http_handler = http_handler
        self.rpc_metrics = rpc_metrics  # api/rpcmetrics.RpcMetrics: each call counted at its trailers
        self.loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {
            "cert_file": cert_file,
            "key_file": key_file,
            "client_ca_file": client_ca_file,
            "secure": secure,
            "crl_file": crl_file,
            "allowed_hostnames": list(allowed_hostnames),
            "tls_min_version": tls_min_version,
            "tls_max_version": tls_max_version,
            "cipher_suites": list(cipher_suites),
        }
        self.edge = _edge.Edge(addrs, max_request_bytes + GRPC_OVERHEAD_BYTES, max_streams, workers, **tls)
        self.ports: list[int] = list(self.edge.ports)
        self.host = addrs[0][0] if addrs else "127.0.0.1"
        self.calls: dict[int, _Call] = {}
        self.out: list[tuple[Any, ...]] = []
        self.flush_pending = False
        self.stopped = False
        # KV.Range calls of the current drain, served as one batch (optional backend capability).
        self.read_barrier: Callable[[], Awaitable[None]] | None = getattr(backend, "read_barrier", None)
        self.reads: list[tuple[_Call, Any]] = []
        self.batches: set[asyncio.Task[None]] = set()
        # HTTP/1.1 requests being answered, by stream id: cancelled on EV_CANCEL, paused when blocked.
        self.http: dict[int, _HttpStream] = {}
        self.loop.add_reader(self.edge.fileno(), self._on_events)

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    # -------------------------------------------------------------------------------- outputs

    def _emit(self, item: tuple[Any, ...]) -> None:
        self.out.append(item)
        if len(self.out) >= FLUSH_EVERY:
            self._flush()
        elif not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_pending = False
        if not self.out:
            return
        out, self.out = self.out, []
        for sid in self.edge.send(out):
            call: _Call | _HttpStream | None = self.calls.get(sid) or self.http.get(sid)
            if call is not None:
                call.blocked = True
                if call.writable is None:
                    call.writable = asyncio.Event()
                call.writable.clear()

    def _finish(self, call: _Call, code: grpc.StatusCode, details: str) -> None:
        if self.calls.pop(call.id, None) is not None:
            self._emit((call.id, _edge.OUT_TRAILERS, code.value[0], details))
            if self.rpc_metrics is not None:
                self.rpc_metrics.handled(call.path, code.value[0], call.t0)

    def _answer(self, call: _Call, message: bytes) -> None:
        """A unary call's response and its OK trailers, queued together."""
        if self.calls.pop(call.id, None) is not None:
            self.out.append((call.id, _edge.OUT_MSG, message))
            self._emit((call.id, _edge.OUT_TRAILERS, 0, ""))
            if self.rpc_metrics is not None:
                self.rpc_metrics.sent(call.path, len(message))
                self.rpc_metrics.handled(call.path, 0, call.t0)

    # --------------------------------------------------------------------------------- events

    def _on_events(self) -> None:
        """One wake-up: every queued event in one drain; the KV.Range calls among them become one
        batch (``_serve_reads``), every other unary call its own task."""
        ev_msg, ev_open, ev_half = _edge.EV_MSG, _edge.EV_OPEN, _edge.EV_HALF_CLOSE
        for kind, sid, a, b in self.edge.drain():
            if kind == ev_msg:
                self._on_message(sid, a)
            elif kind == ev_open:
                self._on_open(sid, a, b)
            elif kind == ev_half:
                call = self.calls.get(sid)
                if call is None:
                    continue
                if call.requests is not None:
                    call.requests.queue.put_nowait(_END)
                elif not call.started:
                    self._finish(call, grpc.StatusCode.INTERNAL, "conclave: request message missing")
            elif kind == _edge.EV_CANCEL:
                call = self.calls.pop(sid, None)
                if call is not None:
                    call._cancelled = True
                    if self.rpc_metrics is not None:  # a stream the client closed ends as Canceled
                        self.rpc_metrics.handled(call.path, grpc.StatusCode.CANCELLED.value[0], call.t0)
                    if call.task is not None:
                        call.task.cancel()
                stream = self.http.pop(sid, None)
                if stream is not None and stream.task is not None:
                    stream.task.cancel()
            elif kind == _edge.EV_WRITABLE:
                target = self.calls.get(sid) or self.http.get(sid)
                if target is not None:
                    target.blocked = False
                    if target.writable is not None:
                        target.writable.set()
            elif kind == _edge.EV_HTTP_BODY or kind == _edge.EV_HTTP_BODY_END:
                target_http = self.http.get(sid)
                if target_http is not None and target_http.body is not None:
                    target_http.body.put_nowait(a if kind == _edge.EV_HTTP_BODY else None)
            elif kind == _edge.EV_HTTP:
                stream = _HttpStream(b is None)
                self.http[sid] = stream
                stream.task = self.loop.create_task(self._run_http(sid, a, b))
                stream.task.add_done_callback(functools.partial(self._http_done, sid))
            elif kind == _edge.EV_LOG:  # the edge's own news (TLS files reloaded, or not loadable)
                log.log(a, "%s", b)
        if self.reads:
            reads, self.reads = self.reads, []
            task = self.loop.create_task(self._serve_reads(reads))
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)

    def _on_open(self, sid: int, path: str, meta: list[tuple[str, str]]) -> None:
        method = self.methods.get(path)
        if method is None:
            self._emit((sid, _edge.OUT_TRAILERS, grpc.StatusCode.UNIMPLEMENTED.value[0], "Method not found!"))
            return
        call = _Call(sid, method, meta, path)
        if self.rpc_metrics is not None:
            call.t0 = self.rpc_metrics.start(path)
        self.calls[sid] = call
        if method.request_streaming:
            call.requests = _Requests()
            call.started = True
            call.task = self.loop.create_task(self._run(call, None))

    def _on_message(self, sid: int, data: bytes) -> None:
        call = self.calls.get(sid)
        if call is None:
            return
        if self.rpc_metrics is not None:
            self.rpc_metrics.received(call.path, len(data))
        try:
            request = call.method.request_deserializer(data)
        except Exception:
            self._finish(call, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            if call.task is not None:
                call.task.cancel()
            return
        if call.requests is not None:
            call.requests.queue.put_nowait(request)
        elif not call.started:
            call.started = True
            if call.path == RANGE_PATH and self.read_barrier is not None:
                self.reads.append((call, request))
            elif call.method.response_streaming:
                call.task = self.loop.create_task(self._run(call, request))
            else:
                call.task = self.loop.create_task(self._unary(call, request))
        # a second message on a unary call: ignored, as grpc's server reads one

    # -------------------------------------------------------------------------------- running

    async def _serve_reads(self, batch: list[tuple[_Call, Any]]) -> None:
        """The KV.Range calls of one drain: serializable ones at once, then ONE ReadIndex barrier
        for all the linearizable ones, then each from the local store; responses encoded here.
        Each call still runs the shared handler, so one that fails fails only itself."""
        linearizable = []
        for call, request in batch:
            if getattr(request, "serializable", True):  # undecodable requests too: the handler refuses them
                await self._unary(call, request)
            else:
                linearizable.append((call, request))
        if not linearizable:
            return
        assert self.read_barrier is not None
        try:
            await self.read_barrier()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            code, details = error_status(err, "KV.Range")
            for call, _ in linearizable:
                self._finish(call, code, details)
            return
        for call, request in linearizable:
            call.linearized = True
            await self._unary(call, request)

    async def _unary(self, call: _Call, request: Any) -> None:
        """Run one unary-unary handler and queue its answer (its own task, or inside a batch's)."""
        if call.id not in self.calls:
            return  # cancelled while its batch waited
        m = call.method
        try:
            resp = await m.unary_unary(request, call)
            self._answer(call, m.response_serializer(resp))
        except grpc.aio.AbortError:
            self._finish(call, call.code, call.details)
        except asyncio.CancelledError:
            if call.task is not None:  # its own task was cancelled (EV_CANCEL): nothing to answer
                self.calls.pop(call.id, None)
                return
            raise
        except Exception as err:
            log.exception("unexpected error in %s", call.path)
            self._finish(call, grpc.StatusCode.UNKNOWN, f"Unexpected {type(err)}: {err}")

    async def _run(self, call: _Call, request: Any) -> None:
        m = call.method
        ser = m.response_serializer
        try:
            if not m.response_streaming:
                fn = m.stream_unary if m.request_streaming else m.unary_unary
                resp = await fn(call.requests if m.request_streaming else request, call)
                if call.id in self.calls:
                    self._answer(call, ser(resp))
                return
            fn = m.stream_stream if m.request_streaming else m.unary_stream
            async for item in fn(call.requests if m.request_streaming else request, call):
                if call.id not in self.calls:
                    return
                data = ser(item)
                if self.rpc_metrics is not None:
                    self.rpc_metrics.sent(call.path, len(data))
                self._emit((call.id, _edge.OUT_MSG, data))
                if call.blocked and call.writable is not None:
                    await call.writable.wait()
            self._finish(call, grpc.StatusCode.OK, "")
        except grpc.aio.AbortError:
            self._finish(call, call.code, call.details)
        except asyncio.CancelledError:
            self.calls.pop(call.id, None)
        except Exception as err:
            log.exception("unexpected error in %s", m)
            self._finish(call, grpc.StatusCode.UNKNOWN, f"Unexpected {type(err)}: {err}")

    def _http_done(self, sid: int, _task: asyncio.Task[None]) -> None:
        self.http.pop(sid, None)

    async def _run_http(self, sid: int, req: tuple[str, str, list[tuple[str, str]], str], body: bytes | None) -> None:
        method, path, headers, peer = req
        headers.append((PEER_HEADER, peer))
        handler = self.http_handler
        stream = self.http.get(sid)
        try:
            request_body: Any = body
            if body is None:  # chunked: its pieces arrive as EV_HTTP_BODY events
                if stream is None or stream.body is None:
                    return  # cancelled before it started
                request_body = _body_pieces(stream.body)
                if not isinstance(handler, HttpRouter):  # a router hands it on as its route wants
                    request_body = b"".join([piece async for piece in request_body])
            if isinstance(handler, HttpRouter):
                status, hdrs, out = await handler.dispatch(method, path, headers, request_body)
            elif handler is not None:
                status, hdrs, out = await handler(method, path, headers, request_body)
            else:
                status, hdrs, out = await default_http_handler(self.backend, method, path, headers, request_body)
        except Exception:
            log.exception("HTTP handler failed for %s %s", method, path)
            status, hdrs, out = 500, [], b"internal error\n"
        if isinstance(out, bytes | bytearray):
            self._emit((sid, _edge.OUT_HTTP, status, hdrs, bytes(out)))
            return
        # An async iterable of byte chunks: a chunked HTTP/1.1 response (e.g. a streaming watch),
        # paused while the client does not read, closed (its producer's finally runs) when cancelled.
        self._emit((sid, _edge.OUT_HTTP_HEAD, status, hdrs))
        try:
            async for chunk in out:
                self._emit((sid, _edge.OUT_HTTP_CHUNK, bytes(chunk)))
                if stream is not None and stream.blocked and stream.writable is not None:
                    await stream.writable.wait()
                else:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP body stream failed for %s %s", method, path)
        finally:
            aclose = getattr(out, "aclose", None)
            if aclose is not None:
                await aclose()
        self._emit((sid, _edge.OUT_HTTP_END))

    # ------------------------------------------------------------------------------- shutdown

    async def stop(self, grace: float | None = 1.0) -> None:
        """End every open stream with UNAVAILABLE (the edge sends it), close the listeners."""
        if self.stopped:
            return
        self.stopped = True
        self._flush()
        self.loop.remove_reader(self.edge.fileno())
        await self.loop.run_in_executor(None, self.edge.stop)
        for call in list(self.calls.values()):
            if call.task is not None:
                call.task.cancel()
        for task in list(self.batches):
            task.cancel()
        for stream in list(self.http.values()):
            if stream.task is not None:
                stream.task.cancel()
        self.calls.clear()
        self.http.clear()


async def start_edge_server(
    backend: EtcdBackend,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    addrs: list[tuple[str, int]] | None = None,
    http_handler: HttpHandler | None = None,
    **tls: Any,
) -> EdgeServer:
    """Start the compiled edge for ``backend``; raises OSError when an address cannot be bound.

    ``tls`` is passed to :class:`EdgeServer` (cert_file, key_file, client_ca_file, secure, crl_file,
    allowed_hostnames, tls_min_version, tls_max_version, cipher_suites)."""
    return EdgeServer(
        backend, addrs or [(host, port)], max_request_bytes=max_request_bytes, http_handler=http_handler, **tls
    )
