"""Unit tests of the MVCC store: one etcd rule per test."""

from __future__ import annotations

import pytest
from kv_harness import Driver, cmp, del_op, put_op, range_op, txn_op

from conclave.kv import errors
from conclave.kv.mvcc import MAX_LEASE_TTL_S, Store
from conclave.kv.types import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    CompareResult,
    CompareTarget,
    DeleteRangeResponse,
    EventType,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutResponse,
    RangeRequest,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

R, E, G, L, NE = CompareResult, CompareResult.EQUAL, CompareResult.GREATER, CompareResult.LESS, CompareResult.NOT_EQUAL
T = CompareTarget


def keys(store: Store, req: RangeRequest) -> list[bytes]:
    return [kv.key for kv in store.range(req).kvs]


# ---------------------------------------------------------------------- revisions


def test_empty_store_is_at_revision_one_and_first_put_gets_two() -> None:
    d = Driver()
    assert d.store.revision == 1
    resp = d.put(b"foo", b"bar")
    assert isinstance(resp, PutResponse) and resp.header.revision == 2
    kv = d.store.range(RangeRequest(key=b"foo")).kvs[0]
    assert kv == KeyValue(b"foo", 2, 2, 1, b"bar", 0)


def test_versions_and_generations() -> None:
    d = Driver()
    d.put(b"k", b"1")
    d.put(b"k", b"2")
    kv = d.store.range(RangeRequest(key=b"k")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 3, 2)
    d.delete(b"k")
    assert d.store.range(RangeRequest(key=b"k")).kvs == ()
    d.put(b"k", b"3")  # a new generation starts at version 1
    kv = d.store.range(RangeRequest(key=b"k")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)


def test_noop_writes_do_not_bump_the_revision() -> None:
    d = Driver()
    d.put(b"a")
    resp = d.delete(b"missing")
    assert isinstance(resp, DeleteRangeResponse)
    assert (resp.deleted, resp.header.revision, d.store.revision) == (0, 2, 2)
    t = d.apply(TxnRequest(success=(del_op(b"x"), range_op(b"a"))))
    assert isinstance(t, TxnResponse) and t.header.revision == 2 and d.store.revision == 2
    d.apply(LeaseGrantRequest(ttl=10, id=7))
    d.apply(LeaseRevokeRequest(id=7))  # owns no key: nothing to delete
    assert d.store.revision == 2


def test_txn_writes_share_one_revision_with_increasing_events() -> None:
    d = Driver()
    resp = d.apply(TxnRequest(success=(put_op(b"a"), put_op(b"b"), del_op(b"zz"))))
    assert isinstance(resp, TxnResponse) and resp.succeeded and resp.header.revision == 2
    assert [kv.mod_revision for kv in d.store.range(RangeRequest(key=b"a", range_end=b"\0")).kvs] == [2, 2]
    assert [e.kv.key for e in d.store.last_events] == [b"a", b"b"]


# ---------------------------------------------------------------------- range


@pytest.fixture
def abc() -> Driver:
    d = Driver()
    for k, v in [(b"a", b"3"), (b"b", b"1"), (b"c", b"2"), (b"ca", b"0")]:
        d.put(k, v)
    d.put(b"b", b"9")  # b: version 2, mod 6
    return d


def test_range_single_prefix_and_all(abc: Driver) -> None:
    s = abc.store
    assert keys(s, RangeRequest(key=b"c")) == [b"c"]
    assert keys(s, RangeRequest(key=b"c", range_end=b"d")) == [b"c", b"ca"]
    assert keys(s, RangeRequest(key=b"b", range_end=b"\0")) == [b"b", b"c", b"ca"]
    assert keys(s, RangeRequest(key=b"\0", range_end=b"\0")) == [b"a", b"b", b"c", b"ca"]
    assert keys(s, RangeRequest(key=b"c", range_end=b"a")) == []  # end before start: empty


def test_range_limit_more_and_count(abc: Driver) -> None:
    resp = abc.store.range(RangeRequest(key=b"a", range_end=b"\0", limit=2))
    assert [kv.key for kv in resp.kvs] == [b"a", b"b"]
    assert resp.more and resp.count == 4
    resp = abc.store.range(RangeRequest(key=b"a", range_end=b"\0", limit=4))
    assert not resp.more and resp.count == 4


