"""The native protocol: length-prefixed msgpack frames over TCP, a thin adapter onto the backend.

Theory of operation
-------------------
A frame is a big-endian ``u32`` body length followed by a msgpack body. A client sends
``[request_id, method, args]``; the server answers ``[request_id, True, result]`` or
``[request_id, False, [error_class_name, etcd_message]]``. Many requests may be in flight on one
connection and answers come back in completion order (the request id matches them up). Two methods
open streams: ``watch_create`` and ``lease_keep_alive_stream``; after their first answer the server
pushes ``[request_id, None, item]`` frames for that request id until the stream ends (a final
``[request_id, False, error]``, or a pushed watch delivery that says ``canceled``) or the client
sends ``stream_cancel``.

Authentication: each connection holds at most one identity. ``authenticate`` (``[name,
password]``) asks the backend for a token and keeps it for the connection; every later request
on it (unary calls, watch creation, each renewal of a keep-alive stream) is passed to the backend
with ``auth=AuthInfo(token=...)``, and the backend checks it exactly as it checks a gRPC request
(errors such as ``etcdserver: invalid auth token`` come back to the client, which
re-authenticates). On a TLS port whose context verifies client certificates, the certificate's
common name is passed too (``cert_cn``): the backend uses it when no token is held, as etcd does
with ``--client-cert-auth``. A connection without either passes no ``auth`` at all (the backend's
``NO_AUTH`` default). The Auth service's calls (users, roles, enable/disable/status) are reachable
by name (``conclave.wire.native.AUTH_CALLS``).

TLS: ``start_native_server(..., ssl=context)`` serves the ``https://`` native listeners over TLS
with that context (built by the runner from the client TLS flags; ``peer_check`` refuses a
certificate the handshake accepted but etcd's allowed-hostname rule does not); a plain-text peer
on a TLS port fails the handshake and is dropped by the TLS layer before any frame is read.

Values travel as positional lists: a ``conclave.kv.types`` dataclass is the list of its fields in
declaration order (nested dataclasses likewise, tuples as lists, enums as ints), so the wire shape
is fixed by ``kv/types.py`` and both ends share this module's :func:`pack_value` /
:func:`unpack_as`.

Limits: a frame longer than ``max_request_bytes + FRAME_OVERHEAD_BYTES`` or a body that is not a
well-formed envelope closes that connection with a logged reason (nobody else is affected); a
frame whose first bytes arrived more than ``FRAME_READ_TIMEOUT_S`` ago and that is still incomplete
closes its connection too (an idle peer cannot pin a partial frame forever); the bytes buffered
across all connections are capped (``BUFFERED_FRAMES_MAX`` frame limits): a connection whose input
would go over the cap stops being read (the kernel's socket buffer and TCP flow control hold the
rest) until other connections' frames complete or time out; at
``IN_FLIGHT_MAX`` unanswered requests the server stops reading from the connection until answers
drain (back-pressure instead of unbounded memory); while the socket's send buffer is full, no
request is read and watch deliveries stay in the hub (which cancels watchers that fall too far
behind).

What this module must never do: hold a business rule. Validation, quotas, linearizability and
leases live in the backend; here there is only decoding, dispatch, encoding and flow control.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl as ssl_module
import typing
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgpack

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.kv.validation import DEFAULT_MAX_REQUEST_BYTES
from conclave.wire.contract import AuthInfo, MemberInfo, StatusInfo, WatchDelivery, WatchSubscription
from conclave.wire.native import (
    AUTH_CALLS,
    AUTHENTICATE,
    FRAME_HEADER,
    FRAME_OVERHEAD_BYTES,
    MalformedRequest,
    ProtocolViolation,
    UnknownMethod,
    as_list,
    decode_auth_args,
    decode_int,
    error_payload,
    pack_frame,
    unpack_as,
)

log = logging.getLogger("conclave.native")

IN_FLIGHT_MAX = 512  # unanswered requests per connection before the server stops reading
STREAMS_MAX = 1024  # open watch / keep-alive streams per connection
KEEP_ALIVE_INTERVAL_MS_MIN = 50
# A started frame must be complete within this time: 1.6 MB in 10 s is 160 KB/s, far below any
# link a member serves on, while an idle peer holding a partial frame is dropped.
FRAME_READ_TIMEOUT_S = 10.0
# Bytes of unparsed input across every connection of a server, in frame limits (16 x 1.6 MB =
# 26 MB at the defaults): 300 idle peers with 1.6 MB each took a member from 48 to 527 MB before.
BUFFERED_FRAMES_MAX = 16
READ_CHUNK_BYTES = 256 * 1024  # the most one socket read takes (asyncio's own default)




# --------------------------------------------------------------------------- server


@dataclasses.dataclass(slots=True)
class _Stream:
    subscription: WatchSubscription | None = None
    task: asyncio.Task[None] | None = None


AuthKw = dict[str, AuthInfo]  # {} (no identity: the backend's default) or {"auth": AuthInfo(...)}
Handler = Callable[[list[Any], AuthKw], Awaitable[Any]]


class _Dispatch:
    """Method name -> coroutine taking the decoded args list; built once per server."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

        def unary(cls: type, call: Callable[..., Awaitable[Any]]) -> Handler:
            def handler(args: list[Any], auth: AuthKw) -> Awaitable[Any]:
                if len(args) != 1:
                    raise MalformedRequest(f"expected 1 argument, got {len(args)}")
                return call(unpack_as(cls, args[0]), **auth)

            return handler

        def auth_call(method: str) -> Handler:
            def handler(args: list[Any], auth: AuthKw) -> Awaitable[Any]:
                call = getattr(b, method, None)
                if call is None:
                    raise UnknownMethod(f"{UnknownMethod.message}: {method} (this member has no auth support)")
                return typing.cast(Awaitable[Any], call(*decode_auth_args(method, args), **auth))

            return handler

        b = backend
        self.unary: dict[str, Handler] = {
            "range": unary(kv.RangeRequest, b.range),
            "put": unary(kv.PutRequest, b.put),
            "delete_range": unary(kv.DeleteRangeRequest, b.delete_range),
            "txn": unary(kv.TxnRequest, b.txn),
            "compact": unary(kv.CompactionRequest, b.compact),
            "lease_grant": unary(kv.LeaseGrantRequest, b.lease_grant),
            "lease_revoke": unary(kv.LeaseRevokeRequest, b.lease_revoke),
            "lease_time_to_live": unary(kv.LeaseTimeToLiveRequest, b.lease_time_to_live),
            "lease_keep_alive": self._keep_alive,
            "lease_leases": self._leases,
            "member_list": self._member_list,
            "status": self._status,
            "hash_kv": self._hash_kv,
            "move_leader": self._move_leader,
            "ping": self._ping,
        }
        for method in AUTH_CALLS:
            if method != AUTHENTICATE:  # the connection handles it: it keeps the token
                self.unary[method] = auth_call(method)

    @staticmethod
    def _ints(args: list[Any], n: int) -> list[int]:
        if len(args) != n:
            raise MalformedRequest(f"expected {n} arguments, got {len(args)}")
        return [decode_int(a) for a in args]

    async def _keep_alive(self, args: list[Any], auth: AuthKw) -> int:
        (lease_id,) = self._ints(args, 1)
        ttl: int = await self.backend.lease_keep_alive(lease_id, **auth)
        return ttl

    async def _leases(self, args: list[Any], auth: AuthKw) -> Any:
        self._ints(args, 0)
        return await self.backend.lease_leases(**auth)

    async def _member_list(self, args: list[Any], auth: AuthKw) -> list[list[Any]]:
        self._ints(args, 0)
        members: list[MemberInfo] = await self.backend.member_list(**auth)
        native: dict[int, list[str]] = getattr(self.backend, "member_native_urls", dict)()
        return [
            [m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner, list(native.get(m.id, ()))]
            for m in members
        ]

    async def _status(self, args: list[Any], auth: AuthKw) -> list[Any]:
        self._ints(args, 0)
        s: StatusInfo = await self.backend.status(**auth)
        b = self.backend
        return [b.cluster_id, b.member_id, b.raft_term(), s]

    async def _hash_kv(self, args: list[Any], auth: AuthKw) -> Any:
        (revision,) = self._ints(args, 1)
        return await self.backend.hash_kv(revision, **auth)

    async def _ping(self, args: list[Any], auth: AuthKw) -> list[Any]:
        """Liveness and leader knowledge of this member, for clients holding idle streams.

        Open to connections without credentials (clients probe with it before they log in), so
        while auth is on such a connection is told revision 0, not the store's."""
        self._ints(args, 0)
        auth_on = getattr(self.backend, "auth_enabled", None)
        hidden = not auth and auth_on is not None and bool(auth_on())
        return [bool(self.backend.has_leader()), 0 if hidden else int(self.backend.current_revision())]

    async def _move_leader(self, args: list[Any], auth: AuthKw) -> None:
        (target,) = self._ints(args, 1)
        await self.backend.move_leader(target, **auth)


