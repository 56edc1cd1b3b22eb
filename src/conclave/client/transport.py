"""The two ways to reach one member, behind one small interface the client drives.

Theory of operation: ``request(method, arg)`` takes a store request value (or an int, or None)
and returns the decoded result; ``watch(req, callback)`` opens a watch whose deliveries (or end)
go to ``callback``. ``NativeTransport`` speaks the native protocol (one pipelined connection);
``GrpcTransport`` (in :mod:`conclave.client.grpc_transport`) speaks the etcd v3 API. Both raise
``ConnectionLost(sent=...)`` when the member cannot be reached and the client's typed errors for
answers; neither retries (that is the client's job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from conclave.client.errors import ProtocolError
from conclave.client.native import ConnectionLost, NativeChannel
from conclave.client.types import Member, Status
from conclave.kv import types as kv
from conclave.wire.contract import StatusInfo, WatchDelivery
from conclave.wire.native import MalformedRequest, unpack_as

__all__ = ["ConnectionLost", "NativeTransport", "Transport", "WatchCallback"]

WatchCallback = Callable[[WatchDelivery | None, BaseException | None], None]


class Transport(Protocol):
    endpoint: str

    @property
    def closed(self) -> bool: ...

    async def request(self, method: str, arg: Any) -> Any: ...

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


class NativeTransport:
    def __init__(self, channel: NativeChannel) -> None:
        self.channel = channel
        self.endpoint = channel.endpoint

    @classmethod
    async def connect(cls, endpoint: str, timeout: float) -> NativeTransport:
        return cls(await NativeChannel.connect(endpoint, timeout))

    @property
    def closed(self) -> bool:
        return self.channel.closed

    async def request(self, method: str, arg: Any) -> Any:
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