def test_range_count_only_and_keys_only(abc: Driver) -> None:
    resp = abc.store.range(RangeRequest(key=b"a", range_end=b"\0", count_only=True))
    assert resp.kvs == () and resp.count == 4
    resp = abc.store.range(RangeRequest(key=b"a", range_end=b"\0", keys_only=True))
    assert [kv.value for kv in resp.kvs] == [b""] * 4
    assert resp.kvs[1].version == 2


@pytest.mark.parametrize(
    ("order", "target", "expected"),
    [
        (SortOrder.NONE, SortTarget.KEY, [b"a", b"b", b"c", b"ca"]),
        (SortOrder.DESCEND, SortTarget.KEY, [b"ca", b"c", b"b", b"a"]),
        (SortOrder.NONE, SortTarget.VALUE, [b"ca", b"c", b"a", b"b"]),  # NONE + non-key target = ascend
        (SortOrder.DESCEND, SortTarget.VALUE, [b"b", b"a", b"c", b"ca"]),
        (SortOrder.ASCEND, SortTarget.MOD, [b"a", b"c", b"ca", b"b"]),
        (SortOrder.DESCEND, SortTarget.CREATE, [b"ca", b"c", b"b", b"a"]),
        (SortOrder.DESCEND, SortTarget.VERSION, [b"b", b"a", b"c", b"ca"]),
    ],
)
def test_range_sort(abc: Driver, order: SortOrder, target: SortTarget, expected: list[bytes]) -> None:
    assert keys(abc.store, RangeRequest(key=b"a", range_end=b"\0", sort_order=order, sort_target=target)) == expected


def test_range_sort_then_limit(abc: Driver) -> None:
    resp = abc.store.range(
        RangeRequest(key=b"a", range_end=b"\0", limit=1, sort_order=SortOrder.DESCEND, sort_target=SortTarget.CREATE)
    )
    assert [kv.key for kv in resp.kvs] == [b"ca"] and resp.more and resp.count == 4


def test_range_revision_filters(abc: Driver) -> None:
    s = abc.store
    assert keys(s, RangeRequest(key=b"a", range_end=b"\0", min_mod_revision=4)) == [b"b", b"c", b"ca"]
    assert keys(s, RangeRequest(key=b"a", range_end=b"\0", max_mod_revision=4)) == [b"a", b"c"]
    assert keys(s, RangeRequest(key=b"a", range_end=b"\0", min_create_revision=4)) == [b"c", b"ca"]
    assert keys(s, RangeRequest(key=b"a", range_end=b"\0", max_create_revision=3)) == [b"a", b"b"]
    # The lock recipe: newest key created before mine.
    resp = s.range(
        RangeRequest(
            key=b"a",
            range_end=b"\0",
            max_create_revision=4,
            sort_order=SortOrder.DESCEND,
            sort_target=SortTarget.CREATE,
            limit=1,
        )
    )
    assert [kv.key for kv in resp.kvs] == [b"c"] and resp.count == 4


def test_historical_reads_compaction_and_future(abc: Driver) -> None:
    s = abc.store
    assert keys(s, RangeRequest(key=b"a", range_end=b"\0", revision=3)) == [b"a", b"b"]
    assert s.range(RangeRequest(key=b"b", revision=5)).kvs[0].value == b"1"
    with pytest.raises(errors.FutureRevision) as exc:
        s.range(RangeRequest(key=b"a", revision=7))
    assert exc.value.message == "etcdserver: mvcc: required revision is a future revision"
    abc.apply(CompactionRequest(revision=4))
    assert s.compact_revision == 4
    with pytest.raises(errors.Compacted):
        s.range(RangeRequest(key=b"a", revision=3))
    # Reading at the compact revision itself still works.
    assert keys(s, RangeRequest(key=b"a", range_end=b"\0", revision=4)) == [b"a", b"b", b"c"]
    assert s.range(RangeRequest(key=b"b", revision=4)).kvs[0].value == b"1"


