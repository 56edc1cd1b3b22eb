"""Property tests of the native protocol's value codec: every store value round-trips, and any
msgpack value given where a request is expected decodes or raises MalformedRequest, nothing else."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.kv import types as kv
from conclave.wire import native

keys = st.binary(max_size=16)
ints = st.integers(min_value=0, max_value=2**63 - 1)

range_requests = st.builds(
    kv.RangeRequest, key=keys, range_end=keys, limit=ints, revision=ints,
    sort_order=st.sampled_from(kv.SortOrder), sort_target=st.sampled_from(kv.SortTarget),
    serializable=st.booleans(), keys_only=st.booleans(), count_only=st.booleans(),
)
put_requests = st.builds(kv.PutRequest, key=keys, value=st.binary(max_size=64), lease=ints, prev_kv=st.booleans())
delete_requests = st.builds(kv.DeleteRangeRequest, key=keys, range_end=keys, prev_kv=st.booleans())
compares = st.builds(
    kv.Compare, result=st.sampled_from(kv.CompareResult), target=st.sampled_from(kv.CompareTarget), key=keys,
    version=ints, create_revision=ints, mod_revision=ints, value=keys, lease=ints,
)
ops = st.one_of(
    range_requests.map(lambda r: kv.RequestOp(request_range=r)),
    put_requests.map(lambda r: kv.RequestOp(request_put=r)),
    delete_requests.map(lambda r: kv.RequestOp(request_delete_range=r)),
)
txns = st.builds(kv.TxnRequest, compare=st.lists(compares, max_size=3).map(tuple),
                 success=st.lists(ops, max_size=3).map(tuple), failure=st.lists(ops, max_size=3).map(tuple))
values = st.one_of(range_requests, put_requests, delete_requests, txns)

msgpack_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, st.integers(min_value=-(2**63), max_value=-1), st.binary(max_size=8),
              st.text(max_size=8), st.floats(allow_nan=False)),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_store_values_round_trip(value: Any) -> None:
    raw = msgpack.unpackb(native.pack_value(value), raw=False)
    assert native.unpack_as(type(value), raw) == value


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([kv.RangeRequest, kv.PutRequest, kv.DeleteRangeRequest, kv.TxnRequest,
                        kv.WatchCreateRequest, kv.LeaseGrantRequest]), msgpack_values)
def test_arbitrary_arguments_decode_or_are_refused_cleanly(cls: type, raw: Any) -> None:
    try:
        decoded = native.unpack_as(cls, raw)
    except native.MalformedRequest:
        return
    assert isinstance(decoded, cls)


def test_absurdly_nested_transactions_are_refused() -> None:
    raw: Any = [[], [], []]
    for _ in range(2000):
        raw = [[], [[None, None, None, raw]], []]
    try:
        native.unpack_as(kv.TxnRequest, raw)
    except native.MalformedRequest as exc:
        assert "nested too deeply" in str(exc)
    else:
        raise AssertionError("a 2000-deep transaction was accepted")
