"""Property tests: the store against a trivially correct reference model.

The model keeps a full copy of the key space for every revision (dict key -> KeyValue), so
every read, at any revision, has an obvious right answer.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_harness import Driver, cmp, del_op, put_op

from conclave.kv import errors
from conclave.kv.index import in_range
from conclave.kv.mvcc import Store
from conclave.kv.types import (
    AlarmAction,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    EventType,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)


class Model:
    def __init__(self) -> None:
        self.states: dict[int, dict[bytes, KeyValue]] = {1: {}}
        self.rev = 1
        self.compact = -1

    @property
    def now(self) -> dict[bytes, KeyValue]:
        return self.states[self.rev]

    def write(self, puts: list[tuple[bytes, bytes]], deletes: list[tuple[bytes, bytes]]) -> None:
        cur = dict(self.now)
        changed = False
        rev = self.rev + 1
        for key, end in deletes:
            for k in [k for k in cur if in_range(k, key, end)]:
                del cur[k]
                changed = True
        for key, value in puts:
            prev = cur.get(key)
            cur[key] = KeyValue(
                key, prev.create_revision if prev else rev, rev, prev.version + 1 if prev else 1, value, 0
            )
            changed = True
        if changed:
            self.rev = rev
            self.states[rev] = cur

    def range(self, key: bytes, end: bytes, rev: int) -> list[KeyValue]:
        state = self.states[self.rev if rev <= 0 else rev]
        return [state[k] for k in sorted(state) if in_range(k, key, end)]


KEYS = [b"a", b"b", b"ba", b"c"]
key_st = st.sampled_from(KEYS)
end_st = st.sampled_from([b"", b"", b"\0", b"b", b"c", b"d"])
value_st = st.sampled_from([b"x", b"y", b""])

action_st = st.one_of(
    st.tuples(st.just("put"), key_st, value_st),
    st.tuples(st.just("del"), key_st, end_st),
    st.tuples(st.just("txn"), key_st, st.integers(min_value=0, max_value=3), key_st, value_st),
    st.tuples(st.just("compact"), st.integers(min_value=-2, max_value=2)),
    st.tuples(st.just("range"), key_st, end_st, st.integers(min_value=-3, max_value=1), st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(action_st, max_size=50))
def test_store_matches_model(actions: list[tuple[object, ...]]) -> None:
    d, twin, m = Driver(), Driver(), Model()

    def both(cmd: object) -> object:
        r = d.apply(cmd)  # type: ignore[arg-type]
        twin.apply(cmd)  # type: ignore[arg-type]
        return r

    for action in actions:
        kind = action[0]
        if kind == "put":
            _, key, value = action
            both(PutRequest(key=key, value=value))  # type: ignore[arg-type]
            m.write([(key, value)], [])  # type: ignore[list-item]
        elif kind == "del":
            _, key, end = action
            both(DeleteRangeRequest(key=key, range_end=end))  # type: ignore[arg-type]
            m.write([], [(key, end)])  # type: ignore[list-item]
        elif kind == "txn":
            _, key, version, other, value = action
            assert isinstance(key, bytes) and isinstance(other, bytes) and isinstance(value, bytes)
            cur = m.now.get(key)
            ok = (cur.version if cur else 0) == version
            txn = TxnRequest(
                compare=(cmp(key, CompareTarget.VERSION, CompareResult.EQUAL, version=version),),
                success=(put_op(key, value), *(() if other == key else (put_op(other, value),))),
                failure=(del_op(other),),
            )
            resp = both(txn)
            assert isinstance(resp, TxnResponse) and resp.succeeded == ok
            if ok:
                m.write([(key, value)] + ([] if other == key else [(other, value)]), [])
            else:
                m.write([], [(other, b"")])
        elif kind == "compact":
            target = m.rev + action[1]  # type: ignore[operator]
            if target <= m.compact:
                with pytest.raises(errors.Compacted):
                    both(CompactionRequest(revision=target))
            elif target > m.rev:
                with pytest.raises(errors.FutureRevision):
                    both(CompactionRequest(revision=target))
            else:
                both(CompactionRequest(revision=target))
                m.compact = target
        else:
            _, key, end, back, limit = action
            assert isinstance(key, bytes) and isinstance(end, bytes) and isinstance(back, int)
            assert isinstance(limit, int)
            rev = 0 if back == 1 else max(1, m.rev + back)
            req = RangeRequest(key=key, range_end=end, revision=rev, limit=limit)
            if 0 < rev < m.compact:
                with pytest.raises(errors.Compacted):
                    d.store.range(req)
                continue
            expected = m.range(key, end, rev)
            resp = d.store.range(req)
            cut = expected[:limit] if limit else expected
            assert list(resp.kvs) == cut
            assert resp.count == len(expected) and resp.more == (len(cut) < len(expected))
            desc = d.store.range(
                RangeRequest(
                    key=key, range_end=end, revision=rev, sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD
                )
            )
            assert [kv.mod_revision for kv in desc.kvs] == sorted((kv.mod_revision for kv in expected), reverse=True)
        assert d.store.revision == m.rev
    s = d.store
    # Every read at every readable revision matches the model.
    for rev in range(max(m.compact, 1), m.rev + 1):
        assert list(s.range(RangeRequest(key=b"\0", range_end=b"\0", revision=rev)).kvs) == m.range(b"\0", b"\0", rev)
    # The event history replays the model's diffs from the compact revision on.
    for ev in s.events_since(0):
        rev = ev.kv.mod_revision
        assert rev >= m.compact
        before, after = m.states[rev - 1], m.states[rev]
        if ev.type == EventType.PUT:
            assert after[ev.kv.key] == ev.kv and ev.prev_kv == before.get(ev.kv.key)
        else:
            assert ev.kv.key not in after and ev.prev_kv == before[ev.kv.key]
    changed = sum(
        len(set(m.states[r].items()) ^ set(m.states[r - 1].items())) > 0 for r in range(max(m.compact, 2), m.rev + 1)
    )
    assert len({e.kv.mod_revision for e in s.events_since(0)}) == changed
    # Replicas fed the same commands agree; snapshots round-trip exactly.
    assert s.hash() == twin.store.hash() and s.hash_kv(0) == twin.store.hash_kv(0)
    restored = Store.restore(s.snapshot())
    assert restored.hash() == s.hash() and restored.events_since(0) == s.events_since(0)
    assert restored.snapshot() == s.snapshot()


lease_action_st = st.one_of(
    st.tuples(st.just("grant"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("put"), key_st, st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("revoke"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("del"), key_st, end_st),
    st.tuples(st.just("compact"), st.integers(min_value=0, max_value=2)),
    st.tuples(st.just("alarm"), st.booleans()),
    st.tuples(st.just("restore"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(lease_action_st, max_size=40))
def test_replica_restored_midway_stays_identical(actions: list[tuple[object, ...]]) -> None:
    """One replica applies everything; the other restarts from a snapshot at random points."""

    a, b = Driver(), Driver()
    granted: list[int] = []
    for action in actions:
        kind = action[0]
        cmd: object
        if kind == "restore":
            b = Driver(Store.restore(b.store.snapshot()))
            continue
        if kind == "grant":
            cmd = LeaseGrantRequest(ttl=10, id=0 if action[1] == 0 else 100 + int(action[1]))  # type: ignore[call-overload]
        elif kind == "put":
            n = int(action[2])  # type: ignore[call-overload]
            cmd = PutRequest(key=action[1], lease=granted[n % len(granted)] if granted and n else 0)  # type: ignore[arg-type]
        elif kind == "revoke":
            n = int(action[1])  # type: ignore[call-overload]
            cmd = LeaseRevokeRequest(id=granted[n % len(granted)] if granted else 1)
        elif kind == "del":
            cmd = DeleteRangeRequest(key=action[1], range_end=action[2])  # type: ignore[arg-type]
        elif kind == "compact":
            cmd = CompactionRequest(revision=a.store.revision - int(action[1]))  # type: ignore[call-overload]
        else:
            act = AlarmAction.ACTIVATE if action[1] else AlarmAction.DEACTIVATE
            cmd = AlarmRequest(action=act, member_id=1, alarm=AlarmType.NOSPACE)
        outcomes = []
        for d in (a, b):
            try:
                outcomes.append(d.apply(cmd))  # type: ignore[arg-type]
            except errors.EtcdError as exc:
                outcomes.append(type(exc))  # type: ignore[arg-type]
            d.index = max(a.index, b.index)
        assert outcomes[0] == outcomes[1]
        if isinstance(outcomes[0], LeaseGrantResponse):
            granted.append(outcomes[0].id)
        assert a.store.hash() == b.store.hash()
        assert a.store.events_since(0) == b.store.events_since(0)
        for lease_id in a.store.lease_ids():
            assert a.store.lease_keys(lease_id) == b.store.lease_keys(lease_id)
            for key in a.store.lease_keys(lease_id):
                assert a.store.range(RangeRequest(key=key)).kvs[0].lease == lease_id