def test_empty_key_is_rejected() -> None:
    d = Driver()
    with pytest.raises(errors.KeyNotProvided):
        d.store.range(RangeRequest(key=b""))
    with pytest.raises(errors.KeyNotProvided):
        d.put(b"")
    with pytest.raises(errors.KeyNotProvided):
        d.delete(b"")


# ---------------------------------------------------------------------- put / delete


def test_put_prev_kv_ignore_value_ignore_lease() -> None:
    d = Driver()
    d.apply(LeaseGrantRequest(ttl=30, id=5))
    d.put(b"k", b"old", lease=5)
    resp = d.put(b"k", b"", ignore_value=True, prev_kv=True)
    assert isinstance(resp, PutResponse) and resp.prev_kv is not None and resp.prev_kv.value == b"old"
    kv = d.store.range(RangeRequest(key=b"k")).kvs[0]
    assert (kv.value, kv.lease, kv.version) == (b"old", 0, 2)  # lease 0 given and not ignored: detached
    d.put(b"k", b"new", lease=5)
    d.put(b"k", b"newer", ignore_lease=True)
    kv = d.store.range(RangeRequest(key=b"k")).kvs[0]
    assert (kv.value, kv.lease) == (b"newer", 5)
    with pytest.raises(errors.KeyNotFound) as exc:
        d.put(b"absent", ignore_value=True)
    assert exc.value.message == "etcdserver: key not found"
    with pytest.raises(errors.KeyNotFound):
        d.put(b"absent", b"x", ignore_lease=True)


def test_put_with_unknown_lease_fails_and_changes_nothing() -> None:
    d = Driver()
    before = d.store.hash()
    with pytest.raises(errors.LeaseNotFound) as exc:
        d.put(b"k", lease=99)
    assert exc.value.code == "NOT_FOUND" and exc.value.message == "etcdserver: requested lease not found"
    assert d.store.hash() == before and d.store.revision == 1


def test_delete_range_prev_kvs() -> None:
    d = Driver()
    for k in (b"p/1", b"p/2", b"q"):
        d.put(k, k)
    resp = d.delete(b"p/", b"p0", prev_kv=True)
    assert isinstance(resp, DeleteRangeResponse)
    assert resp.deleted == 2 and [kv.value for kv in resp.prev_kvs] == [b"p/1", b"p/2"]
    assert [e.type for e in d.store.last_events] == [EventType.DELETE, EventType.DELETE]
    assert d.store.last_events[0].kv == KeyValue(key=b"p/1", mod_revision=5)
    assert keys(d.store, RangeRequest(key=b"\0", range_end=b"\0")) == [b"q"]


# ---------------------------------------------------------------------- txn


@pytest.mark.parametrize(
    ("target", "result", "field", "value", "ok"),
    [
        (T.VERSION, E, "version", 2, True),
        (T.VERSION, G, "version", 1, True),
        (T.VERSION, L, "version", 2, False),
        (T.VERSION, NE, "version", 2, False),
        (T.CREATE, E, "create_revision", 2, True),
        (T.MOD, E, "mod_revision", 3, True),
        (T.MOD, L, "mod_revision", 3, False),
        (T.VALUE, E, "value", b"v2", True),
        (T.VALUE, G, "value", b"v1", True),
        (T.VALUE, L, "value", b"v1", False),
        (T.LEASE, E, "lease", 0, True),
        (T.LEASE, NE, "lease", 0, False),
    ],
)
def test_txn_compare(target: CompareTarget, result: CompareResult, field: str, value: object, ok: bool) -> None:
    d = Driver()
    d.put(b"k", b"v1")
    d.put(b"k", b"v2")
    resp = d.apply(
        TxnRequest(
            compare=(cmp(b"k", target, result, **{field: value}),), success=(put_op(b"s"),), failure=(put_op(b"f"),)
        )
    )
    assert isinstance(resp, TxnResponse) and resp.succeeded is ok
    assert keys(d.store, RangeRequest(key=b"f" if not ok else b"s")) != []


