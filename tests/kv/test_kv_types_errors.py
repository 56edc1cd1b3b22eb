"""The value types and the error hierarchy: etcd's numbers and exact wording."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from conclave.kv import errors
from conclave.kv import types as t


def test_enum_numbers_match_etcd_protos() -> None:
    assert (t.EventType.PUT, t.EventType.DELETE) == (0, 1)
    assert [m.value for m in t.SortOrder] == [0, 1, 2]
    assert [m.name for m in t.SortTarget] == ["KEY", "VERSION", "CREATE", "MOD", "VALUE"]
    assert [m.value for m in t.SortTarget] == [0, 1, 2, 3, 4]
    assert [m.name for m in t.CompareResult] == ["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
    assert [m.name for m in t.CompareTarget] == ["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
    assert [m.name for m in t.AlarmType] == ["NONE", "NOSPACE", "CORRUPT"]
    assert [m.name for m in t.AlarmAction] == ["GET", "ACTIVATE", "DEACTIVATE"]
    assert [m.name for m in t.WatchFilterType] == ["NOPUT", "NODELETE"]


def test_values_are_frozen_with_proto3_defaults() -> None:
    kv = t.KeyValue(key=b"k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        kv.key = b"x"  # type: ignore[misc]
    assert t.RangeRequest() == t.RangeRequest(b"", b"", 0, 0, t.SortOrder.NONE, t.SortTarget.KEY)
    assert t.PutResponse().prev_kv is None
    assert t.ResponseHeader() == t.ResponseHeader(0, 0, 0, 0)


def test_request_op_needs_exactly_one_alternative() -> None:
    t.RequestOp(request_txn=t.TxnRequest())
    with pytest.raises(ValueError, match="exactly one"):
        t.RequestOp()
    with pytest.raises(ValueError, match="exactly one"):
        t.RequestOp(request_put=t.PutRequest(), request_range=t.RangeRequest())
    with pytest.raises(ValueError, match="exactly one"):
        t.ResponseOp()


@pytest.mark.parametrize(
    ("cls", "code", "message"),
    [
        (errors.KeyNotProvided, "INVALID_ARGUMENT", "etcdserver: key is not provided"),
        (errors.TooManyOps, "INVALID_ARGUMENT", "etcdserver: too many operations in txn request"),
        (errors.DuplicateKey, "INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request"),
        (errors.RequestTooLarge, "INVALID_ARGUMENT", "etcdserver: request is too large"),
        (errors.Compacted, "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"),
        (errors.FutureRevision, "OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision"),
        (errors.LeaseTTLTooLarge, "OUT_OF_RANGE", "etcdserver: too large lease TTL"),
        (errors.NoSpace, "RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded"),
        (errors.TooManyRequests, "RESOURCE_EXHAUSTED", "etcdserver: too many requests"),
        (errors.LeaseNotFound, "NOT_FOUND", "etcdserver: requested lease not found"),
        (errors.MemberNotFound, "NOT_FOUND", "etcdserver: member not found"),
        (errors.LeaseExists, "FAILED_PRECONDITION", "etcdserver: lease already exists"),
        (errors.NotLeader, "FAILED_PRECONDITION", "etcdserver: not leader"),
        (errors.MemberNotLearner, "FAILED_PRECONDITION", "etcdserver: can only promote a learner member"),
        (errors.NoLeader, "UNAVAILABLE", "etcdserver: no leader"),
        (errors.Corrupt, "DATA_LOSS", "etcdserver: corrupt cluster"),
        (errors.WatchCanceled, "CANCELLED", "etcdserver: watch canceled"),
        (errors.InvalidAuthToken, "UNAUTHENTICATED", "etcdserver: invalid auth token"),
    ],
)
def test_error_code_and_exact_message(cls: type[errors.EtcdError], code: str, message: str) -> None:
    err = cls()
    assert isinstance(err, errors.EtcdError)
    assert (err.code, err.message, str(err)) == (code, message, message)
    assert errors.error_for_message(message) is cls


def test_every_error_has_a_real_grpc_code_and_a_unique_message() -> None:
    every = errors._all_subclasses(errors.EtcdError)
    # A refinement that travels as its parent (same code and text, e.g. wire.contract.AuthTokenAhead,
    # a server-side hint) is not a separate error on the wire: it keeps its parent's message.
    classes = [c for c in every if c.__mro__[1] is errors.EtcdError or c.message != c.__mro__[1].message]
    assert len(classes) > 40
    assert len({c.message for c in classes}) == len(classes)
    for cls in classes:
        grpc.StatusCode[cls.code]  # raises KeyError for a misspelt code name
    assert errors.error_for_message("no such message") is None


def test_detail_does_not_change_the_wire_message() -> None:
    err = errors.MalformedCommand("truncated")
    assert err.message == "conclave: malformed replicated command"
    assert str(err) == "conclave: malformed replicated command: truncated"


def test_bare_root_error_carries_its_own_message() -> None:
    err = errors.EtcdError("etcdserver: something new")
    assert (err.code, err.message, str(err)) == ("UNKNOWN", "etcdserver: something new", "etcdserver: something new")
    assert errors.EtcdError().message == "etcdserver: unknown error"
    assert errors.Compacted.message == "etcdserver: mvcc: required revision has been compacted"
