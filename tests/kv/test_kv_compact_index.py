"""The compact key index and the packed event history: same behaviour, fewer bytes.

* A store image written by the previous (list-per-key, Event-per-revision) store restores to the
  same state, the same hashes and the same event history, and re-encodes byte for byte
  (tests/kv/data/store_v1_image.*, made by that code from store_image_workload.build()).
* Events rebuilt from the index on replay equal the events published at apply time, across
  random writes, txns, lease revokes and compactions (boundary events included).
* Bytes per key stay within a bound (the old index took ~690 B per key beyond the payload).
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kv_harness import Driver, del_op, put_op
from store_image_workload import build

from conclave.kv.mvcc import Store
from conclave.kv.types import (
    CompactionRequest,
    DeleteRangeRequest,
    Event,
    KeyValue,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    TxnRequest,
)

DATA = Path(__file__).parent / "data"


def _kv(k: KeyValue | None) -> Any:
    return None if k is None else [k.key.hex(), k.create_revision, k.mod_revision, k.version, k.value.hex(), k.lease]


def _events(s: Store) -> list[Any]:
    return [[int(e.type), _kv(e.kv), _kv(e.prev_kv)] for e in s.events_since(0)]


def test_an_image_of_the_previous_store_restores_identically() -> None:
    image = (DATA / "store_v1_image.bin").read_bytes()
    expected = json.loads((DATA / "store_v1_image.json").read_text())
    restored = Store.restore(image)
    assert restored.revision == expected["revision"]
    assert restored.compact_revision == expected["compact_revision"]
    assert restored.hash() == expected["hash"]
    assert list(restored.hash_kv(0)) == expected["hash_kv"]
    assert _events(restored) == expected["events"]
    assert restored.snapshot() == image  # the image format is unchanged
    fresh = build()
    assert fresh.snapshot() == image and _events(fresh) == expected["events"]


ops = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 7), st.binary(max_size=3)),
    st.tuples(st.just("del"), st.integers(0, 7), st.integers(0, 3)),
    st.tuples(st.just("txn"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("lease"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("compact"), st.integers(0, 6), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=40))
def test_rebuilt_history_equals_the_events_published_at_apply(script: list[tuple[str, int, Any]]) -> None:
    d = Driver()
    published: list[Event] = []
    lease_id = 0

    def key(i: int) -> bytes:
        return b"k%d" % i

    def ap(cmd: Any) -> None:
        d.apply(cmd)
        published.extend(d.store.last_events)

    for action, a, b in script:
        if action == "put":
            ap(PutRequest(key=key(a), value=b))
        elif action == "del":
            ap(DeleteRangeRequest(key=key(a), range_end=key(a + b) if b else b""))
        elif action == "txn":
            ap(TxnRequest(success=(put_op(key(a), b"t"), del_op(key(b)), put_op(key(b), b"u"))))
        elif action == "lease":
            lease_id += 1
            ap(LeaseGrantRequest(ttl=10, id=lease_id))
            ap(PutRequest(key=key(a), value=b"l", lease=lease_id))
            ap(PutRequest(key=key(b), value=b"m", lease=lease_id))
            ap(LeaseRevokeRequest(id=lease_id))
        elif action == "compact":
            target = d.store.revision - a
            if target <= max(d.store.compact_revision, 0):
                continue
            ap(CompactionRequest(revision=target))
        s = d.store
        kept = [e for e in published if e.kv.mod_revision >= max(s.compact_revision, 0)]
        assert s.events_since(0) == kept
        assert s.history_length == len(kept)
        for pos, e in enumerate(kept):
            assert s.history_revision(pos) == e.kv.mod_revision and s.history_key(pos) == e.kv.key
        restored = Store.restore(s.snapshot())
        assert restored.events_since(0) == kept and restored.hash() == s.hash()


def _traced_bytes_per_key(keys: int, revisions: int) -> float:
    gc.collect()
    tracemalloc.start()
    s = Store()
    index = 0
    for r in range(revisions):
        for i in range(keys):
            index += 1
            s.apply(PutRequest(key=b"/mem/key/%08d" % i, value=bytes([r]) * 256), index)
    gc.collect()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(s) == keys
    return (traced - keys * (len(b"/mem/key/00000000") + 256 * revisions)) / keys


def test_per_key_overhead_stays_small() -> None:
    # measured ~192 B (1 revision) and ~150 B per extra revision with packed records; the old
    # index took ~690 B and ~270 B (more with its Event per revision): the bounds sit between
    one = _traced_bytes_per_key(5000, 1)
    three = _traced_bytes_per_key(5000, 3)
    assert one < 320, f"{one:.0f} B of overhead per key with 1 revision"
    assert three < 800, f"{three:.0f} B of overhead per key with 3 revisions"
