"""Static request checks the server runs before proposing (etcd's v3rpc checks)."""

from __future__ import annotations

import pytest
from kv_harness import del_op, put_op, range_op, txn_op

from conclave.kv import errors
from conclave.kv.mvcc import MAX_LEASE_TTL_S
from conclave.kv.types import (
    Compare,
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    TxnRequest,
)
from conclave.kv.validation import validate_request, write_cost_bytes


def test_valid_requests_pass() -> None:
    validate_request(RangeRequest(key=b"a", range_end=b"\0", sort_order=SortOrder.DESCEND))
    validate_request(PutRequest(key=b"a", ignore_value=True))
    validate_request(TxnRequest(compare=(Compare(key=b"a"),), success=(put_op(b"a"),), failure=(put_op(b"a"),)))
    validate_request(LeaseGrantRequest(ttl=MAX_LEASE_TTL_S))


@pytest.mark.parametrize(
    "req",
    [
        RangeRequest(),
        PutRequest(value=b"x"),
        DeleteRangeRequest(range_end=b"z"),
        TxnRequest(compare=(Compare(),)),
        TxnRequest(success=(put_op(b""),)),
        TxnRequest(failure=(txn_op(TxnRequest(success=(range_op(b""),))),)),
    ],
)
def test_key_not_provided(req: object) -> None:
    with pytest.raises(errors.KeyNotProvided, match="etcdserver: key is not provided"):
        validate_request(req)


def test_put_flags_conflicting_with_values() -> None:
    with pytest.raises(errors.ValueProvided):
        validate_request(PutRequest(key=b"a", value=b"x", ignore_value=True))
    with pytest.raises(errors.LeaseProvided):
        validate_request(PutRequest(key=b"a", lease=1, ignore_lease=True))


def test_invalid_sort_option() -> None:
    with pytest.raises(errors.InvalidSortOption):
        validate_request(RangeRequest(key=b"a", sort_order=7))  # type: ignore[arg-type]


def test_too_many_ops_counts_the_largest_list_and_nested_txns() -> None:
    ops = tuple(put_op(b"k%d" % i) for i in range(128))
    validate_request(TxnRequest(success=ops))
    with pytest.raises(errors.TooManyOps, match="too many operations in txn request"):
        validate_request(TxnRequest(success=(*ops, put_op(b"x"))))
    with pytest.raises(errors.TooManyOps):
        validate_request(TxnRequest(success=ops[:3]), max_txn_ops=2)
    with pytest.raises(errors.TooManyOps):
        validate_request(TxnRequest(failure=(txn_op(TxnRequest(success=ops[:3])),)), max_txn_ops=2)


@pytest.mark.parametrize(
    "txn",
    [
        TxnRequest(success=(put_op(b"a"), put_op(b"a"))),
        TxnRequest(success=(del_op(b"a"), put_op(b"a"))),
        TxnRequest(success=(put_op(b"a"), del_op(b"0"), del_op(b"a", b"b"))),
        TxnRequest(success=(del_op(b"a", b"\0"), put_op(b"zzz"))),
        TxnRequest(success=(put_op(b"a"), txn_op(TxnRequest(success=(put_op(b"a"),))))),
        TxnRequest(success=(del_op(b"a", b"c"), txn_op(TxnRequest(failure=(put_op(b"b"),))))),
        TxnRequest(failure=(txn_op(TxnRequest(success=(put_op(b"x"),))), txn_op(TxnRequest(failure=(put_op(b"x"),))))),
    ],
)
def test_duplicate_key(txn: TxnRequest) -> None:
    with pytest.raises(errors.DuplicateKey, match="etcdserver: duplicate key given in txn request"):
        validate_request(txn)


@pytest.mark.parametrize(
    "txn",
    [
        TxnRequest(success=(put_op(b"a"),), failure=(put_op(b"a"),)),  # branches exclude each other
        TxnRequest(success=(txn_op(TxnRequest(success=(put_op(b"a"),), failure=(put_op(b"a"),))),)),
        TxnRequest(success=(del_op(b"a", b"c"), del_op(b"b", b"d"))),  # overlapping deletes are fine
        TxnRequest(success=(range_op(b"a"), put_op(b"a"))),  # reads never conflict
        TxnRequest(success=(del_op(b"a", b"b"), put_op(b"b"))),  # range_end is exclusive
    ],
)
def test_not_duplicate(txn: TxnRequest) -> None:
    validate_request(txn)


def test_write_cost_follows_the_costlier_branch() -> None:
    put = PutRequest(key=b"k", value=b"x" * 100)
    assert write_cost_bytes(put) > 100
    assert write_cost_bytes(DeleteRangeRequest(key=b"k")) == 0
    assert write_cost_bytes(RangeRequest(key=b"k")) == 0
    txn = TxnRequest(
        success=(put_op(b"a"),), failure=(put_op(b"b", b"x" * 100), txn_op(TxnRequest(success=(put_op(b"c"),))))
    )
    assert write_cost_bytes(txn) == write_cost_bytes(PutRequest(key=b"b", value=b"x" * 100)) + write_cost_bytes(
        PutRequest(key=b"c", value=b"v")
    )
    assert write_cost_bytes(LeaseGrantRequest(ttl=5)) > 0
