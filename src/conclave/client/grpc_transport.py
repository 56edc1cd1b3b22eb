"""One client connection to one member over the etcd v3 gRPC API (``protocol="grpc"``).

Same contract as :class:`conclave.client.transport.NativeTransport`: store values in, store
values out, typed client errors. gRPC status messages are etcd's exact texts, mapped back to the
error class that carries them; a failure to reach the member is ``ConnectionLost``; whether the
request left is known only for connect failures, so other transport failures count as sent.

TLS: with a :class:`~conclave.client.tls.TLSConfig` the channel is a secure one; a member that
cannot be reached in time is asked once more without waiting, so that a TLS failure (a
certificate that does not verify, a plain-text port) is reported with gRPC's reason instead of a
bare timeout. Credentials: after ``authenticate`` every call carries metadata ``token``, as etcd's
clientv3 sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from conclave.api import convert, pb
from conclave.api.stubs import EtcdStub
from conclave.client.errors import (
    AuthNotEnabled,
    ClientError,
    DeadlineExceeded,
    ServerError,
    TLSError,
    Unavailable,
    kind_for_message,
    server_error,
)
from conclave.client.tls import TLSConfig
from conclave.client.transport import ConnectionLost, WatchCallback
from conclave.client.types import Member, Status
from conclave.kv import auth as kvauth
from conclave.kv import types as kv
from conclave.wire.contract import WatchDelivery

_NOT_SENT_HINTS = ("failed to connect", "connection refused", "connect failed", "name resolution")
_TLS_HINTS = ("ssl", "handshake", "certificate", "tls")


_AUTH = frozenset({
    "auth_enable", "auth_disable", "auth_status", "user_add", "user_get", "user_list", "user_delete",
    "user_change_password", "user_grant_role", "user_revoke_role", "role_add", "role_get", "role_list",
    "role_delete", "role_grant_permission", "role_revoke_permission",
})


class GrpcTransport:
    def __init__(self, endpoint: str, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.kv = EtcdStub(channel, "etcdserverpb.KV")
        self.lease = EtcdStub(channel, "etcdserverpb.Lease")
        self.cluster = EtcdStub(channel, "etcdserverpb.Cluster")
        self.maint = EtcdStub(channel, "etcdserverpb.Maintenance")
        self.watch_stub = EtcdStub(channel, "etcdserverpb.Watch")
        self.auth_stub = EtcdStub(channel, "etcdserverpb.Auth")
        self._closed = False
        self._watches: dict[int, asyncio.Task[None]] = {}
        self._next_watch = 0
        self.md: tuple[tuple[str, str], ...] | None = None  # (("token", ...),) once authenticated

    @classmethod
    async def connect(cls, endpoint: str, timeout: float, tls: TLSConfig | None = None,
                      credentials: tuple[str, str] | None = None) -> GrpcTransport:
        if tls is not None:
            creds, options = await asyncio.get_running_loop().run_in_executor(None, tls.grpc_credentials, endpoint)
            channel = grpc.aio.secure_channel(endpoint, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(endpoint)
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            reason = await cls._why_not_ready(channel)
            await channel.close()
            if reason and any(h in reason.lower() for h in _TLS_HINTS):
                raise TLSError(f"TLS with {endpoint} failed: {reason}") from None
            hint = "" if tls is not None else " (if the member serves TLS, pass ca_file=... or use https://)"
            raise ConnectionLost(f"cannot connect to {endpoint}: {reason or type(exc).__name__}{hint}",
                                 sent=False) from None
        t = cls(endpoint, channel)
        if credentials is not None:
            try:
                await asyncio.wait_for(t.authenticate(*credentials), timeout)
            except AuthNotEnabled:
                pass  # as clientv3: no token, the member serves everyone
            except BaseException as exc:
                t.close()
                if isinstance(exc, TimeoutError):
                    raise ConnectionLost(f"{endpoint}: authenticate did not answer in {timeout:g}s",
                                         sent=False) from None
                if isinstance(exc, Unavailable) and not isinstance(exc, DeadlineExceeded):
                    raise ConnectionLost(f"{endpoint} cannot log in now: {exc}", sent=False) from None
                raise
        return t

    @staticmethod
    async def _why_not_ready(channel: grpc.aio.Channel) -> str:
        """gRPC's reason for the last connection failure (one call that does not wait for ready)."""
        try:
            await EtcdStub(channel, "etcdserverpb.Maintenance").Status(pb.StatusRequest(), timeout=1.0,
                                                                      wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            return exc.details() or exc.code().name
        except Exception:  # only a hint for the error message
            return ""
        return ""

    async def authenticate(self, name: str, password: str) -> str:
        try:
            r = await self.auth_stub.Authenticate(pb.AuthenticateRequest(name=name, password=password))
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        self.md = (("token", r.token),) if r.token else None
        return str(r.token)

    @property
    def closed(self) -> bool:
        return self._closed

    def _error(self, exc: grpc.aio.AioRpcError) -> ClientError:
        message = exc.details() or ""
        kind = kind_for_message(message)
        if kind:
            return server_error(kind, message)
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            self._closed = True
            sent = not any(h in message.lower() for h in _NOT_SENT_HINTS)
            return ConnectionLost(f"{self.endpoint}: {message}", sent=sent)
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return server_error("InvalidRequest", message)
        return ServerError(message or exc.code().name, exc.code().name)

    async def request(self, method: str, arg: Any) -> Any:
        try:
            return await self._request(method, arg)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller cancelled: let it through
            # The channel was closed under the call (the client dropped this connection on a
            # failover); grpc.aio cancels the calls in flight on it. For the caller that is a lost
            # connection after the request was sent, never a cancellation of its own task.
            raise ConnectionLost(f"{self.endpoint}: connection closed with the call in flight", sent=True) from None

    async def _request(self, method: str, arg: Any) -> Any:
        if method in _AUTH:
            return await self._auth(method, arg or ())
        if method == "range":
            return convert.range_response_from_pb(
                await self.kv.Range(convert.range_request_to_pb(arg), metadata=self.md))
        if method == "put":
            return convert.put_response_from_pb(await self.kv.Put(convert.put_request_to_pb(arg), metadata=self.md))
        if method == "delete_range":
            return convert.delete_range_response_from_pb(
                await self.kv.DeleteRange(convert.delete_range_request_to_pb(arg), metadata=self.md))
        if method == "txn":
            return convert.txn_response_from_pb(await self.kv.Txn(convert.txn_request_to_pb(arg), metadata=self.md))
        if method == "compact":
            await self.kv.Compact(pb.CompactionRequest(revision=arg.revision, physical=arg.physical), metadata=self.md)
            return kv.CompactionResponse()
        if method == "lease_grant":
            r = await self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=arg.ttl, ID=arg.id), metadata=self.md)
            if r.error:
                raise ServerError(r.error)
            return kv.LeaseGrantResponse(kv.ResponseHeader(revision=r.header.revision), r.ID, r.TTL)
        if method == "lease_revoke":
            await self.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=arg.id), metadata=self.md)
            return kv.LeaseRevokeResponse()
        if method == "lease_keep_alive":
            return await self._keep_alive_once(int(arg))
        if method == "lease_time_to_live":
            r = await self.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=arg.id, keys=arg.keys), metadata=self.md)
            if r.TTL < 0:
                raise server_error("LeaseNotFound", "etcdserver: requested lease not found")
            return kv.LeaseTimeToLiveResponse(kv.ResponseHeader(revision=r.header.revision), r.ID, r.TTL,
                                              r.grantedTTL, tuple(bytes(k) for k in r.keys))
        if method == "lease_leases":
            r = await self.lease.LeaseLeases(pb.LeaseLeasesRequest(), metadata=self.md)
            return kv.LeaseLeasesResponse(leases=tuple(kv.LeaseStatus(x.ID) for x in r.leases))
        if method == "member_list":
            r = await self.cluster.MemberList(pb.MemberListRequest(), metadata=self.md)
            return [Member(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner) for m in r.members]
        if method == "status":
            r = await self.maint.Status(pb.StatusRequest(), metadata=self.md)
            h = r.header
            return Status(self.endpoint, h.cluster_id, h.member_id, h.raft_term, r.version, r.dbSize, r.leader,
                          r.raftIndex, r.raftAppliedIndex, r.isLearner, tuple(r.errors), h.revision, r.dbSizeInUse)
        if method == "ping":
            r = await self.maint.Status(pb.StatusRequest(), metadata=self.md)
            return [r.leader != 0, r.header.revision]
        if method == "hash_kv":
            r = await self.maint.HashKV(pb.HashKVRequest(revision=int(arg)), metadata=self.md)
            return kv.HashKVResponse(kv.ResponseHeader(revision=r.header.revision), r.hash, r.compact_revision)
        raise ValueError(f"unknown method {method!r}")

    async def _auth(self, method: str, args: tuple[Any, ...]) -> Any:
        a = self.auth_stub
        md = self.md
        if method == "auth_enable":
            await a.AuthEnable(pb.AuthEnableRequest(), metadata=md)
        elif method == "auth_disable":
            await a.AuthDisable(pb.AuthDisableRequest(), metadata=md)
        elif method == "auth_status":
            r = await a.AuthStatus(pb.AuthStatusRequest(), metadata=md)
            return kvauth.AuthStatusResponse(r.enabled, r.authRevision)
        elif method == "user_add":
            name, password, no_password = args
            await a.UserAdd(pb.AuthUserAddRequest(name=name, password=password,
                                                  options=pb.UserAddOptions(no_password=no_password)), metadata=md)
        elif method == "user_get":
            r = await a.UserGet(pb.AuthUserGetRequest(name=args[0]), metadata=md)
            return kvauth.UserGetResponse(tuple(r.roles))
        elif method == "user_list":
            r = await a.UserList(pb.AuthUserListRequest(), metadata=md)
            return kvauth.UserListResponse(tuple(r.users))
        elif method == "user_delete":
            await a.UserDelete(pb.AuthUserDeleteRequest(name=args[0]), metadata=md)
        elif method == "user_change_password":
            await a.UserChangePassword(pb.AuthUserChangePasswordRequest(name=args[0], password=args[1]), metadata=md)
        elif method == "user_grant_role":
            await a.UserGrantRole(pb.AuthUserGrantRoleRequest(user=args[0], role=args[1]), metadata=md)
        elif method == "user_revoke_role":
            await a.UserRevokeRole(pb.AuthUserRevokeRoleRequest(name=args[0], role=args[1]), metadata=md)
        elif method == "role_add":
            await a.RoleAdd(pb.AuthRoleAddRequest(name=args[0]), metadata=md)
        elif method == "role_get":
            r = await a.RoleGet(pb.AuthRoleGetRequest(role=args[0]), metadata=md)
            return kvauth.RoleGetResponse(tuple(
                kvauth.Permission(kvauth.PermType(p.permType), bytes(p.key), bytes(p.range_end)) for p in r.perm))
        elif method == "role_list":
            r = await a.RoleList(pb.AuthRoleListRequest(), metadata=md)
            return kvauth.RoleListResponse(tuple(r.roles))
        elif method == "role_delete":
            await a.RoleDelete(pb.AuthRoleDeleteRequest(role=args[0]), metadata=md)
        elif method == "role_grant_permission":
            name, perm = args
            await a.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(
                name=name, perm=pb.Permission(permType=int(perm.perm_type), key=perm.key, range_end=perm.range_end)),
                metadata=md)
        elif method == "role_revoke_permission":
            await a.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(role=args[0], key=args[1],
                                                                            range_end=args[2]), metadata=md)
        return None

    async def _keep_alive_once(self, lease_id: int) -> int:
        call = self.lease.LeaseKeepAlive(metadata=self.md)
        try:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
            r = await call.read()
        finally:
            call.cancel()
        if r is grpc.aio.EOF or r.TTL <= 0:
            raise server_error("LeaseNotFound", "etcdserver: requested lease not found")
        return int(r.TTL)

    async def watch(self, req: kv.WatchCreateRequest, callback: WatchCallback) -> tuple[Any, int]:
        call = self.watch_stub.Watch(metadata=self.md)
        create = pb.WatchCreateRequest(key=req.key, range_end=req.range_end, start_revision=req.start_revision,
                                       prev_kv=req.prev_kv, filters=[int(f) for f in req.filters])
        try:
            await call.write(pb.WatchRequest(create_request=create))
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise self._error(exc) from None
        if first is grpc.aio.EOF:
            raise ConnectionLost(f"{self.endpoint}: watch stream ended", sent=True)
        if first.canceled:
            call.cancel()
            if first.compact_revision:
                from conclave.client.errors import Compacted

                raise Compacted(compact_revision=first.compact_revision)
            # etcd refuses a watch by creating and canceling it at once; the reason carries the
            # gRPC error ("rpc error: code = PermissionDenied desc = etcdserver: permission denied").
            reason = first.cancel_reason or "watch refused"
            message = reason.split(" desc = ", 1)[1] if " desc = " in reason else reason
            raise server_error(kind_for_message(message) or "WatchRangeEmpty", message)

        async def pump() -> None:
            try:
                while True:
                    m = await call.read()
                    if m is grpc.aio.EOF:
                        callback(None, ConnectionLost(f"{self.endpoint}: watch stream ended", sent=True))
                        return
                    r = convert.watch_response_from_pb(m)
                    callback(WatchDelivery(r.events, r.header.revision, r.canceled, r.compact_revision,
                                           r.cancel_reason), None)
                    if r.canceled:
                        return
            except grpc.aio.AioRpcError as exc:
                callback(None, self._error(exc))
            except asyncio.CancelledError:
                call.cancel()
                raise

        self._next_watch += 1
        handle = self._next_watch
        self._watches[handle] = asyncio.get_running_loop().create_task(pump())
        return handle, int(first.header.revision)

    def cancel_watch(self, handle: Any) -> None:
        task = self._watches.pop(handle, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        self._closed = True
        for task in self._watches.values():
            task.cancel()
        self._watches.clear()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.channel.close())
