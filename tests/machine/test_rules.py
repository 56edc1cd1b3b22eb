"""The rules every API path applies before proposing (conclave.machine.rules), defined once."""

from __future__ import annotations

import pytest

from conclave.kv import errors as kverr
from conclave.kv.mvcc import MAX_LEASE_TTL_S
from conclave.kv.types import (
    AlarmAction,
    AlarmRequest,
    AlarmType,
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RequestOp,
    TxnRequest,
)
from conclave.machine import StateMachine, entry, rules
from conclave.raft.types import Entry


def test_lease_ttl_bounds() -> None:
    limits = rules.Limits(min_lease_ttl_s=rules.min_lease_ttl_s(1000))
    assert limits.min_lease_ttl_s == 2  # 1.5 election timeouts, rounded up
    assert rules.validate(LeaseGrantRequest(ttl=1), limits) == LeaseGrantRequest(ttl=2)
    assert rules.validate(LeaseGrantRequest(ttl=60, id=7), limits) == LeaseGrantRequest(ttl=60, id=7)
    assert rules.validate(LeaseGrantRequest(ttl=MAX_LEASE_TTL_S), limits) == LeaseGrantRequest(ttl=MAX_LEASE_TTL_S)
    with pytest.raises(kverr.LeaseTTLTooLarge):
        rules.validate(LeaseGrantRequest(ttl=MAX_LEASE_TTL_S + 1), limits)
    with pytest.raises(kverr.LeaseTTLTooLarge):
        rules.validate(LeaseGrantRequest(ttl=11), rules.Limits(max_lease_ttl_s=10))


def test_request_size_and_txn_ops() -> None:
    rules.check_size(1536 * 1024, rules.Limits())
    with pytest.raises(kverr.RequestTooLarge):
        rules.check_size(1536 * 1024 + 1, rules.Limits())
    with pytest.raises(kverr.RequestTooLarge):
        rules.check_size(11, rules.Limits(max_request_bytes=10))
    ops = tuple(RequestOp(request_put=PutRequest(key=b"k%d" % i)) for i in range(3))
    rules.validate(TxnRequest(success=ops), rules.Limits(max_txn_ops=3))
    with pytest.raises(kverr.TooManyOps):
        rules.validate(TxnRequest(success=ops), rules.Limits(max_txn_ops=2))
    with pytest.raises(kverr.KeyNotProvided):
        rules.validate(PutRequest(key=b""), rules.Limits())


def test_quota_refuses_what_adds_data_under_nospace() -> None:
    sm = StateMachine.bootstrap(1, [])
    limits = rules.Limits(quota_backend_bytes=1)
    assert sm.validate(PutRequest(key=b"k"), limits) == PutRequest(key=b"k")
    sm.apply(Entry(1, 1, data=entry.encode_batch(1, [(1, PutRequest(key=b"k", value=b"v"))])), 0)
    assert rules.over_quota(sm.store, limits) and not rules.over_quota(sm.store, rules.Limits())
    alarm = AlarmRequest(AlarmAction.ACTIVATE, 1, AlarmType.NOSPACE)
    sm.apply(Entry(1, 2, data=entry.encode_batch(1, [(2, alarm)])), 0)
    with pytest.raises(kverr.NoSpace):
        sm.validate(PutRequest(key=b"k"), limits)
    with pytest.raises(kverr.NoSpace):
        sm.validate(TxnRequest(failure=(RequestOp(request_put=PutRequest(key=b"x")),)), limits)
    assert sm.validate(DeleteRangeRequest(key=b"k"), limits) == DeleteRangeRequest(key=b"k")
    assert sm.validate(TxnRequest(), limits) == TxnRequest()