class NativeConnection(asyncio.BufferedProtocol):
    """One client connection: frame parsing, dispatch, flow control and its streams.

    A buffered protocol, so that the server decides how much is read from a socket at once: never
    more than the server-wide budget has left (see ``NativeServer.read_view``).
    """

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.dispatch = server.dispatch
        self.frame_bytes_max = server.frame_bytes_max
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_host = ""  # the client's address without its port: Authenticate's rate limit counts per host
        self.buffer = bytearray()
        self.in_flight = 0
        self.reading_paused = False  # back-pressure: too many requests in flight, or peer not reading
        self.budget_paused = False  # the server-wide cap on buffered input is reached
        self.transport_paused = False
        self.frame_since: float | None = None  # when the incomplete frame at the buffer's head began
        self.frame_timer: asyncio.TimerHandle | None = None
        self.writing_paused = False
        self.closed = False
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.streams: dict[int, _Stream] = {}
        self.ready: dict[int, None] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        self.token = ""  # from this connection's last successful authenticate
        self.cert_cn = ""  # the verified client certificate's common name (TLS ports only)
        self.auth: AuthKw = {}  # what every backend call of this connection gets
        backend = server.backend

        def default(obj: Any) -> Any:
            # Headers carry this member's identity and term, like the gRPC edge fills them.
            if type(obj) is kv.ResponseHeader:
                return [backend.cluster_id, backend.member_id, obj.revision, backend.raft_term()]
            return as_list(obj)

        self.default = default

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        check = self.server.peer_check
        refused = check(transport) if check is not None and transport.get_extra_info("ssl_object") else None
        if refused is not None:
            log.warning("native: refused TLS client %s: %s", self.peer, refused)
            self.closed = True
            self.transport.abort()
            return
        self.cert_cn = certificate_cn(transport.get_extra_info("ssl_object"))
        self._set_auth()
        self.server.connections.add(self)

    def _set_auth(self) -> None:
        if self.token or self.cert_cn:
            self.auth = {"auth": AuthInfo(token=self.token, cert_cn=self.cert_cn, source=self.peer_host)}
        else:
            self.auth = {}

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._drop_buffer()
        for stream in self.streams.values():
            self._end_stream(stream)
        self.streams.clear()
        self.ready.clear()
        for task in list(self.tasks):
            task.cancel()

    def pause_writing(self) -> None:
        # A peer that does not read its answers must not make us buffer more of them: stop
        # reading its requests too until the socket drains.
        self.writing_paused = True
        self._sync_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._pump_watches()
        self._resume()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_view()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        self.buffer += data
        self.server.buffered_bytes += len(data)
        if self.server.buffered_bytes >= self.server.buffered_bytes_max and not self.budget_paused:
            self.budget_paused = True
            self.server.budget_waiters[self] = None
            self.server.note_budget_full()
            self._apply_reading()
        self._parse()

    # ---------------------------------------------------------------- framing

    def _parse(self) -> None:
        buf = self.buffer
        pos = 0
        try:
            while not self.closed and not self._blocked() and len(buf) - pos >= 4:
                (length,) = FRAME_HEADER.unpack_from(buf, pos)
                if length > self.frame_bytes_max:
                    raise ProtocolViolation(f"frame of {length} bytes exceeds the limit of {self.frame_bytes_max}")
                end = pos + 4 + length
                if len(buf) < end:
                    break
                body = bytes(buf[pos + 4 : end])
                pos = end
                self._on_frame(body)
        except ProtocolViolation as exc:
            self.fail(str(exc))
            return
        if pos:
            del buf[:pos]
            self.server.release(pos)
        if not buf:
            self.frame_since = None
        elif pos or self.frame_since is None:
            self.frame_since = self.loop.time()  # a new frame has begun
            self._arm_frame_timer()
        self._sync_reading()

    def _arm_frame_timer(self) -> None:
        if self.frame_timer is None and self.frame_since is not None and not self.closed:
            delay = self.frame_since + self.server.frame_read_timeout_s - self.loop.time()
            self.frame_timer = self.loop.call_later(max(0.0, delay), self._on_frame_timer)

    def _on_frame_timer(self) -> None:
        self.frame_timer = None
        if self.closed or self.frame_since is None:
            return
        now = self.loop.time()
        if self.reading_paused:
            # We stopped reading (back-pressure), not the peer: its frame gets a fresh deadline.
            self.frame_since = now
        elif now - self.frame_since >= self.server.frame_read_timeout_s:
            self.fail(f"a frame begun {now - self.frame_since:.1f}s ago is still incomplete "
                      f"({len(self.buffer)} bytes buffered; the limit is {self.server.frame_read_timeout_s:g}s)")
            return
        self._arm_frame_timer()

    def _drop_buffer(self) -> None:
        """Give this connection's buffered input back to the server-wide budget (it is closing)."""
        if self.frame_timer is not None:
            self.frame_timer.cancel()
            self.frame_timer = None
        self.frame_since = None
        self.server.budget_waiters.pop(self, None)
        if self.buffer:
            size = len(self.buffer)
            self.buffer.clear()
            self.server.release(size)

    def _apply_reading(self) -> None:
        """Pause or resume the socket: paused while back-pressure or the server-wide budget says so."""
        if self.closed or self.transport is None:
            return
        want = self.reading_paused or self.budget_paused
        if want == self.transport_paused:
            return
        self.transport_paused = want
        if want:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _blocked(self) -> bool:
        return self.in_flight >= IN_FLIGHT_MAX or self.writing_paused

    def _sync_reading(self) -> None:
        if self.closed or self.transport is None:
            return
        if self._blocked() and not self.reading_paused:
            self.reading_paused = True
            self._apply_reading()

    def _resume(self) -> None:
        """Read again once answers drained (hysteresis: half the in-flight limit)."""
        if not self.reading_paused or self.closed or self.writing_paused or self.in_flight >= IN_FLIGHT_MAX // 2:
            return
        self.reading_paused = False
        self._parse()  # frames already buffered first
        if not self.reading_paused:
            self._apply_reading()

    def fail(self, reason: str) -> None:
        """Close this connection because its peer broke the protocol (nobody else is affected)."""
        if self.closed:
            return
        log.warning("native: closing connection from %s: %s", self.peer, reason)
        self.closed = True
        self._drop_buffer()
        if self.transport is not None:
            self.transport.abort()

    def _on_frame(self, body: bytes) -> None:
        try:
            msg = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for garbage
            raise ProtocolViolation(f"body is not msgpack ({type(exc).__name__})") from None
        if type(msg) is not list or len(msg) != 3:
            raise ProtocolViolation("body is not a [request_id, method, args] list")
        rid, method, args = msg
        if type(rid) is not int or type(method) is not str or type(args) is not list:
            raise ProtocolViolation("envelope field types are not [int, str, list]")
        handler = self.dispatch.unary.get(method)
        if handler is not None:
            self._start(rid, self._run_unary(rid, handler, args))
        elif method == AUTHENTICATE:
            self._start(rid, self._authenticate(rid, args))
        elif method == "watch_create":
            self._watch_create(rid, args)
        elif method == "lease_keep_alive_stream":
            self._keep_alive_stream(rid, args)
        elif method == "stream_cancel":
            self._stream_cancel(rid, args)
        else:
            self._send([rid, False, [UnknownMethod.__name__, f"{UnknownMethod.message}: {method[:64]}"]])

    # ---------------------------------------------------------------- unary calls

    def _start(self, rid: int, coro: Any) -> None:
        self.in_flight += 1
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1
        self._resume()

    async def _run_unary(self, rid: int, handler: Handler, args: list[Any]) -> None:
        try:
            result = await handler(args, self.auth)
        except asyncio.CancelledError:
            raise
        except kverr.EtcdError as err:
            self._send([rid, False, error_payload(err)])
        except Exception as err:
            log.exception("native: internal error in request %d", rid)
            self._send([rid, False, error_payload(err)])
        else:
            self._send([rid, True, result])

    async def _authenticate(self, rid: int, args: list[Any]) -> None:
        """Check the password with the backend; on success the token holds for this connection."""
        try:
            name, password = decode_auth_args(AUTHENTICATE, args)
            call = getattr(self.server.backend, "authenticate", None)
            if call is None:
                raise UnknownMethod(f"{UnknownMethod.message}: {AUTHENTICATE} (this member has no auth support)")
            token, revision = await call(name, password, auth=AuthInfo(cert_cn=self.cert_cn, source=self.peer_host))
        except asyncio.CancelledError:
            raise
        except kverr.EtcdError as err:
            self._send([rid, False, error_payload(err)])
            return
        except Exception as err:
            log.exception("native: internal error in authenticate %d", rid)
            self._send([rid, False, error_payload(err)])
            return
        self.token = str(token)
        self._set_auth()
        self._send([rid, True, [self.token, revision]])

    # ---------------------------------------------------------------- output

    def _send(self, message: list[Any]) -> None:
        if self.closed:
            return
        self.out.append(pack_frame(message, self.default))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        # Coalescing every answer produced in one loop iteration into one write saves syscalls
        # when many requests are pipelined.
        self.flush_scheduled = False
        # uvloop raises RuntimeError on a write to a transport that is closing but whose
        # connection_lost has not run yet: treat it as closed.
        if self.closed or self.transport is None or self.transport.is_closing() or not self.out:
            self.out.clear()
            return
        data = b"".join(self.out)
        self.out.clear()
        self.transport.write(data)

    # ---------------------------------------------------------------- streams

    def _open_stream(self, rid: int) -> _Stream | None:
        if rid in self.streams:
            self._send([rid, False, [MalformedRequest.__name__, f"{MalformedRequest.message}: stream id in use"]])
            return None
        if len(self.streams) >= STREAMS_MAX:
            self._send([rid, False, ["TooManyRequests", kverr.TooManyRequests.message]])
            return None
        stream = _Stream()
        self.streams[rid] = stream
        return stream

    def _watch_create(self, rid: int, args: list[Any]) -> None:
        backend = self.server.backend
        try:
            if len(args) != 1:
                raise MalformedRequest(f"expected 1 argument, got {len(args)}")
            req: kv.WatchCreateRequest = unpack_as(kv.WatchCreateRequest, args[0])
        except MalformedRequest as err:
            self._send([rid, False, error_payload(err)])
            return
        if req.range_end and req.range_end != b"\0" and req.range_end <= req.key:
            self._send([rid, False, ["WatchRangeEmpty", "mvcc: watcher range is empty"]])
            return
        stream = self._open_stream(rid)
        if stream is None:
            return
        revision = backend.current_revision()
        try:
            # Refused (permission denied, bad token) before it exists: the opening call fails.
            stream.subscription = backend.watch_create(req, lambda: self._mark_ready(rid), **self.auth)
        except kverr.EtcdError as err:
            self.streams.pop(rid, None)
            self._send([rid, False, error_payload(err)])
            return
        # The answer still goes out before any delivery: notify() only schedules the pump.
        self._send([rid, True, revision])

    def _mark_ready(self, rid: int) -> None:
        if self.closed:
            return
        first = not self.ready
        self.ready[rid] = None
        if first:
            self.loop.call_soon(self._pump_watches)

    def _pump_watches(self) -> None:
        while self.ready and not self.writing_paused and not self.closed:
            rid = next(iter(self.ready))
            stream = self.streams.get(rid)
            sub = stream.subscription if stream is not None else None
            delivery: WatchDelivery | None = sub.take() if sub is not None else None
            if delivery is None:
                self.ready.pop(rid, None)
                continue
            if delivery.canceled:
                self.ready.pop(rid, None)
                self.streams.pop(rid, None)
                if sub is not None:
                    sub.cancel()
            self._send([rid, None, delivery])

    def _keep_alive_stream(self, rid: int, args: list[Any]) -> None:
        try:
            lease_id, interval_ms = _Dispatch._ints(args, 2)
        except MalformedRequest as err:
            self._send([rid, False, error_payload(err)])
            return
        stream = self._open_stream(rid)
        if stream is None:
            return
        self._send([rid, True, None])
        stream.task = self.loop.create_task(
            self._keep_alive_loop(rid, lease_id, max(interval_ms, KEEP_ALIVE_INTERVAL_MS_MIN) / 1000)
        )

    async def _keep_alive_loop(self, rid: int, lease_id: int, interval_s: float) -> None:
        backend = self.server.backend
        try:
            while not self.closed:
                try:
                    ttl = await backend.lease_keep_alive(lease_id, **self.auth)  # the token may be renewed
                except kverr.EtcdError as err:
                    self.streams.pop(rid, None)
                    self._send([rid, False, error_payload(err)])
                    return
                self._send([rid, None, ttl])
                await asyncio.sleep(interval_s)
        except asyncio.CancelledError:
            return

    def _stream_cancel(self, rid: int, args: list[Any]) -> None:
        try:
            (target,) = _Dispatch._ints(args, 1)
        except MalformedRequest as err:
            self._send([rid, False, error_payload(err)])
            return
        stream = self.streams.pop(target, None)
        self.ready.pop(target, None)
        if stream is not None:
            self._end_stream(stream)
        self._send([rid, True, stream is not None])

    @staticmethod
    def _end_stream(stream: _Stream) -> None:
        if stream.subscription is not None:
            stream.subscription.cancel()
        if stream.task is not None:
            stream.task.cancel()


