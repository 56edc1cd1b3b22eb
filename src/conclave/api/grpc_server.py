"""The etcd v3 gRPC services (KV, Watch, Lease, Cluster, Maintenance, Auth, Lock, Election) over grpc.aio.

Theory of operation: handlers are registered as *generic* handlers
(``grpc.method_handlers_generic_handler("etcdserverpb.KV", ...)``) whose (de)serializers come from
the private descriptor pool of :mod:`conclave.api.pb`, so no generated ``_pb2`` module is imported.
Each handler maps the protobuf request to a ``conclave.kv.types`` value (:mod:`conclave.api.convert`),
awaits the :class:`~conclave.wire.contract.EtcdBackend`, and maps the answer back with a full header.

Errors: a ``conclave.kv.errors.EtcdError`` becomes ``context.abort(grpc.StatusCode[err.code],
err.message)`` with etcd's exact text (clients match on it); anything else is logged and becomes
INTERNAL with a short message. Requests carrying the ``hasleader: true`` metadata (clientv3's
``WithRequireLeader``, used by watches) fail with Unavailable "etcdserver: no leader" when the
backend has no leader. RPCs without a handler (Downgrade) answer UNIMPLEMENTED.

Auth: :func:`auth_info` turns a call's metadata (``token``, else ``authorization``; ``grpcgateway-accept``
marks the HTTP gateway, whose peer CN is ignored as etcd ignores it) and its verified client
certificate's CN (``context.auth_context()``: grpc.aio's, or the compiled edge's EdgeContext built from
its ``:tls-client-cn`` metadata) into the :class:`~conclave.wire.contract.AuthInfo` every backend
call takes. Both engines, and the Lock and Election services, use this one function. While the backend
says auth is off (``auth_enabled()``), nothing is read and ``NO_AUTH`` is passed: the hot path does
no auth work on a cluster that never enabled auth.

This module owns watch IDs and watch streams (see :class:`WatchStream`); the backend owns watchers.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from conclave.api import convert, pb
from conclave.api.election import ElectionService
from conclave.api.lock import LockService
from conclave.kv import errors as kverr
from conclave.kv.validation import DEFAULT_MAX_REQUEST_BYTES
from conclave.wire.contract import NO_AUTH, AuthInfo, AuthTokenAhead, EtcdBackend, WatchSubscription

log = logging.getLogger("conclave.api")

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets a gRPC message exceed max-request-bytes by this much
MAX_SEND_BYTES = 2**31 - 1
WATCHERS_PER_STREAM_MAX = 10_000
SNAPSHOT_CHUNK_BYTES = 32 * 1024
INVALID_WATCH_ID = -1  # clientv3.InvalidWatchID: a progress response for the whole stream
LEADER_CHECK_S = 1.0  # like etcd's monitorLeader: one check per (default) election timeout
PROGRESS_NOTIFY_S = 600.0  # etcd's default --experimental-watch-progress-notify-interval (10 min)

Handler = Callable[[Any, Any], Awaitable[Any]]


class Undecodable(kverr.EtcdError):
    """A request message that does not parse: etcd (grpc-go) answers INTERNAL with this prefix."""

    code = "INTERNAL"
    message = "grpc: error unmarshalling request"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.message = f"grpc: error unmarshalling request: {reason}"


@dataclass(frozen=True, slots=True)
class _Garbage:
    """What the deserializer hands on for bytes that do not parse (grpc itself would say UNKNOWN)."""

    reason: str


def _deserializer(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever a corrupt message raises
            return _Garbage(str(exc) or type(exc).__name__)

    return parse


def _refuse_garbage_unary(fn: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
    if streaming_response:
        async def stream_handler(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Garbage):
                await context.abort(grpc.StatusCode.INTERNAL, Undecodable(request.reason).message)
            async for item in fn(request, context):
                yield item

        return stream_handler

    async def handler(request: Any, context: Any) -> Any:
        if isinstance(request, _Garbage):
            await context.abort(grpc.StatusCode.INTERNAL, Undecodable(request.reason).message)
        return await fn(request, context)

    return handler


async def _parsed(request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream's messages; one that does not parse ends the RPC with INTERNAL, as in etcd."""
    async for request in request_iterator:
        if isinstance(request, _Garbage):
            raise Undecodable(request.reason)
        yield request


