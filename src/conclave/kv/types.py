"""Value types of the key-value state machine, mirroring etcd v3's messages.

Theory of operation
-------------------
Every request the store accepts and every response it returns is one of the frozen values
below. Field names are etcd's ``rpc.proto`` / ``kv.proto`` field names in snake_case (``ID`` ->
``id``, ``TTL`` -> ``ttl``, ``grantedTTL`` -> ``granted_ttl``) and enum numbers equal etcd's
proto enum numbers, so the gRPC edge maps protobuf messages onto these values field by field.
Proto3 defaults are the dataclass defaults (``0``, ``b""``, ``False``, empty tuple, ``None`` for
an unset message field). Keys and values are ``bytes``; repeated fields are tuples.

Two deliberate differences from the protos:

* ``Compare.target_union`` (a oneof) is one field per target: ``version``, ``create_revision``,
  ``mod_revision``, ``value``, ``lease``; only the one named by ``target`` is read.
* ``RequestOp`` / ``ResponseOp`` (oneofs) are one optional field per alternative; exactly one
  must be set (checked on construction).

Rules for this module: values only; no I/O, no clocks, no randomness, no behaviour beyond
construction-time invariants.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# --------------------------------------------------------------------------- enums


class EventType(IntEnum):
    """mvccpb.Event.EventType."""

    PUT = 0
    DELETE = 1


class SortOrder(IntEnum):
    """etcdserverpb.RangeRequest.SortOrder."""

    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    """etcdserverpb.RangeRequest.SortTarget."""

    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(IntEnum):
    """etcdserverpb.Compare.CompareResult."""

    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(IntEnum):
    """etcdserverpb.Compare.CompareTarget."""

    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class AlarmType(IntEnum):
    """etcdserverpb.AlarmType."""

    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class AlarmAction(IntEnum):
    """etcdserverpb.AlarmRequest.AlarmAction."""

    GET = 0
    ACTIVATE = 1
    DEACTIVATE = 2


class WatchFilterType(IntEnum):
    """etcdserverpb.WatchCreateRequest.FilterType."""

    NOPUT = 0
    NODELETE = 1


# --------------------------------------------------------------------------- mvccpb


@dataclass(frozen=True, slots=True)
class KeyValue:
    """mvccpb.KeyValue. ``version`` counts puts since the key's creation (1 after the first)."""

    key: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """mvccpb.Event. For DELETE, ``kv`` holds the key and the deletion's ``mod_revision``."""

    type: EventType = EventType.PUT
    kv: KeyValue = KeyValue()
    prev_kv: KeyValue | None = None


# --------------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0


# --------------------------------------------------------------------------- KV


@dataclass(frozen=True, slots=True)
class RangeRequest:
    key: bytes = b""
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class RangeResponse:
    header: ResponseHeader = ResponseHeader()
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: int = 0


@dataclass(frozen=True, slots=True)
class PutRequest:
    key: bytes = b""
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class PutResponse:
    header: ResponseHeader = ResponseHeader()
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteRangeRequest:
    key: bytes = b""
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRangeResponse:
    header: ResponseHeader = ResponseHeader()
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class Compare:
    """etcdserverpb.Compare; the oneof ``target_union`` is one field per ``target``."""

    result: CompareResult = CompareResult.EQUAL
    target: CompareTarget = CompareTarget.VERSION
    key: bytes = b""
    range_end: bytes = b""
    version: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    value: bytes = b""
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RequestOp:
    """etcdserverpb.RequestOp: exactly one of the four fields is set."""

    request_range: RangeRequest | None = None
    request_put: PutRequest | None = None
    request_delete_range: DeleteRangeRequest | None = None
    request_txn: TxnRequest | None = None

    def __post_init__(self) -> None:
        chosen = (
            (self.request_range is not None)
            + (self.request_put is not None)
            + (self.request_delete_range is not None)
            + (self.request_txn is not None)
        )
        if chosen != 1:
            raise ValueError(f"RequestOp needs exactly one request, got {chosen}")