def test_compare_on_missing_key() -> None:
    d = Driver()
    # etcd's lock/leader recipe: create_revision == 0 means "absent".
    resp = d.apply(TxnRequest(compare=(cmp(b"lock", T.CREATE, E, create_revision=0),), success=(put_op(b"lock"),)))
    assert isinstance(resp, TxnResponse) and resp.succeeded
    resp = d.apply(TxnRequest(compare=(cmp(b"lock", T.CREATE, E, create_revision=0),), success=(put_op(b"lock"),)))
    assert isinstance(resp, TxnResponse) and not resp.succeeded
    # A value compare on a missing key always fails, even NOT_EQUAL.
    resp = d.apply(TxnRequest(compare=(cmp(b"nope", T.VALUE, NE, value=b"x"),)))
    assert isinstance(resp, TxnResponse) and not resp.succeeded


def test_compare_over_a_range_needs_every_key() -> None:
    d = Driver()
    d.put(b"r/a")
    d.put(b"r/b")
    d.put(b"r/b")
    all_v1 = cmp(b"r/", T.VERSION, E, range_end=b"r0", version=1)
    resp = d.apply(TxnRequest(compare=(all_v1,)))
    assert isinstance(resp, TxnResponse) and not resp.succeeded
    some = cmp(b"r/", T.VERSION, G, range_end=b"r0", version=0)
    resp = d.apply(TxnRequest(compare=(some,)))
    assert isinstance(resp, TxnResponse) and resp.succeeded


def test_txn_ranges_see_earlier_writes_but_compares_see_the_pre_state() -> None:
    d = Driver()
    d.put(b"x", b"0")
    nested = TxnRequest(compare=(cmp(b"x", T.VALUE, E, value=b"0"),), success=(put_op(b"n", b"saw-old"),))
    resp = d.apply(TxnRequest(success=(put_op(b"x", b"1"), range_op(b"x"), txn_op(nested), range_op(b"x", revision=2))))
    assert isinstance(resp, TxnResponse)
    inner = resp.responses
    assert inner[1].response_range is not None and inner[1].response_range.kvs[0].value == b"1"
    assert inner[2].response_txn is not None and inner[2].response_txn.succeeded  # evaluated before the put
    assert inner[3].response_range is not None and inner[3].response_range.kvs[0].value == b"0"
    assert d.store.revision == 3


def test_failing_txn_is_atomic() -> None:
    d = Driver()
    d.put(b"a")
    before = (d.store.hash(), d.store.revision)
    with pytest.raises(errors.LeaseNotFound):
        d.apply(TxnRequest(success=(put_op(b"b"), put_op(b"c", lease=42))))
    with pytest.raises(errors.FutureRevision):
        d.apply(TxnRequest(success=(put_op(b"b"), range_op(b"a", revision=99))))
    with pytest.raises(errors.KeyNotFound):
        d.apply(TxnRequest(success=(del_op(b"a"), put_op(b"q", ignore_value=True))))
    assert (d.store.hash(), d.store.revision) == before
    # The branch not taken is not checked.
    resp = d.apply(TxnRequest(compare=(cmp(b"a", T.VERSION, E, version=1),), failure=(put_op(b"c", lease=42),)))
    assert isinstance(resp, TxnResponse) and resp.succeeded


def test_nested_txn_responses() -> None:
    d = Driver()
    inner = TxnRequest(
        compare=(cmp(b"a", T.VERSION, E, version=0),), success=(put_op(b"a", b"in"),), failure=(range_op(b"a"),)
    )
    resp = d.apply(TxnRequest(success=(txn_op(inner),)))
    assert isinstance(resp, TxnResponse)
    nested = resp.responses[0].response_txn
    assert nested is not None and nested.succeeded and nested.responses[0].response_put is not None
    resp = d.apply(TxnRequest(success=(txn_op(inner),)))
    assert isinstance(resp, TxnResponse)
    nested = resp.responses[0].response_txn
    assert nested is not None and not nested.succeeded
    assert nested.responses[0].response_range is not None


# ---------------------------------------------------------------------- compaction