class NativeServer:
    """The listeners of one member; ``close()`` is synchronous (the runner calls it on stop)."""

    def __init__(self, backend: Any, max_request_bytes: int, *, frame_read_timeout_s: float = FRAME_READ_TIMEOUT_S,
                 buffered_bytes_max: int = 0) -> None:
        self.backend = backend
        self.peer_check: Callable[[Any], str | None] | None = None  # TLS: refuse a client after the handshake
        self.dispatch = _Dispatch(backend)
        self.frame_bytes_max = max_request_bytes + FRAME_OVERHEAD_BYTES
        self.frame_read_timeout_s = frame_read_timeout_s
        # At least one whole frame fits, or a legitimate large request could never be read.
        self.buffered_bytes_max = max(buffered_bytes_max or BUFFERED_FRAMES_MAX * self.frame_bytes_max,
                                      self.frame_bytes_max + FRAME_HEADER.size)
        self.buffered_bytes = 0
        self.budget_waiters: dict[NativeConnection, None] = {}  # insertion order: first paused, first resumed
        self.budget_full_logged_at = -1e9
        # One read buffer for every connection: the loop reads one socket at a time and each read
        # is copied out (buffer_updated) before the next get_buffer.
        self.read_buffer_view = memoryview(bytearray(READ_CHUNK_BYTES))
        self.connections: set[NativeConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []

    def read_view(self) -> memoryview:
        """Where the next socket read goes: at most what the server-wide budget has left (at least
        one byte; the connection that reads it then pauses), so the budget is a hard bound."""
        left = self.buffered_bytes_max - self.buffered_bytes
        return self.read_buffer_view[: max(1, min(READ_CHUNK_BYTES, left))]

    def release(self, size: int) -> None:
        """``size`` buffered bytes were parsed or dropped: resume connections waiting for budget."""
        self.buffered_bytes -= size
        assert self.buffered_bytes >= 0, self.buffered_bytes
        while self.budget_waiters and self.buffered_bytes < self.buffered_bytes_max:
            conn = next(iter(self.budget_waiters))
            del self.budget_waiters[conn]
            conn.budget_paused = False
            conn._apply_reading()

    def note_budget_full(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self.budget_full_logged_at >= 60:  # once a minute: a flood must not flood the log
            self.budget_full_logged_at = now
            log.warning("native: %d bytes of partial requests buffered across %d connections (limit %d): "
                        "pausing reads until frames complete or time out", self.buffered_bytes,
                        len(self.connections), self.buffered_bytes_max)

    @property
    def ports(self) -> list[int]:
        ports: list[int] = []
        for server in self.servers:
            sockets = getattr(server, "sockets", None) or ()
            ports.extend(int(sock.getsockname()[1]) for sock in sockets[:1])
        return ports

    async def listen(self, host: str, port: int, ssl: ssl_module.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: NativeConnection(self), host, port, reuse_address=True, ssl=ssl)
        self.servers.append(server)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()


def parse_listen_url(url: str) -> tuple[str, int]:
    raw = url if "://" in url else "http://" + url
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"--listen-native-urls: URL needs a host and a port, got {url!r}")
    return parts.hostname, port


def certificate_cn(ssl_object: Any) -> str:
    """The common name of a TLS peer's verified certificate ('' without one or without TLS)."""
    getpeercert = getattr(ssl_object, "getpeercert", None)
    if getpeercert is None:
        return ""
    try:
        cert = getpeercert()  # {} unless the context verified a client certificate
    except (ValueError, ssl_module.SSLError):
        return ""
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""


async def start_native_server(
    backend: Any, cfg: Any, ssl: ssl_module.SSLContext | None = None,
    peer_check: Callable[[Any], str | None] | None = None,
) -> NativeServer:
    """Listen on every ``cfg.listen_native_urls`` address (the runner's entry point).

    ``ssl`` (an ``ssl.SSLContext``) serves the https:// ones (see the module docstring);
    ``peer_check(transport)`` runs after each TLS handshake and a reason it returns closes the
    connection before a frame is read."""
    server = NativeServer(backend, int(getattr(cfg, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)))
    server.peer_check = peer_check
    try:
        for url in cfg.listen_native_urls:
            host, port = parse_listen_url(url)
            await server.listen(host, port, ssl=ssl if url.strip().lower().startswith("https://") else None)
    except BaseException:
        server.close()
        raise
    log.info("native protocol listening on %s%s", ",".join(cfg.listen_native_urls), " (TLS)" if ssl else "")
    return server
