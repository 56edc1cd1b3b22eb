"""Request validation the server runs BEFORE proposing, so bad requests never enter the log.

Theory of operation
-------------------
``validate_request`` applies etcd's static checks (v3rpc ``checkRangeRequest``,
``checkPutRequest``, ``checkDeleteRequest``, ``checkTxnRequest`` and ``checkIntervals``) and
raises the same ``EtcdError`` etcd would: an empty key, too many ops in a txn, the same key
written twice by one txn (directly, through a delete range that covers a put, or through
nested txns; a key put in both branches of one nested txn is fine because only one runs),
an invalid sort option, a value/lease given together with ignore_value/ignore_lease.
(Request size, quota and lease TTL bounds: ``conclave.machine.rules``, which calls this
module.) ``write_cost_bytes`` estimates how much a request grows the store, for the
``--quota-backend-bytes`` check (etcd's quota cost: a txn costs its costlier branch; requests
that do not add data cost 0 and are always admitted).

Checks that depend on state (unknown lease, ignore_value on a missing key, compacted
revisions) happen at apply time in the store, deterministically on every replica.

Rules for this module: pure functions of the request; no I/O, no clocks, no randomness.
"""

from __future__ import annotations

from conclave.kv import errors
from conclave.kv.index import ALL_KEYS_END, RECORD_OVERHEAD_BYTES
from conclave.kv.mvcc import LEASE_RECORD_BYTES
from conclave.kv.types import (
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

DEFAULT_MAX_TXN_OPS = 128
"""etcd's --max-txn-ops default."""

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
"""etcd's --max-request-bytes default (1.5 MiB): the one definition (edges size their frames by it)."""

_SORT_ORDERS = frozenset(int(m) for m in SortOrder)
_SORT_TARGETS = frozenset(int(m) for m in SortTarget)

# An interval [start, end) of keys; end None = no upper bound.
_Interval = tuple[bytes, bytes | None]


def write_cost_bytes(req: object) -> int:
    """Estimated bytes ``req`` adds to ``Store.db_size`` (0 for requests that add no data)."""
    if isinstance(req, PutRequest):
        return len(req.key) + len(req.value) + RECORD_OVERHEAD_BYTES
    if isinstance(req, TxnRequest):
        return max(_ops_cost(req.success), _ops_cost(req.failure))
    if isinstance(req, LeaseGrantRequest):
        return LEASE_RECORD_BYTES
    return 0


def _ops_cost(ops: tuple[RequestOp, ...]) -> int:
    total = 0
    for op in ops:
        if op.request_put is not None:
            total += write_cost_bytes(op.request_put)
        elif op.request_txn is not None:
            total += write_cost_bytes(op.request_txn)
    return total


def validate_request(req: object, *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """Raise the EtcdError etcd would for a statically invalid request; otherwise return."""
    if isinstance(req, RangeRequest):
        _check_range(req)
    elif isinstance(req, PutRequest):
        _check_put(req)
    elif isinstance(req, DeleteRangeRequest):
        if not req.key:
            raise errors.KeyNotProvided()
    elif isinstance(req, TxnRequest):
        _check_txn(req, max_txn_ops)
        _check_intervals(req.success)
        _check_intervals(req.failure)


def _check_range(req: RangeRequest) -> None:
    if not req.key:
        raise errors.KeyNotProvided()
    if int(req.sort_order) not in _SORT_ORDERS or int(req.sort_target) not in _SORT_TARGETS:
        raise errors.InvalidSortOption()


def _check_put(req: PutRequest) -> None:
    if not req.key:
        raise errors.KeyNotProvided()
    if req.ignore_value and req.value:
        raise errors.ValueProvided()
    if req.ignore_lease and req.lease:
        raise errors.LeaseProvided()


def _check_txn(req: TxnRequest, max_txn_ops: int) -> None:
    if max(len(req.compare), len(req.success), len(req.failure)) > max_txn_ops:
        raise errors.TooManyOps()
    for c in req.compare:
        if not c.key:
            raise errors.KeyNotProvided()
    for op in (*req.success, *req.failure):
        _check_op(op, max_txn_ops)


def _check_op(op: RequestOp, max_txn_ops: int) -> None:
    if op.request_range is not None:
        _check_range(op.request_range)
    elif op.request_put is not None:
        _check_put(op.request_put)
    elif op.request_delete_range is not None:
        if not op.request_delete_range.key:
            raise errors.KeyNotProvided()
    elif op.request_txn is not None:
        _check_txn(op.request_txn, max_txn_ops)


def _delete_interval(req: DeleteRangeRequest) -> _Interval:
    if not req.range_end:
        return req.key, req.key + b"\0"
    if req.range_end == ALL_KEYS_END:
        return req.key, None
    return req.key, req.range_end


def _covers(dels: list[_Interval], key: bytes) -> bool:
    return any(start <= key and (end is None or key < end) for start, end in dels)


def _check_intervals(ops: tuple[RequestOp, ...]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's checkIntervals: the keys one branch puts and the ranges it deletes."""
    dels = [_delete_interval(op.request_delete_range) for op in ops if op.request_delete_range is not None]
    puts: set[bytes] = set()
    for op in ops:
        if op.request_txn is None:
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or _covers(dels, key):
                raise errors.DuplicateKey()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _covers(dels, key):
                raise errors.DuplicateKey()
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.request_put is None:
            continue
        key = op.request_put.key
        if key in puts or _covers(dels, key):
            raise errors.DuplicateKey()
        puts.add(key)
    return puts, dels
