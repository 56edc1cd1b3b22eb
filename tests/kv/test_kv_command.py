"""The replicated command codec: exact round trips, and clear errors for garbage."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_harness import del_op, put_op, range_op, txn_op

from conclave.kv.command import MAX_TXN_DEPTH, Command, Noop, decode_command, encode_command
from conclave.kv.errors import MalformedCommand
from conclave.kv.types import (
    AlarmAction,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
    TxnRequest,
)

EXAMPLES: list[Command] = [
    PutRequest(b"k", b"v", 7, True, False, True),
    DeleteRangeRequest(b"a", b"\0", True),
    RangeRequest(b"a", b"b", 5, 3, SortOrder.DESCEND, SortTarget.MOD, True, True, False, 1, 2, 3, 4),
    CompactionRequest(10, True),
    LeaseGrantRequest(60, 99),
    LeaseRevokeRequest(99),
    AlarmRequest(AlarmAction.ACTIVATE, 3, AlarmType.NOSPACE),
    Noop(b"\x00barrier"),
    TxnRequest(
        compare=(Compare(CompareResult.NOT_EQUAL, CompareTarget.VALUE, b"k", b"", 0, 0, 0, b"x", 0),),
        success=(put_op(b"a"), del_op(b"b", b"c"), range_op(b"d", limit=3)),
        failure=(txn_op(TxnRequest(success=(put_op(b"z", lease=5),))),),
    ),
]


@pytest.mark.parametrize("cmd", EXAMPLES, ids=lambda c: type(c).__name__)
def test_round_trip(cmd: Command) -> None:
    data = encode_command(cmd, 2**64 - 1)
    assert decode_command(data) == (2**64 - 1, cmd)
    assert encode_command(cmd, 2**64 - 1) == data  # deterministic


keys = st.binary(min_size=0, max_size=8)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
puts = st.builds(PutRequest, keys, keys, ints, st.booleans(), st.booleans(), st.booleans())
dels = st.builds(DeleteRangeRequest, keys, keys, st.booleans())
compares = st.builds(
    Compare, st.sampled_from(CompareResult), st.sampled_from(CompareTarget), keys, keys, ints, ints, ints, keys, ints
)
txns = st.recursive(
    st.builds(TxnRequest, st.tuples(compares), st.tuples(st.builds(lambda p: put_op(p.key), puts))),
    lambda inner: st.builds(
        TxnRequest,
        st.lists(compares, max_size=2).map(tuple),
        st.lists(
            st.one_of(inner.map(txn_op), puts.map(lambda p: put_op(p.key)), dels.map(lambda d: del_op(d.key))),
            max_size=3,
        ).map(tuple),
        st.lists(inner.map(txn_op), max_size=2).map(tuple),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(puts, dels, txns), st.integers(min_value=0, max_value=2**64 - 1))
def test_round_trip_property(cmd: Command, request_id: int) -> None:
    assert decode_command(encode_command(cmd, request_id)) == (request_id, cmd)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 2]),
        msgpack.packb([2, 1, 1, b"k", b"v", 0, False, False, False]),  # unknown format
        msgpack.packb([1, -1, 1, b"k", b"v", 0, False, False, False]),  # negative request id
        msgpack.packb([1, 1, 99]),  # unknown tag
        msgpack.packb([1, 1, 1, b"k", b"v", 0, False, False]),  # short put
        msgpack.packb([1, 1, 1, "k", b"v", 0, False, False, False]),  # str key
        msgpack.packb([1, 1, 1, b"k", b"v", 0, 1, False, False]),  # int where bool expected
        msgpack.packb([1, 1, 9, b"k", b"", 0, 0, 9, 0, False, False, False, 0, 0, 0, 0]),  # bad sort order
        msgpack.packb([1, 1, 3, [], [[4, 1, False]], []]),  # compaction inside a txn
        msgpack.packb([1, 1, 3, [[0, 7, b"k", b"", 0, 0, 0, b"", 0]], [], []]),  # bad compare target
        msgpack.packb([1, 1, 3, "x", [], []]),
    ],
)
def test_garbage_gives_malformed_command(data: bytes) -> None:
    with pytest.raises(MalformedCommand):
        decode_command(data)


def test_nesting_is_bounded() -> None:
    txn = TxnRequest()
    for _ in range(MAX_TXN_DEPTH + 1):
        txn = TxnRequest(success=(txn_op(txn),))
    with pytest.raises(MalformedCommand, match="nested deeper"):
        decode_command(encode_command(txn, 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    # Either a valid command or MalformedCommand; any other exception fails the test.
    with contextlib.suppress(MalformedCommand):
        request_id, _ = decode_command(data)
        assert request_id >= 0


def test_encode_rejects_bad_request_id() -> None:
    with pytest.raises(ValueError):
        encode_command(Noop(), -1)
