"""Typed results of the client and the helpers that build transaction compares and operations.

Key-value results reuse the store's own value types (``KeyValue``, ``Event``, ``RangeResponse``,
``PutResponse``, ``DeleteRangeResponse``, ``TxnResponse``: etcd's fields in snake_case); what the
store has no type for (members, status, leases, claims) is defined here.

Compares read like the condition they test: ``value("k") == b"v"``, ``version("k") == 0``,
``create_revision("k") < 7``, ``mod_revision("k") != 3``, ``lease("k") == lease_id``;
operations are ``put_op``, ``get_op``, ``delete_op`` and ``txn_op``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conclave.kv import types as kv
from conclave.kv.types import (
    DeleteRangeResponse,
    Event,
    EventType,
    KeyValue,
    PutResponse,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnResponse,
)

__all__ = [
    "Claim", "DeleteRangeResponse", "Event", "EventType", "KeyValue", "LeaseInfo", "Member", "PutResponse",
    "RangeResponse", "SortOrder", "SortTarget", "Status", "TxnResponse", "create_revision", "delete_op",
    "get_op", "lease", "mod_revision", "prefix_end", "put_op", "to_bytes", "txn_op", "value", "version",
]

KeyLike = str | bytes


def to_bytes(x: KeyLike | int) -> bytes:
    """Keys and values may be ``str`` (UTF-8) or ``bytes``."""
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"keys and values must be str or bytes, not {type(x).__name__}")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix`` (etcd's convention)."""
    if prefix == b"\0":
        return b"\0"
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # every key


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False
    native_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    """What one member says about itself (``Maintenance.Status``)."""

    endpoint: str
    cluster_id: int
    member_id: int
    raft_term: int
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_applied_index: int
    is_learner: bool = False
    errors: tuple[str, ...] = ()
    revision: int = 0
    db_size_in_use: int = 0


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """``ttl`` is the remaining time in seconds (-1: no such lease); ``granted_ttl`` as granted."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of ``claim_unique``: ``claimed`` is True when ``owner`` holds the value.

    Its truth value is ``claimed`` (a dataclass is otherwise always truthy, and
    ``if client.claim_unique(...):`` must not take the branch for a claim someone else holds).
    """

    claimed: bool
    owner: bytes
    revision: int
    lease: int = 0

    def __bool__(self) -> bool:
        return self.claimed


class _Target:
    """``version(key) == 3`` etc.: a comparison on one key's attribute, built with operators."""

    def __init__(self, target: kv.CompareTarget, key: KeyLike, range_end: bytes = b"") -> None:
        self.target = target
        self.key = to_bytes(key)
        self.range_end = range_end

    def _compare(self, result: kv.CompareResult, other: Any) -> kv.Compare:
        field = {
            kv.CompareTarget.VERSION: "version",
            kv.CompareTarget.CREATE: "create_revision",
            kv.CompareTarget.MOD: "mod_revision",
            kv.CompareTarget.VALUE: "value",
            kv.CompareTarget.LEASE: "lease",
        }[self.target]
        operand: Any = to_bytes(other) if self.target == kv.CompareTarget.VALUE else int(other)
        return kv.Compare(result, self.target, self.key, self.range_end, **{field: operand})

    def __eq__(self, other: object) -> kv.Compare:  # type: ignore[override]
        return self._compare(kv.CompareResult.EQUAL, other)

    def __ne__(self, other: object) -> kv.Compare:  # type: ignore[override]
        return self._compare(kv.CompareResult.NOT_EQUAL, other)

    def __lt__(self, other: object) -> kv.Compare:
        return self._compare(kv.CompareResult.LESS, other)

    def __gt__(self, other: object) -> kv.Compare:
        return self._compare(kv.CompareResult.GREATER, other)

    __hash__ = None  # type: ignore[assignment]


def value(key: KeyLike) -> _Target:
    return _Target(kv.CompareTarget.VALUE, key)


def version(key: KeyLike) -> _Target:
    return _Target(kv.CompareTarget.VERSION, key)


def create_revision(key: KeyLike) -> _Target:
    return _Target(kv.CompareTarget.CREATE, key)


def mod_revision(key: KeyLike) -> _Target:
    return _Target(kv.CompareTarget.MOD, key)


def lease(key: KeyLike) -> _Target:
    return _Target(kv.CompareTarget.LEASE, key)


def put_op(key: KeyLike, val: KeyLike, lease: int = 0, prev_kv: bool = False) -> kv.RequestOp:
    return kv.RequestOp(request_put=kv.PutRequest(key=to_bytes(key), value=to_bytes(val), lease=lease,
                                                  prev_kv=prev_kv))


def get_op(key: KeyLike, prefix: bool = False, limit: int = 0) -> kv.RequestOp:
    k = to_bytes(key)
    return kv.RequestOp(request_range=kv.RangeRequest(key=k, range_end=prefix_end(k) if prefix else b"",
                                                      limit=limit))


def delete_op(key: KeyLike, prefix: bool = False, prev_kv: bool = False) -> kv.RequestOp:
    k = to_bytes(key)
    return kv.RequestOp(request_delete_range=kv.DeleteRangeRequest(
        key=k, range_end=prefix_end(k) if prefix else b"", prev_kv=prev_kv))


def txn_op(compare: list[kv.Compare], success: list[kv.RequestOp],
           failure: list[kv.RequestOp] | None = None) -> kv.RequestOp:
    return kv.RequestOp(request_txn=kv.TxnRequest(tuple(compare), tuple(success), tuple(failure or ())))