@dataclass(frozen=True, slots=True)
class ResponseOp:
    """etcdserverpb.ResponseOp: exactly one of the four fields is set."""

    response_range: RangeResponse | None = None
    response_put: PutResponse | None = None
    response_delete_range: DeleteRangeResponse | None = None
    response_txn: TxnResponse | None = None

    def __post_init__(self) -> None:
        chosen = (
            (self.response_range is not None)
            + (self.response_put is not None)
            + (self.response_delete_range is not None)
            + (self.response_txn is not None)
        )
        if chosen != 1:
            raise ValueError(f"ResponseOp needs exactly one response, got {chosen}")


@dataclass(frozen=True, slots=True)
class TxnRequest:
    compare: tuple[Compare, ...] = ()
    success: tuple[RequestOp, ...] = ()
    failure: tuple[RequestOp, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResponse:
    header: ResponseHeader = ResponseHeader()
    succeeded: bool = False
    responses: tuple[ResponseOp, ...] = ()


@dataclass(frozen=True, slots=True)
class CompactionRequest:
    revision: int = 0
    physical: bool = False


@dataclass(frozen=True, slots=True)
class CompactionResponse:
    header: ResponseHeader = ResponseHeader()


# --------------------------------------------------------------------------- Lease


@dataclass(frozen=True, slots=True)
class LeaseGrantRequest:
    """``ttl`` in seconds; ``id`` 0 asks the store to choose one."""

    ttl: int = 0
    id: int = 0


@dataclass(frozen=True, slots=True)
class LeaseGrantResponse:
    header: ResponseHeader = ResponseHeader()
    id: int = 0
    ttl: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class LeaseRevokeRequest:
    id: int = 0


@dataclass(frozen=True, slots=True)
class LeaseRevokeResponse:
    header: ResponseHeader = ResponseHeader()


@dataclass(frozen=True, slots=True)
class LeaseKeepAliveRequest:
    id: int = 0


@dataclass(frozen=True, slots=True)
class LeaseKeepAliveResponse:
    header: ResponseHeader = ResponseHeader()
    id: int = 0
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class LeaseTimeToLiveRequest:
    id: int = 0
    keys: bool = False


@dataclass(frozen=True, slots=True)
class LeaseTimeToLiveResponse:
    """``ttl`` is the remaining time in seconds, -1 when the lease does not exist."""

    header: ResponseHeader = ResponseHeader()
    id: int = 0
    ttl: int = 0
    granted_ttl: int = 0
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseLeasesRequest:
    pass


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    id: int = 0


@dataclass(frozen=True, slots=True)
class LeaseLeasesResponse:
    header: ResponseHeader = ResponseHeader()
    leases: tuple[LeaseStatus, ...] = ()


# --------------------------------------------------------------------------- Maintenance


@dataclass(frozen=True, slots=True)
class AlarmMember:
    member_id: int = 0
    alarm: AlarmType = AlarmType.NONE


@dataclass(frozen=True, slots=True)
class AlarmRequest:
    action: AlarmAction = AlarmAction.GET
    member_id: int = 0
    alarm: AlarmType = AlarmType.NONE


@dataclass(frozen=True, slots=True)
class AlarmResponse:
    header: ResponseHeader = ResponseHeader()
    alarms: tuple[AlarmMember, ...] = ()


@dataclass(frozen=True, slots=True)
class HashKVRequest:
    revision: int = 0


@dataclass(frozen=True, slots=True)
class HashKVResponse:
    header: ResponseHeader = ResponseHeader()
    hash: int = 0
    compact_revision: int = 0
    hash_revision: int = 0


# --------------------------------------------------------------------------- Watch


@dataclass(frozen=True, slots=True)
class WatchCreateRequest:
    key: bytes = b""
    range_end: bytes = b""
    start_revision: int = 0
    progress_notify: bool = False
    filters: tuple[WatchFilterType, ...] = ()
    prev_kv: bool = False
    watch_id: int = 0
    fragment: bool = False


@dataclass(frozen=True, slots=True)
class WatchCancelRequest:
    watch_id: int = 0


@dataclass(frozen=True, slots=True)
class WatchProgressRequest:
    pass


@dataclass(frozen=True, slots=True)
class WatchResponse:
    header: ResponseHeader = ResponseHeader()
    watch_id: int = 0
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    fragment: bool = False
    events: tuple[Event, ...] = ()