def test_compaction_rules() -> None:
    d = Driver()
    d.put(b"a", b"1")  # 2
    d.put(b"a", b"2")  # 3
    d.put(b"b", b"1")  # 4
    d.delete(b"b")  # 5
    d.put(b"c", b"1")  # 6
    with pytest.raises(errors.FutureRevision):
        d.apply(CompactionRequest(revision=7))
    d.apply(CompactionRequest(revision=5))
    with pytest.raises(errors.Compacted) as exc:
        d.apply(CompactionRequest(revision=5))
    assert exc.value.code == "OUT_OF_RANGE"
    with pytest.raises(errors.Compacted):
        d.apply(CompactionRequest(revision=3))
    s = d.store
    assert s.revision == 6  # compaction does not bump the revision
    assert keys(s, RangeRequest(key=b"\0", range_end=b"\0", revision=5)) == [b"a"]
    assert s.range(RangeRequest(key=b"a", revision=5)).kvs[0].value == b"2"
    # Events of the compact revision itself stay (a watcher may start there, as in etcd).
    assert [(e.type, e.kv.mod_revision) for e in s.events_since(0)] == [(EventType.DELETE, 5), (EventType.PUT, 6)]
    assert s.hash_kv(0)[1:] == (5, 6)


def test_compaction_releases_db_space_and_defragment_returns_it() -> None:
    d = Driver()
    for i in range(50):
        d.put(b"k", b"x" * 100 + bytes([i]))
    size, in_use = d.store.db_size, d.store.db_size_in_use
    assert size == in_use > 50 * 100
    d.apply(CompactionRequest(revision=d.store.revision))
    assert d.store.db_size == size and d.store.db_size_in_use < size // 10
    d.store.defragment()
    assert d.store.db_size == d.store.db_size_in_use


# ---------------------------------------------------------------------- leases


def test_lease_grant_attach_revoke_in_one_revision() -> None:
    d = Driver()
    resp = d.apply(LeaseGrantRequest(ttl=60))
    assert isinstance(resp, LeaseGrantResponse) and resp.id > 0 and resp.ttl == 60
    lid = resp.id
    for k in (b"l/1", b"l/2", b"l/3"):
        d.put(k, lease=lid)
    d.put(b"l/2", lease=0)  # moved off the lease
    ttl = d.store.lease_time_to_live(LeaseTimeToLiveRequest(id=lid, keys=True), remaining_ttl=42)
    assert (ttl.ttl, ttl.granted_ttl, ttl.keys) == (42, 60, (b"l/1", b"l/3"))
    rev = d.store.revision
    d.apply(LeaseRevokeRequest(id=lid))
    assert d.store.revision == rev + 1
    assert {e.kv.key for e in d.store.last_events} == {b"l/1", b"l/3"}
    assert keys(d.store, RangeRequest(key=b"l/", range_end=b"l0")) == [b"l/2"]
    assert d.store.lease_time_to_live(LeaseTimeToLiveRequest(id=lid)).ttl == -1
    with pytest.raises(errors.LeaseNotFound):
        d.apply(LeaseRevokeRequest(id=lid))


def test_lease_ids_are_deterministic_and_duplicates_rejected() -> None:
    a, b = Driver(), Driver()
    ra, rb = a.apply(LeaseGrantRequest(ttl=5)), b.apply(LeaseGrantRequest(ttl=5))
    assert isinstance(ra, LeaseGrantResponse) and isinstance(rb, LeaseGrantResponse) and ra.id == rb.id
    a.apply(LeaseGrantRequest(ttl=5, id=1234))
    with pytest.raises(errors.LeaseExists):
        a.apply(LeaseGrantRequest(ttl=5, id=1234))
    with pytest.raises(errors.LeaseTTLTooLarge):
        a.apply(LeaseGrantRequest(ttl=MAX_LEASE_TTL_S + 1))
    assert a.store.lease_ids() == sorted([ra.id, 1234])
    assert [s.id for s in a.store.lease_leases().leases] == sorted([ra.id, 1234])


def test_deleting_a_key_detaches_it_from_its_lease() -> None:
    d = Driver()
    d.apply(LeaseGrantRequest(ttl=5, id=3))
    d.put(b"k", lease=3)
    d.delete(b"k")
    assert d.store.lease_keys(3) == []


# ---------------------------------------------------------------------- alarms


