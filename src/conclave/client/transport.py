"""The two ways to reach one member, behind one small interface the client drives.

Theory of operation: ``request(method, arg)`` takes a store request value (or an int, or None)
and returns the decoded result; ``watch(req, callback)`` opens a watch whose deliveries (or end)
go to ``callback``. ``NativeTransport`` speaks the native protocol (one pipelined connection);
``GrpcTransport`` (in :mod:`conclave.client.grpc_transport`) speaks the etcd v3 API. Both raise
``ConnectionLost(sent=...)`` when the member cannot be reached and the client's typed errors for
answers; neither retries (that is the client's job).

Credentials: ``authenticate(name, password)`` logs the connection in; on the native protocol the
member then holds the token for the connection, on gRPC the transport sends it as metadata
``token`` with every call. The Auth service's calls take their arguments as a tuple
(``request("user_add", (name, password, no_password))``) and answer ``conclave.kv.auth`` values
(``AuthStatusResponse``, ``UserGetResponse``, ... or None for the changes), the same on both.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, Protocol

from conclave.client.errors import AuthNotEnabled, DeadlineExceeded, ProtocolError, Unavailable
from conclave.client.native import ConnectionLost, NativeChannel
from conclave.client.types import Member, Status
from conclave.kv import auth as kvauth
from conclave.kv import types as kv
from conclave.wire.contract import StatusInfo, WatchDelivery
from conclave.wire.native import AUTH_CALLS, AUTHENTICATE, MalformedRequest, unpack_as

__all__ = ["ConnectionLost", "NativeTransport", "Transport", "WatchCallback"]

WatchCallback = Callable[[WatchDelivery | None, BaseException | None], None]


class Transport(Protocol):
    endpoint: str

    @property
    def closed(self) -> bool: ...

    async def request(self, method: str, arg: Any) -> Any: ...

    async def authenticate(self, name: str, password: str) -> str: ...

    async def watch(self, req: kv.WatchCreateRequest, callback: WatchCallback) -> tuple[Any, int]: ...

    def cancel_watch(self, handle: Any) -> None: ...

    def close(self) -> None: ...


_RESULT: dict[str, type] = {
    "range": kv.RangeResponse,
    "put": kv.PutResponse,
    "delete_range": kv.DeleteRangeResponse,
    "txn": kv.TxnResponse,
    "compact": kv.CompactionResponse,
    "lease_grant": kv.LeaseGrantResponse,
    "lease_revoke": kv.LeaseRevokeResponse,
    "lease_time_to_live": kv.LeaseTimeToLiveResponse,
    "lease_leases": kv.LeaseLeasesResponse,
    "hash_kv": kv.HashKVResponse,
}


def auth_result(method: str, raw: Any, endpoint: str) -> Any:
    """The client's value for a native Auth call's answer (see the module docstring)."""
    try:
        if method == "auth_status":
            return kvauth.AuthStatusResponse(bool(raw[0]), int(raw[1]))
        if method == "user_get":
            return kvauth.UserGetResponse(tuple(str(r) for r in raw[0]))
        if method == "user_list":
            return kvauth.UserListResponse(tuple(str(u) for u in raw[0]))
        if method == "role_list":
            return kvauth.RoleListResponse(tuple(str(r) for r in raw[0]))
        if method == "role_get":
            return kvauth.RoleGetResponse(tuple(unpack_as(kvauth.Permission, p) for p in raw[0]))
        if method == AUTHENTICATE:
            return str(raw[0])
        return None
    except (MalformedRequest, TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"{endpoint} answered {method} with an unexpected shape: {exc}") from None


class NativeTransport:
    def __init__(self, channel: NativeChannel) -> None:
        self.channel = channel
        self.endpoint = channel.endpoint

    @classmethod
    async def connect(cls, endpoint: str, timeout: float, ssl: ssl_module.SSLContext | None = None,
                      credentials: tuple[str, str] | None = None) -> NativeTransport:
        """A connection that answered once: authenticated with ``credentials``, else pinged.

        The first answer proves the member speaks this protocol in this mode: a plain-text client
        on a TLS port (or the reverse) fails here, before any request of the caller was sent.
        """
        t = cls(await NativeChannel.connect(endpoint, timeout, ssl))
        try:
            async with asyncio.timeout(timeout):
                if credentials is not None:
                    try:
                        await t.authenticate(*credentials)
                    except AuthNotEnabled:  # as clientv3: go on without a token
                        await t.channel.call("ping", [])
                else:
                    await t.channel.call("ping", [])
        except BaseException as exc:
            t.close()
            if isinstance(exc, ConnectionLost) and not t.channel.received:
                hint = (" (a member that requires a client certificate closes TLS connections without one: "
                        "cert_file=, key_file=)" if ssl is not None else
                        " (if its native port serves TLS, connect with TLS: ca_file=...)")
                raise ConnectionLost(f"{endpoint} closed the connection before answering{hint}", sent=False) from None
            if isinstance(exc, TimeoutError):
                raise ConnectionLost(f"{endpoint} did not answer within {timeout:g}s of connecting",
                                     sent=False) from None
            if isinstance(exc, Unavailable) and not isinstance(exc, DeadlineExceeded):
                # No leader to commit the login (an election): the client tries another member.
                raise ConnectionLost(f"{endpoint} cannot log in now: {exc}", sent=False) from None
            raise
        return t

    async def authenticate(self, name: str, password: str) -> str:
        token, _revision = await self.channel.call(AUTHENTICATE, [name, password])
        return str(token)

    @property
    def closed(self) -> bool:
        return self.channel.closed

    async def request(self, method: str, arg: Any) -> Any:
        if method in AUTH_CALLS:
            return auth_result(method, await self.channel.call(method, list(arg or ())), self.endpoint)
        args: list[Any] = [] if arg is None else [arg]
        raw = await self.channel.call(method, args)
        try:
            cls = _RESULT.get(method)
            if cls is not None:
                return unpack_as(cls, raw)
            if method == "member_list":
                return [Member(int(m[0]), str(m[1]), tuple(m[2]), tuple(m[3]), bool(m[4]), tuple(m[5])) for m in raw]
            if method == "status":
                cluster_id, member_id, term, info = raw
                s: StatusInfo = unpack_as(StatusInfo, info)
                return Status(self.endpoint, cluster_id, member_id, term, s.version, s.db_size, s.leader,
                              s.raft_index, s.raft_applied_index, s.is_learner, s.errors, s.revision,
                              s.db_size_in_use)
            return raw
        except (MalformedRequest, TypeError, ValueError) as exc:
            raise ProtocolError(f"{self.endpoint} answered {method} with an unexpected shape: {exc}") from None

    async def watch(self, req: kv.WatchCreateRequest, callback: WatchCallback) -> tuple[Any, int]:
        def on_item(item: Any, exc: BaseException | None) -> None:
            if exc is not None:
                callback(None, exc)
                return
            try:
                delivery = unpack_as(WatchDelivery, item)
            except (MalformedRequest, TypeError, ValueError) as err:
                callback(None, ProtocolError(f"{self.endpoint} sent a malformed watch delivery: {err}"))
                return
            callback(delivery, None)

        rid, revision = await self.channel.open_stream("watch_create", [req], on_item)
        return rid, int(revision)

    def cancel_watch(self, handle: Any) -> None:
        self.channel.cancel_stream(int(handle))

    def close(self) -> None:
        self.channel.close()
