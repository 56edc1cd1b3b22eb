"""The replicated state machine: every entry kind, once-only apply, images, leases, members."""

from __future__ import annotations

import msgpack
import pytest

from conclave.kv import errors as kverr
from conclave.kv.types import DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest
from conclave.machine import EntryError, ImageError, Member, StateMachine, entry
from conclave.machine.state import ONCE_WINDOW
from conclave.raft.codec import encode_conf_change
from conclave.raft.types import ConfChange, ConfChangeSingle, ConfChangeType, Entry, EntryType

A, B, C = 0xA, 0xB, 0xC


def members() -> list[Member]:
    return [Member(A, "a", ["http://127.0.0.1:1"]), Member(B, "b", ["http://127.0.0.1:2"])]


def cc_entry(index: int, kind: ConfChangeType, node: int, ctx: bytes = b"") -> Entry:
    cc = ConfChange(changes=(ConfChangeSingle(kind, node),), context=ctx)
    return Entry(1, index, EntryType.CONF_CHANGE, encode_conf_change(cc))


def test_kv_single_batch_and_empty_entries() -> None:
    sm = StateMachine.bootstrap(42, members())
    assert sm.apply(Entry(1, 1), 0).results == []  # a leader's empty entry
    one = sm.apply(Entry(1, 2, data=entry.encode_batch(A, [(5, PutRequest(key=b"k", value=b"v"))])), 0)
    assert [(r.origin, r.seq, r.error) for r in one.results] == [(A, 5, None)]
    assert entry.encode_batch(A, [(5, PutRequest(key=b"k"))])[:1] == entry.TAG_KV
    batch = entry.encode_batch(B, [(1, PutRequest(key=b"x", value=b"1")), (2, DeleteRangeRequest(key=b"k"))])
    assert batch[:1] == entry.TAG_BATCH
    out = sm.apply(Entry(1, 3, data=batch), 0)
    assert [(r.origin, r.seq) for r in out.results] == [(B, 1), (B, 2)]
    assert [(e.kv.key, e.kv.mod_revision) for e in out.events] == [(b"x", 3), (b"k", 4)]
    assert sm.store.revision == 4 and sm.applied_index == 3
    rng = sm.store.range(RangeRequest(key=b"x"))
    assert [kv.value for kv in rng.kvs] == [b"1"]


def test_an_error_is_a_result_not_a_crash_and_gaps_raise() -> None:
    sm = StateMachine.bootstrap(1, members())
    out = sm.apply(Entry(1, 1, data=entry.encode_batch(A, [(1, LeaseRevokeRequest(id=99))])), 0)
    assert isinstance(out.results[0].error, kverr.EtcdError) and out.results[0].response is None
    with pytest.raises(ValueError, match="in order"):
        sm.apply(Entry(1, 3, data=b""), 0)
    with pytest.raises(EntryError):
        entry.decode(b"Zjunk")
    with pytest.raises(EntryError):
        entry.decode(entry.TAG_BATCH + bytes(8) + b"\xc1")


def test_reapplying_an_applied_index_is_ignored() -> None:
    sm = StateMachine.bootstrap(1, members())
    e = Entry(1, 1, data=entry.encode_batch(A, [(1, PutRequest(key=b"k", value=b"v"))]))
    sm.apply(e, 0)
    h = sm.hash()
    assert sm.apply(e, 0).results == [] and sm.hash() == h and sm.store.revision == 2


def test_a_duplicate_origin_seq_is_applied_once_and_the_table_travels_in_the_image() -> None:
    sm, broken = StateMachine.bootstrap(1, members()), StateMachine.bootstrap(1, members(), once_only=False)
    put = entry.encode_batch(A, [(1, PutRequest(key=b"a", value=b"1")), (2, PutRequest(key=b"b", value=b"1"))])
    for m in (sm, broken):
        m.apply(Entry(1, 1, data=put), 0)
        m.apply(Entry(1, 2, data=entry.encode_batch(B, [(1, PutRequest(key=b"a", value=b"2"))])), 0)
    copy = StateMachine.restore(sm.snapshot())
    assert copy.applied_index == 2 and copy.hash() == sm.hash()
    assert copy.apply(Entry(2, 3, data=put), 0).results == [] and sm.apply(Entry(2, 3, data=put), 0).results == []
    assert sm.store.revision == 4 and copy.hash() == sm.hash()
    assert len(broken.apply(Entry(2, 3, data=put), 0).results) == 2 and broken.store.revision == 6
    # a re-proposed older batch that never applied still applies (out of order, within the window)
    late = sm.apply(Entry(2, 4, data=entry.encode_batch(A, [(4, PutRequest(key=b"c"))])), 0)
    older = sm.apply(Entry(2, 5, data=entry.encode_batch(A, [(3, PutRequest(key=b"d"))])), 0)
    assert len(late.results) == len(older.results) == 1
    assert sm.was_applied(A, 3) and not sm.was_applied(A, 5)
    # seq 0 (a lease expiry) is never deduplicated: two revokes both run
    sm.apply(Entry(2, 6, data=entry.encode_lease_expiry(77)), 0)
    assert sm.apply(Entry(2, 7, data=entry.encode_lease_expiry(77)), 0).results[0].error is not None