def test_nospace_alarm_blocks_puts_but_not_deletes() -> None:
    d = Driver()
    d.put(b"a")
    resp = d.apply(AlarmRequest(action=AlarmAction.ACTIVATE, member_id=1, alarm=AlarmType.NOSPACE))
    assert d.store.alarms() == (AlarmMember(1, AlarmType.NOSPACE),)
    assert resp is not None
    with pytest.raises(errors.NoSpace) as exc:
        d.put(b"b")
    assert exc.value.message == "etcdserver: mvcc: database space exceeded"
    with pytest.raises(errors.NoSpace):
        d.apply(TxnRequest(compare=(cmp(b"a", T.VERSION, E, version=9),), success=(put_op(b"b"),)))
    with pytest.raises(errors.NoSpace):
        d.apply(LeaseGrantRequest(ttl=5))
    d.delete(b"a")
    d.apply(CompactionRequest(revision=d.store.revision))
    d.apply(AlarmRequest(action=AlarmAction.DEACTIVATE, member_id=1, alarm=AlarmType.NOSPACE))
    assert d.store.alarms() == ()
    d.put(b"b")


def test_corrupt_alarm_blocks_everything_but_alarms() -> None:
    d = Driver()
    d.apply(AlarmRequest(action=AlarmAction.ACTIVATE, member_id=2, alarm=AlarmType.CORRUPT))
    with pytest.raises(errors.Corrupt):
        d.delete(b"a")
    with pytest.raises(errors.Corrupt):
        d.apply(RangeRequest(key=b"a"))
    d.apply(AlarmRequest(action=AlarmAction.DEACTIVATE, member_id=2, alarm=AlarmType.CORRUPT))
    d.delete(b"a")


# ---------------------------------------------------------------------- apply index, hash, snapshot


def test_apply_requires_increasing_indexes() -> None:
    s = Store()
    s.apply(RangeRequest(key=b"a"), 5)
    with pytest.raises(ValueError, match="not after"):
        s.apply(RangeRequest(key=b"a"), 5)


def test_hash_kv_is_a_function_of_kept_revisions() -> None:
    a, b = Driver(), Driver()
    for d in (a, b):
        d.put(b"x", b"1")
        d.put(b"y", b"2")
    assert a.store.hash_kv(0) == b.store.hash_kv(0)
    h2 = a.store.hash_kv(2)
    a.put(b"z")
    assert a.store.hash_kv(2) == h2 and a.store.hash_kv(0) != h2
    b.put(b"z", b"other")
    assert a.store.hash_kv(0) != b.store.hash_kv(0)
    with pytest.raises(errors.FutureRevision):
        a.store.hash_kv(100)


def test_snapshot_round_trip_keeps_everything() -> None:
    d = Driver()
    d.apply(LeaseGrantRequest(ttl=9, id=77))
    d.put(b"a", b"1", lease=77)
    d.put(b"b", b"1")
    d.put(b"a", b"2", lease=77)
    d.delete(b"b")
    d.apply(CompactionRequest(revision=3))
    d.put(b"c", b"3")
    d.apply(AlarmRequest(action=AlarmAction.ACTIVATE, member_id=4, alarm=AlarmType.NOSPACE))
    s = d.store
    r = Store.restore(s.snapshot())
    assert r.snapshot() == s.snapshot()
    assert r.hash() == s.hash() and r.hash_kv(0) == s.hash_kv(0)
    assert (r.revision, r.compact_revision, r.applied_index) == (s.revision, s.compact_revision, s.applied_index)
    assert r.events_since(0) == s.events_since(0)
    assert r.lease_keys(77) == [b"a"] and r.alarms() == s.alarms()
    assert (r.db_size, r.db_size_in_use) == (s.db_size, s.db_size_in_use)
    # The restored store keeps working like the original.
    d2 = Driver(r)
    d.apply(LeaseRevokeRequest(id=77))
    d2.apply(LeaseRevokeRequest(id=77))
    assert r.hash() == s.hash()


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x91\x01" * 3])
def test_restore_rejects_garbage_with_a_clear_error(garbage: bytes) -> None:
    with pytest.raises(errors.MalformedCommand):
        Store.restore(garbage)