def _refuse_garbage_streaming(fn: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
    if streaming_response:
        async def stream_handler(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            # grpc.aio tells streaming handlers apart by being async generator functions.
            async for item in fn(_parsed(request_iterator), context):
                yield item

        return stream_handler

    async def handler(request_iterator: Any, context: Any) -> Any:
        return await fn(_parsed(request_iterator), context)

    return handler


def _requires_leader(context: Any) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == "hasleader":
            return bool(value == "true")
    return False


def _peer_host(context: Any) -> str:
    """The client's address without its port (``ipv4:1.2.3.4:5`` -> ``ipv4:1.2.3.4``), "" when unknown."""
    try:
        peer = str(context.peer() or "")
    except Exception:  # a context without a peer (tests' fakes)
        return ""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def auth_info(context: Any, with_source: bool = False) -> AuthInfo:
    """Who a call says it is: metadata ``token`` (else ``authorization``), else the client cert's CN.

    The CN counts only when no token is sent and the call did not come through the gateway
    (metadata ``grpcgateway-accept``), as etcd's AuthInfoFromCtx / AuthInfoFromTLS decide.
    ``with_source`` adds the client's address (Authenticate's rate limit; costly, so only there).
    """
    token = ""
    authorization = ""
    gateway = False
    for key, value in context.invocation_metadata() or ():
        if key == "token":
            token = token or str(value)
        elif key == "authorization":
            authorization = authorization or str(value)
        elif key == "grpcgateway-accept":
            gateway = True
    token = token or authorization
    cn = ""
    if not token and not gateway:
        try:
            names = (context.auth_context() or {}).get("x509_common_name") or ()
        except Exception:  # a context without TLS information
            names = ()
        if names:
            first = names[0]
            cn = first.decode() if isinstance(first, bytes | bytearray) else str(first)
    return AuthInfo(token=token, cert_cn=cn, gateway=gateway, source=_peer_host(context) if with_source else "")


def _go_code(code: str) -> str:
    """A gRPC code name as grpc-go prints it in an error text (PERMISSION_DENIED -> PermissionDenied)."""
    return "".join(part.capitalize() for part in code.split("_"))


def _never() -> bool:
    return False


def error_status(err: BaseException, where: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a handler's error becomes: etcd's code and text, or a logged INTERNAL."""
    if isinstance(err, kverr.EtcdError):
        return grpc.StatusCode[err.code], err.message
    log.exception("internal error in %s", where, exc_info=err)
    return grpc.StatusCode.INTERNAL, f"conclave: internal error in {where}: {type(err).__name__}"


async def _abort_for(context: Any, err: BaseException, where: str) -> None:
    code, message = error_status(err, where)
    await context.abort(code, message)


class Edge:
    """What every service shares: the backend, header building and error mapping."""

    def __init__(self, backend: EtcdBackend) -> None:
        self.backend = backend
        # A backend without auth (the tests' fake) never needs an AuthInfo.
        self._auth_on: Callable[[], bool] = getattr(backend, "auth_enabled", None) or _never

    def auth(self, context: Any) -> AuthInfo:
        """The caller's AuthInfo, or NO_AUTH without reading anything while auth is off."""
        return auth_info(context) if self._auth_on() else NO_AUTH

    def header(self, revision: int) -> Any:
        b = self.backend
        return pb.ResponseHeader(
            cluster_id=b.cluster_id, member_id=b.member_id, revision=revision, raft_term=b.raft_term()
        )

    def cluster_header(self) -> Any:
        """etcd's Cluster service fills cluster id, member id and term only: no revision."""
        return self.header(0)

    def current_header(self) -> Any:
        """For calls that touch no key: etcd still reports the store's current revision."""
        return self.header(self.backend.current_revision())

    async def catch_up(self) -> None:
        """One read barrier: everything committed before now is applied here afterwards."""
        barrier = getattr(self.backend, "read_barrier", None)
        if barrier is None:
            raise kverr.InvalidAuthToken()
        await barrier()

    def check_leader(self, context: Any) -> None:
        if not self.backend.has_leader() and _requires_leader(context):
            raise kverr.NoLeader()

    def unary(self, fn: Handler, where: str) -> Handler:
        async def handler(request: Any, context: Any) -> Any:
            # The undecodable-request check is done here, not by one more wrapping coroutine
            # (service_handler skips it for handlers marked refuses_garbage): one frame less per call.
            if isinstance(request, _Garbage):
                await context.abort(grpc.StatusCode.INTERNAL, Undecodable(request.reason).message)
            try:
                self.check_leader(context)
                try:
                    return await fn(request, context)
                except AuthTokenAhead:  # the token's login is not applied here yet: catch up, once
                    await self.catch_up()
                    return await fn(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort_for(context, err, where)

        handler.refuses_garbage = True  # type: ignore[attr-defined]
        return handler

    def stream(self, fn: Callable[[Any, Any], AsyncIterator[Any]], where: str) -> Callable[[Any, Any], Any]:
        async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                self.check_leader(context)
                async for item in fn(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort_for(context, err, where)

        return handler


def service_handler(service: str, methods: dict[str, Callable[..., Any]]) -> grpc.GenericRpcHandler:
    """A generic handler for ``service`` whose (de)serializers come from the private pool."""
    desc = pb.SERVICES[service]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, fn in methods.items():
        method = desc.methods_by_name[name]
        req_cls = pb.message_class(method.input_type.name)
        resp_cls = pb.message_class(method.output_type.name)
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        elif method.client_streaming:
            make = grpc.stream_unary_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        if method.client_streaming:
            fn = _refuse_garbage_streaming(fn, method.server_streaming)
        elif not getattr(fn, "refuses_garbage", False):
            fn = _refuse_garbage_unary(fn, method.server_streaming)
        handlers[name] = make(
            fn, request_deserializer=_deserializer(req_cls), response_serializer=resp_cls.SerializeToString
        )
    return grpc.method_handlers_generic_handler(service, handlers)


# --------------------------------------------------------------------------------------------- KV


class KVService:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.backend = edge.backend

    async def range(self, request: Any, context: Any) -> Any:
        # The compiled edge may already have taken the ReadIndex barrier of this request's batch
        # after the request arrived (edge_server._serve_reads): then the local store answers.
        r = await self.backend.range(convert.range_request_from_pb(request, getattr(context, "linearized", False)),
                                     auth=self.edge.auth(context))
        return convert.range_response_to_pb(r, self.edge.header(r.header.revision))

    async def put(self, request: Any, context: Any) -> Any:
        r = await self.backend.put(convert.put_request_from_pb(request), auth=self.edge.auth(context))
        return convert.put_response_to_pb(r, self.edge.header(r.header.revision))

    async def delete_range(self, request: Any, context: Any) -> Any:
        r = await self.backend.delete_range(convert.delete_range_request_from_pb(request), auth=self.edge.auth(context))
        return convert.delete_range_response_to_pb(r, self.edge.header(r.header.revision))

    async def txn(self, request: Any, context: Any) -> Any:
        r = await self.backend.txn(convert.txn_request_from_pb(request), auth=self.edge.auth(context))
        return convert.txn_response_to_pb(r, self.edge.header(r.header.revision))

    async def compact(self, request: Any, context: Any) -> Any:
        r = await self.backend.compact(convert.compaction_request_from_pb(request), auth=self.edge.auth(context))
        return pb.CompactionResponse(header=self.edge.header(r.header.revision))

    def handler(self) -> grpc.GenericRpcHandler:
        e = self.edge
        return service_handler(
            "etcdserverpb.KV",
            {
                "Range": e.unary(self.range, "KV.Range"),
                "Put": e.unary(self.put, "KV.Put"),
                "DeleteRange": e.unary(self.delete_range, "KV.DeleteRange"),
                "Txn": e.unary(self.txn, "KV.Txn"),
                "Compact": e.unary(self.compact, "KV.Compact"),
            },
        )


# ------------------------------------------------------------------------------------------ Watch


@dataclass(slots=True)
class _Watch:
    watch_id: int
    subscription: WatchSubscription | None
    progress_notify: bool = False
    sent_since_tick: bool = False


class WatchStream:
    """One Watch RPC: many watchers multiplexed on one bidi stream.

    The reader task turns requests into control responses (created / canceled / progress) and
    backend subscriptions; ``notify`` callbacks mark watchers ready; the writer (``responses``)
    always sends control responses before events, so "created" precedes a watcher's first event.
    """

    def __init__(self, edge: Edge, auth: Callable[[], AuthInfo] | None = None) -> None:
        self.edge = edge
        self.auth = auth if auth is not None else (lambda: NO_AUTH)  # read at each create (token expiry)
        self.watches: dict[int, _Watch] = {}
        self.next_id = 0
        self.control: collections.deque[Any] = collections.deque()
        self.ready: dict[int, None] = {}  # insertion-ordered set of watch ids with deliveries
        self.wake = asyncio.Event()
        self.progress_pending = False
        self.reader_done = False  # the client half-closed: etcd keeps serving the stream's watchers
        self.reader_error: BaseException | None = None
        self.leader_lost = False
        self.ticker: asyncio.Task[None] | None = None

    def _notify_for(self, watch_id: int) -> Callable[[], None]:
        def notify() -> None:
            self.ready[watch_id] = None
            self.wake.set()

        return notify

    def _send_control(self, message: Any) -> None:
        self.control.append(message)
        self.wake.set()

    def create(self, req: Any) -> None:
        """Register one watcher; raises AuthTokenAhead (nothing changed) for a login not applied here yet."""
        create = convert.watch_create_request_from_pb(req)
        revision = self.edge.backend.current_revision()
        next_id = self.next_id
        watch_id = create.watch_id
        if watch_id == 0:
            while self.next_id in self.watches:
                self.next_id += 1
            watch_id = self.next_id
            self.next_id += 1
        reason = ""
        if watch_id in self.watches:
            reason = "mvcc: duplicate watch ID provided on the WatchStream"
        elif len(self.watches) >= WATCHERS_PER_STREAM_MAX:
            reason = f"conclave: more than {WATCHERS_PER_STREAM_MAX} watchers on one stream"
        elif create.range_end and create.range_end != b"\0" and create.range_end <= create.key:
            reason = "mvcc: watcher range is empty"
        subscription: WatchSubscription | None = None
        if not reason:
            try:  # auth is checked at create time, as etcd does
                subscription = self.edge.backend.watch_create(create, self._notify_for(watch_id), auth=self.auth())
            except AuthTokenAhead:
                self.next_id = next_id
                raise
            except kverr.EtcdError as err:  # etcd: a refused watch is created and canceled at once
                self.next_id = next_id
                reason = f"rpc error: code = {_go_code(err.code)} desc = {err.message}"
        if reason:  # etcd answers a refused watch with the invalid id -1, created and canceled at once
            self._refused(reason, revision)
            return
        watch = _Watch(watch_id, subscription, progress_notify=create.progress_notify)
        self.watches[watch_id] = watch
        if create.progress_notify and self.ticker is None:
            self.ticker = asyncio.get_running_loop().create_task(self.progress_ticker())
        self._send_control(pb.WatchResponse(header=self.edge.header(revision), watch_id=watch_id, created=True))

    def _refused(self, reason: str, revision: int) -> None:
        self._send_control(
            pb.WatchResponse(
                header=self.edge.header(revision),
                watch_id=INVALID_WATCH_ID,
                created=True,
                canceled=True,
                cancel_reason=reason,
            )
        )

    def _refuse(self, err: kverr.EtcdError) -> None:
        self._refused(f"rpc error: code = {_go_code(err.code)} desc = {err.message}",
                      self.edge.backend.current_revision())

    def cancel(self, watch_id: int) -> None:
        watch = self.watches.pop(watch_id, None)
        if watch is None:
            return  # like etcd: cancelling an unknown watcher is silently ignored
        if watch.subscription is not None:
            watch.subscription.cancel()
        self.ready.pop(watch_id, None)
        self._send_control(
            pb.WatchResponse(
                header=self.edge.header(self.edge.backend.current_revision()), watch_id=watch_id, canceled=True
            )
        )

    async def read(self, request_iterator: AsyncIterator[Any]) -> None:
        """Handle the client's requests until it half-closes (one-shot watchers do so right after
        their create request). The stream lives on, as in etcd, until the client cancels the RPC."""
        try:
            async for req in request_iterator:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    try:
                        self.create(req.create_request)
                    except AuthTokenAhead:  # the token's login is not applied here yet: catch up, once
                        await self.edge.catch_up()
                        try:
                            self.create(req.create_request)
                        except AuthTokenAhead:
                            self._refuse(kverr.InvalidAuthToken())
                elif which == "cancel_request":
                    self.cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    self.progress_pending = True
                    self.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.reader_error = exc
        finally:
            self.reader_done = True
            self.wake.set()

    def _all_synced(self) -> bool:
        if self.ready:
            return False
        return all(w.subscription is None or w.subscription.synced_revision is not None for w in self.watches.values())

    def _next_delivery(self) -> Any | None:
        while self.ready:
            watch_id = next(iter(self.ready))
            watch = self.watches.get(watch_id)
            if watch is None or watch.subscription is None:
                self.ready.pop(watch_id, None)
                continue
            delivery = watch.subscription.take()
            if delivery is None:
                self.ready.pop(watch_id, None)
                continue
            if delivery.canceled:
                self.ready.pop(watch_id, None)
                self.watches.pop(watch_id, None)
                watch.subscription.cancel()
            watch.sent_since_tick = True
            if delivery.canceled and delivery.compact_revision:
                # etcd's compaction cancel: compact_revision set, header revision 0, no reason text
                # (clients key on compact_revision; the native protocol keeps the reason)
                return convert.watch_delivery_to_pb(dataclasses.replace(delivery, cancel_reason=""), watch_id,
                                                    self.edge.header(0))
            revision = delivery.revision or self.edge.backend.current_revision()
            return convert.watch_delivery_to_pb(delivery, watch_id, self.edge.header(revision))
        return None

    async def progress_ticker(self) -> None:
        """Every PROGRESS_NOTIFY_S, an empty response to each idle, synced progress_notify watcher."""
        while True:  # cancelled by close()
            await asyncio.sleep(PROGRESS_NOTIFY_S)
            for watch in self.watches.values():
                idle = not watch.sent_since_tick and watch.watch_id not in self.ready
                watch.sent_since_tick = False
                sub = watch.subscription
                if not (watch.progress_notify and idle and sub is not None):
                    continue
                synced = sub.synced_revision
                if synced is not None:
                    self._send_control(pb.WatchResponse(header=self.edge.header(synced), watch_id=watch.watch_id))

    async def monitor_leader(self) -> None:
        """For ``hasleader`` streams: end the stream once the member has no leader (etcd does too)."""
        while True:  # cancelled when the stream ends
            await asyncio.sleep(LEADER_CHECK_S)
            if not self.edge.backend.has_leader():
                self.leader_lost = True
                self.wake.set()
                return

    async def responses(self) -> AsyncIterator[Any]:
        while True:
            if self.leader_lost:
                raise kverr.NoLeader()
            if self.reader_error is not None:
                raise self.reader_error
            if self.control:
                yield self.control.popleft()
                continue
            message = self._next_delivery()
            if message is not None:
                yield message
                continue
            if self.progress_pending and self._all_synced():
                self.progress_pending = False
                revision = self.edge.backend.current_revision()
                yield pb.WatchResponse(header=self.edge.header(revision), watch_id=INVALID_WATCH_ID)
                continue
            self.wake.clear()
            await self.wake.wait()

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        for watch in self.watches.values():
            if watch.subscription is not None:
                watch.subscription.cancel()
        self.watches.clear()
        self.ready.clear()


class WatchService:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    async def watch(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        stream = WatchStream(self.edge, lambda: self.edge.auth(context))
        reader = asyncio.create_task(stream.read(request_iterator))
        monitor = asyncio.create_task(stream.monitor_leader()) if _requires_leader(context) else None
        try:
            async for message in stream.responses():
                yield message
        finally:
            reader.cancel()
            if monitor is not None:
                monitor.cancel()
            stream.close()

    def handler(self) -> grpc.GenericRpcHandler:
        return service_handler("etcdserverpb.Watch", {"Watch": self.edge.stream(self.watch, "Watch.Watch")})


# ------------------------------------------------------------------------------------------ Lease


class LeaseService:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.backend = edge.backend

    async def grant(self, request: Any, context: Any) -> Any:
        r = await self.backend.lease_grant(convert.lease_grant_request_from_pb(request), auth=self.edge.auth(context))
        return convert.lease_grant_response_to_pb(r, self.edge.header(r.header.revision))

    async def revoke(self, request: Any, context: Any) -> Any:
        r = await self.backend.lease_revoke(convert.lease_revoke_request_from_pb(request), auth=self.edge.auth(context))
        return convert.lease_revoke_response_to_pb(r, self.edge.header(r.header.revision))

    async def time_to_live(self, request: Any, context: Any) -> Any:
        r = await self.backend.lease_time_to_live(convert.lease_time_to_live_request_from_pb(request),
                                                  auth=self.edge.auth(context))
        return convert.lease_time_to_live_response_to_pb(r, self.edge.header(r.header.revision))

    async def leases(self, request: Any, context: Any) -> Any:
        r = await self.backend.lease_leases(auth=self.edge.auth(context))
        return convert.lease_leases_response_to_pb(r, self.edge.header(r.header.revision))

    async def keep_alive(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for req in request_iterator:
            try:
                try:
                    ttl = await self.backend.lease_keep_alive(req.ID, auth=self.edge.auth(context))
                except AuthTokenAhead:  # the token's login is not applied here yet: catch up, once
                    await self.edge.catch_up()
                    ttl = await self.backend.lease_keep_alive(req.ID, auth=self.edge.auth(context))
            except kverr.LeaseNotFound:
                ttl = 0  # etcd answers an unknown lease with TTL 0, not an error
            yield pb.LeaseKeepAliveResponse(
                header=self.edge.header(self.backend.current_revision()), ID=req.ID, TTL=ttl
            )

    def handler(self) -> grpc.GenericRpcHandler:
        e = self.edge
        return service_handler(
            "etcdserverpb.Lease",
            {
                "LeaseGrant": e.unary(self.grant, "Lease.LeaseGrant"),
                "LeaseRevoke": e.unary(self.revoke, "Lease.LeaseRevoke"),
                "LeaseTimeToLive": e.unary(self.time_to_live, "Lease.LeaseTimeToLive"),
                "LeaseLeases": e.unary(self.leases, "Lease.LeaseLeases"),
                "LeaseKeepAlive": e.stream(self.keep_alive, "Lease.LeaseKeepAlive"),
            },
        )


# ---------------------------------------------------------------------------------------- Cluster


class ClusterService:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.backend = edge.backend

    def _members(self, members: list[Any]) -> list[Any]:
        return [convert.member_to_pb(m) for m in members]

    async def member_list(self, request: Any, context: Any) -> Any:
        members = await self.backend.member_list(auth=self.edge.auth(context))
        return pb.MemberListResponse(header=self.edge.cluster_header(), members=self._members(members))

    async def member_add(self, request: Any, context: Any) -> Any:
        added, members = await self.backend.member_add(list(request.peerURLs), request.isLearner,
                                                       auth=self.edge.auth(context))
        return pb.MemberAddResponse(
            header=self.edge.cluster_header(), member=convert.member_to_pb(added), members=self._members(members)
        )

    async def member_remove(self, request: Any, context: Any) -> Any:
        members = await self.backend.member_remove(request.ID, auth=self.edge.auth(context))
        return pb.MemberRemoveResponse(header=self.edge.cluster_header(), members=self._members(members))

    async def member_update(self, request: Any, context: Any) -> Any:
        members = await self.backend.member_update(request.ID, list(request.peerURLs), auth=self.edge.auth(context))
        return pb.MemberUpdateResponse(header=self.edge.cluster_header(), members=self._members(members))

    async def member_promote(self, request: Any, context: Any) -> Any:
        members = await self.backend.member_promote(request.ID, auth=self.edge.auth(context))
        return pb.MemberPromoteResponse(header=self.edge.cluster_header(), members=self._members(members))

    def handler(self) -> grpc.GenericRpcHandler:
        e = self.edge
        return service_handler(
            "etcdserverpb.Cluster",
            {
                "MemberList": e.unary(self.member_list, "Cluster.MemberList"),
                "MemberAdd": e.unary(self.member_add, "Cluster.MemberAdd"),
                "MemberRemove": e.unary(self.member_remove, "Cluster.MemberRemove"),
                "MemberUpdate": e.unary(self.member_update, "Cluster.MemberUpdate"),
                "MemberPromote": e.unary(self.member_promote, "Cluster.MemberPromote"),
            },
        )


# ------------------------------------------------------------------------------------ Maintenance


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""


async def _rechunk(first: bytes, rest: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """``first`` then ``rest`` as pieces of exactly ``size`` bytes (the last one shorter)."""
    buf = bytearray(first)
    while True:
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
        chunk = await anext(rest, None)
        if chunk is None:
            break
        buf += chunk
    if buf:
        yield bytes(buf)


class MaintenanceService:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.backend = edge.backend

    async def status(self, request: Any, context: Any) -> Any:
        s = await self.backend.status(auth=self.edge.auth(context))
        return convert.status_to_pb(s, self.edge.header(s.revision))

    async def alarm(self, request: Any, context: Any) -> Any:
        alarms = await self.backend.alarm(
            convert.alarm_action_from_pb(request.action), request.memberID, convert.alarm_type_from_pb(request.alarm),
            auth=self.edge.auth(context),
        )
        return pb.AlarmResponse(
            header=self.edge.header(self.backend.current_revision()),
            alarms=[convert.alarm_member_to_pb(a) for a in alarms],
        )

    async def hash_kv(self, request: Any, context: Any) -> Any:
        r = await self.backend.hash_kv(request.revision, auth=self.edge.auth(context))
        return convert.hash_kv_response_to_pb(r, self.edge.header(r.header.revision))

    async def hash(self, request: Any, context: Any) -> Any:
        r = await self.backend.hash_kv(0, auth=self.edge.auth(context))
        return pb.HashResponse(header=self.edge.header(r.header.revision), hash=r.hash)

    async def defragment(self, request: Any, context: Any) -> Any:
        await self.backend.defragment(auth=self.edge.auth(context))
        return pb.DefragmentResponse(header=self.edge.current_header())

    async def move_leader(self, request: Any, context: Any) -> Any:
        await self.backend.move_leader(request.targetID, auth=self.edge.auth(context))
        return pb.MoveLeaderResponse(header=self.edge.current_header())

    async def snapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # remaining_bytes needs the total: a backend stream that knows its size (``size``, set once
        # its first chunk is produced) is relayed as it comes, any other is gathered first.
        stream = self.backend.snapshot(auth=self.edge.auth(context))
        first = await anext(stream, b"")
        size = getattr(stream, "size", None)
        if not isinstance(size, int):
            first += b"".join([chunk async for chunk in stream])
            size = len(first)
            stream = _no_chunks()
        revision = self.backend.current_revision()
        sent = 0
        try:
            async for piece in _rechunk(first, stream, SNAPSHOT_CHUNK_BYTES):
                sent += len(piece)
                yield pb.SnapshotResponse(header=self.edge.header(revision), remaining_bytes=max(0, size - sent),
                                          blob=piece, version="3.6.0")
        finally:  # a client that went away: let the backend drop its file now
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if sent != size:
            raise RuntimeError(f"the snapshot stream ended at {sent} of {size} bytes")
        if not sent:
            yield pb.SnapshotResponse(header=self.edge.header(revision), remaining_bytes=0, blob=b"", version="3.6.0")

    def handler(self) -> grpc.GenericRpcHandler:
        e = self.edge
        return service_handler(
            "etcdserverpb.Maintenance",
            {
                "Status": e.unary(self.status, "Maintenance.Status"),
                "Alarm": e.unary(self.alarm, "Maintenance.Alarm"),
                "HashKV": e.unary(self.hash_kv, "Maintenance.HashKV"),
                "Hash": e.unary(self.hash, "Maintenance.Hash"),
                "Defragment": e.unary(self.defragment, "Maintenance.Defragment"),
                "MoveLeader": e.unary(self.move_leader, "Maintenance.MoveLeader"),
                "Snapshot": e.stream(self.snapshot, "Maintenance.Snapshot"),
            },
        )


# ------------------------------------------------------------------------------------------- Auth


class AuthService:
    """etcd's Auth service: enable/disable/status, Authenticate, users and roles (rules in the backend)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.backend = edge.backend

    def _auth(self, context: Any) -> AuthInfo:
        # Authenticate and AuthEnable are answered while auth is off too: always read the caller.
        return auth_info(context)

    async def auth_enable(self, request: Any, context: Any) -> Any:
        rev = await self.backend.auth_enable(auth=self._auth(context))
        return pb.AuthEnableResponse(header=self.edge.header(rev))

    async def auth_disable(self, request: Any, context: Any) -> Any:
        rev = await self.backend.auth_disable(auth=self._auth(context))
        return pb.AuthDisableResponse(header=self.edge.header(rev))

    async def auth_status(self, request: Any, context: Any) -> Any:
        enabled, auth_revision, rev = await self.backend.auth_status(auth=self._auth(context))
        return pb.AuthStatusResponse(header=self.edge.header(rev), enabled=enabled, authRevision=auth_revision)

    async def authenticate(self, request: Any, context: Any) -> Any:
        token, rev = await self.backend.authenticate(request.name, request.password,
                                                     auth=auth_info(context, with_source=True))
        return pb.AuthenticateResponse(header=self.edge.header(rev), token=token)

    async def user_add(self, request: Any, context: Any) -> Any:
        no_password = request.HasField("options") and request.options.no_password
        rev = await self.backend.user_add(request.name, request.password, bool(no_password), request.hashedPassword,
                                          auth=self._auth(context))  # fmt: skip
        return pb.AuthUserAddResponse(header=self.edge.header(rev))

    async def user_get(self, request: Any, context: Any) -> Any:
        roles, rev = await self.backend.user_get(request.name, auth=self._auth(context))
        return pb.AuthUserGetResponse(header=self.edge.header(rev), roles=list(roles))

    async def user_list(self, request: Any, context: Any) -> Any:
        users, rev = await self.backend.user_list(auth=self._auth(context))
        return pb.AuthUserListResponse(header=self.edge.header(rev), users=list(users))

    async def user_delete(self, request: Any, context: Any) -> Any:
        rev = await self.backend.user_delete(request.name, auth=self._auth(context))
        return pb.AuthUserDeleteResponse(header=self.edge.header(rev))

    async def user_change_password(self, request: Any, context: Any) -> Any:
        rev = await self.backend.user_change_password(request.name, request.password, request.hashedPassword,
                                                      auth=self._auth(context))  # fmt: skip
        return pb.AuthUserChangePasswordResponse(header=self.edge.header(rev))

    async def user_grant_role(self, request: Any, context: Any) -> Any:
        rev = await self.backend.user_grant_role(request.user, request.role, auth=self._auth(context))
        return pb.AuthUserGrantRoleResponse(header=self.edge.header(rev))

    async def user_revoke_role(self, request: Any, context: Any) -> Any:
        rev = await self.backend.user_revoke_role(request.name, request.role, auth=self._auth(context))
        return pb.AuthUserRevokeRoleResponse(header=self.edge.header(rev))

    async def role_add(self, request: Any, context: Any) -> Any:
        rev = await self.backend.role_add(request.name, auth=self._auth(context))
        return pb.AuthRoleAddResponse(header=self.edge.header(rev))

    async def role_get(self, request: Any, context: Any) -> Any:
        perms, rev = await self.backend.role_get(request.role, auth=self._auth(context))
        return pb.AuthRoleGetResponse(header=self.edge.header(rev), perm=[convert.permission_to_pb(p) for p in perms])

    async def role_list(self, request: Any, context: Any) -> Any:
        roles, rev = await self.backend.role_list(auth=self._auth(context))
        return pb.AuthRoleListResponse(header=self.edge.header(rev), roles=list(roles))

    async def role_delete(self, request: Any, context: Any) -> Any:
        rev = await self.backend.role_delete(request.role, auth=self._auth(context))
        return pb.AuthRoleDeleteResponse(header=self.edge.header(rev))

    async def role_grant_permission(self, request: Any, context: Any) -> Any:
        perm = convert.permission_from_pb(request.perm) if request.HasField("perm") else None
        if perm is None:
            raise kverr.PermissionNotGiven()
        rev = await self.backend.role_grant_permission(request.name, perm, auth=self._auth(context))
        return pb.AuthRoleGrantPermissionResponse(header=self.edge.header(rev))

    async def role_revoke_permission(self, request: Any, context: Any) -> Any:
        rev = await self.backend.role_revoke_permission(request.role, bytes(request.key), bytes(request.range_end),
                                                        auth=self._auth(context))  # fmt: skip
        return pb.AuthRoleRevokePermissionResponse(header=self.edge.header(rev))

    def handler(self) -> grpc.GenericRpcHandler:
        e = self.edge
        calls = {
            "AuthEnable": self.auth_enable, "AuthDisable": self.auth_disable, "AuthStatus": self.auth_status,
            "Authenticate": self.authenticate, "UserAdd": self.user_add, "UserGet": self.user_get,
            "UserList": self.user_list, "UserDelete": self.user_delete,
            "UserChangePassword": self.user_change_password, "UserGrantRole": self.user_grant_role,
            "UserRevokeRole": self.user_revoke_role, "RoleAdd": self.role_add, "RoleGet": self.role_get,
            "RoleList": self.role_list, "RoleDelete": self.role_delete,
            "RoleGrantPermission": self.role_grant_permission, "RoleRevokePermission": self.role_revoke_permission,
        }
        if not hasattr(self.backend, "authenticate"):  # a backend without auth answers as etcd with auth off
            calls = {"AuthStatus": self._off_status, "AuthDisable": self._off_disable,
                     "Authenticate": self._off_authenticate}  # fmt: skip
        return service_handler("etcdserverpb.Auth", {name: e.unary(fn, f"Auth.{name}") for name, fn in calls.items()})

    async def _off_status(self, request: Any, context: Any) -> Any:
        return pb.AuthStatusResponse(header=self.edge.current_header(), enabled=False, authRevision=0)

    async def _off_disable(self, request: Any, context: Any) -> Any:
        return pb.AuthDisableResponse(header=self.edge.current_header())

    async def _off_authenticate(self, request: Any, context: Any) -> Any:
        raise kverr.AuthNotEnabled()


# ----------------------------------------------------------------------------------------- server


def etcd_handlers(backend: EtcdBackend) -> list[grpc.GenericRpcHandler]:
    """Every etcd v3 service (plus Lock and Election) as generic handlers over ``backend``."""
    edge = Edge(backend)
    lock = LockService(backend, edge.header, edge.auth)
    election = ElectionService(backend, edge.header, edge.auth)
    return [
        KVService(edge).handler(),
        WatchService(edge).handler(),
        LeaseService(edge).handler(),
        ClusterService(edge).handler(),
        MaintenanceService(edge).handler(),
        AuthService(edge).handler(),
        service_handler(lock.NAME, lock.methods(edge.unary)),
        service_handler(election.NAME, election.methods(edge.unary, edge.stream)),
    ]


def server_options(max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.so_reuseport", 0),
    ]


class EtcdGrpcServer:
    """A started grpc.aio server speaking the etcd v3 API on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, server: grpc.aio.Server, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace_s: float | None = 1.0) -> None:
        await self.server.stop(grace_s)


async def start_etcd_server(
    backend: EtcdBackend, host: str = "127.0.0.1", port: int = 0, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> EtcdGrpcServer:
    """Start serving the etcd v3 API for ``backend``; raises OSError when the address cannot be bound."""
    server = grpc.aio.server(options=server_options(max_request_bytes))
    server.add_generic_rpc_handlers(etcd_handlers(backend))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for etcd clients on {host}:{port}")
    await server.start()
    return EtcdGrpcServer(server, host, bound)