def test_the_once_table_is_bounded_and_a_new_epoch_never_collides() -> None:
    sm = StateMachine.bootstrap(1, members())
    first = entry.seq_base(1)
    idx = 0
    for s in range(first, first + 3):
        idx += 1
        sm.apply(Entry(1, idx, data=entry.encode_batch(A, [(s, PutRequest(key=b"k"))])), 0)
    # a restarted member (epoch 2) starts far above every seq of its previous run
    second = entry.seq_base(2)
    assert second > first + ONCE_WINDOW
    idx += 1
    assert len(sm.apply(Entry(1, idx, data=entry.encode_batch(A, [(second, PutRequest(key=b"k"))])), 0).results) == 1
    # what lies further below than the window counts as applied (bounded memory)
    assert sm.was_applied(A, first) and not sm.was_applied(A, second + 1)
    image = msgpack.unpackb(sm.snapshot(), raw=False)
    assert len(image["once"]) == 1 and len(image["once"][0][2]) <= ONCE_WINDOW // 8
    with pytest.raises(ValueError):
        entry.seq_base(0)


def test_snapshot_restore_equal_hash_and_old_image() -> None:
    sm = StateMachine.bootstrap(9, members())
    sm.apply(Entry(1, 1, data=entry.encode_batch(A, [(1, PutRequest(key=b"k", value=b"v")),
                                                      (2, LeaseGrantRequest(ttl=30))])), 0)
    copy = StateMachine.restore(sm.snapshot(), index=1)
    assert (copy.hash(), copy.cluster_id, sorted(copy.members), copy.applied_index) == (sm.hash(), 9, [A, B], 1)
    assert len(copy.leases) == 1
    old = msgpack.packb({"kv": sm.store.snapshot(), "members": [m.to_wire() for m in members()],
                         "cluster_id": 9}, use_bin_type=True)
    restored = StateMachine.restore(old, index=7)
    assert restored.hash() == sm.hash() and restored.applied_index == 7 and restored.cluster_id == 9
    assert not restored.was_applied(A, 1)
    with pytest.raises(ImageError):
        StateMachine.restore(b"not an image")


def test_lease_expiry_on_virtual_time() -> None:
    sm = StateMachine.bootstrap(1, members())
    sm.leases.promote(0, 0)
    out = sm.apply(Entry(1, 1, data=entry.encode_batch(A, [(1, LeaseGrantRequest(ttl=5))])), 1_000)
    lid = out.results[0].response.id  # type: ignore[union-attr]
    assert sm.leases.expired(5_999) == []
    assert sm.leases.renew(lid, 5_000) == 5
    assert sm.leases.expired(9_999) == [] and sm.leases.expired(10_000) == [lid]
    sm.apply(Entry(1, 2, data=entry.encode_lease_expiry(lid)), 10_000)
    assert lid not in sm.leases and sm.store.lease_ids() == []
    follower = StateMachine.bootstrap(1, members())
    follower.apply(Entry(1, 1, data=entry.encode_batch(A, [(1, LeaseGrantRequest(ttl=5))])), 1_000)
    assert follower.leases.expired(10**9) == []  # only the primary expires anything


def test_conf_changes_and_member_attrs() -> None:
    sm = StateMachine.bootstrap(1, members())
    ctx = entry.encode_conf_context(A, 3, [Member(C, "c", ["http://127.0.0.1:3"])])
    out = sm.apply(cc_entry(1, ConfChangeType.ADD_LEARNER, C, ctx), 0)
    assert out.members_changed and [(r.origin, r.seq) for r in out.results] == [(A, 3)]
    assert sm.members[C].is_learner and sm.members[C].name == "c"
    sm.apply(cc_entry(2, ConfChangeType.ADD_VOTER, C), 0)
    assert not sm.members[C].is_learner
    attrs = entry.encode_member_attrs(C, 4, Member(C, "c2", ["http://127.0.0.1:4"], ["http://127.0.0.1:5"]))
    out = sm.apply(Entry(1, 3, data=attrs), 0)
    assert out.members_changed and [(r.origin, r.seq) for r in out.results] == [(C, 4)]
    assert (sm.members[C].name, sm.members[C].peer_urls, sm.members[C].client_urls) == (
        "c2", ["http://127.0.0.1:4"], ["http://127.0.0.1:5"])
    out = sm.apply(cc_entry(4, ConfChangeType.REMOVE_NODE, B), 0)
    assert out.removed == frozenset({B}) and sorted(sm.members) == [A, C]
    copy = StateMachine.restore(sm.snapshot())
    assert [m.to_wire() for m in copy.members.values()] == [m.to_wire() for m in sm.members.values()]
