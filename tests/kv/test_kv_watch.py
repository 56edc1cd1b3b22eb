"""The watch hub: ordered, gap-free, duplicate-free delivery that never waits for a slow watcher."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kv_harness import Driver, del_op, put_op

from conclave.kv.index import in_range
from conclave.kv.mvcc import Store
from conclave.kv.types import CompactionRequest, Event, EventType, TxnRequest, WatchFilterType
from conclave.kv.watch import Watcher, WatchHub


class Cluster:
    """A driver plus a hub wired the way the server wires them."""

    def __init__(self, buffer_events: int = 1024) -> None:
        self.d = Driver()
        self.notified: list[int] = []
        self.hub = WatchHub(self.d.store, buffer_events=buffer_events, notify=lambda w: self.notified.append(w.id))

    def apply(self, cmd: object) -> None:
        self.d.apply(cmd)  # type: ignore[arg-type]
        self.hub.publish(self.d.store.last_events)

    def put(self, key: bytes, value: bytes = b"v") -> None:
        self.d.put(key, value)
        self.hub.publish(self.d.store.last_events)

    def delete(self, key: bytes, range_end: bytes = b"") -> None:
        self.d.delete(key, range_end)
        self.hub.publish(self.d.store.last_events)


def summary(events: list[Event]) -> list[tuple[int, bytes, int]]:
    return [(int(e.type), e.kv.key, e.kv.mod_revision) for e in events]


def test_key_watcher_gets_puts_and_deletes_without_prev_kv_by_default() -> None:
    c = Cluster()
    w = c.hub.watch(b"k")
    c.put(b"k", b"1")
    c.put(b"other")
    c.put(b"k", b"2")
    c.delete(b"k")
    events = w.take()
    assert summary(events) == [(0, b"k", 2), (0, b"k", 4), (1, b"k", 5)]
    assert all(e.prev_kv is None for e in events)
    assert c.notified == [w.id, w.id, w.id]
    assert w.take() == []


def test_prev_kv_filters_and_ranges() -> None:
    c = Cluster()
    w = c.hub.watch(b"p/", b"p0", prev_kv=True, filters=[WatchFilterType.NOPUT])
    all_keys = c.hub.watch(b"\0", b"\0", filters=[WatchFilterType.NODELETE])
    c.put(b"p/a", b"1")
    c.put(b"q", b"1")
    c.delete(b"p/", b"p0")
    events = w.take()
    assert summary(events) == [(1, b"p/a", 4)]
    assert events[0].prev_kv is not None and events[0].prev_kv.value == b"1"
    assert summary(all_keys.take()) == [(0, b"p/a", 2), (0, b"q", 3)]


def test_historical_start_replays_then_follows_live() -> None:
    c = Cluster()
    for i in range(5):
        c.put(b"k", b"%d" % i)  # revisions 2..6
    w = c.hub.watch(b"k", start_revision=4)
    assert not w.synced and c.hub.unsynced_count == 1
    c.put(b"k", b"live")  # 7: not delivered yet, the watcher is behind
    assert w.take() == []
    c.hub.catch_up()
    assert w.synced and c.hub.unsynced_count == 0
    c.put(b"k", b"after")  # 8
    assert [e.kv.mod_revision for e in w.take()] == [4, 5, 6, 7, 8]


def test_future_start_revision_skips_earlier_events() -> None:
    c = Cluster()
    w = c.hub.watch(b"k", start_revision=4)
    assert w.synced
    for _ in range(4):
        c.put(b"k")  # 2, 3, 4, 5
    assert [e.kv.mod_revision for e in w.take()] == [4, 5]


def test_compacted_start_is_cancelled_with_the_compact_revision() -> None:
    c = Cluster()
    for _ in range(4):
        c.put(b"k")
    c.apply(CompactionRequest(revision=4))
    w = c.hub.watch(b"k", start_revision=3)
    assert w.canceled and w.compact_revision == 4 and len(c.hub) == 0
    # Restarting from exactly the compact revision works (clientv3 retries that way).
    ok = c.hub.watch(b"k", start_revision=4)
    c.hub.catch_up()
    assert [e.kv.mod_revision for e in ok.take()] == [4, 5]


def test_unsynced_watcher_is_cancelled_when_its_history_is_compacted() -> None:
    c = Cluster(buffer_events=2)
    w = c.hub.watch(b"k")
    for _ in range(5):
        c.put(b"k")  # 2..6; the buffer holds 2, the watcher falls behind at 4
    assert not w.synced and w.next_revision == 4
    c.apply(CompactionRequest(revision=5))
    c.notified.clear()
    c.hub.catch_up()
    assert w.canceled and w.compact_revision == 5 and c.notified == [w.id]
    assert c.hub.get(w.id) is None


def test_slow_watcher_never_blocks_and_loses_nothing() -> None:
    c = Cluster(buffer_events=3)
    slow = c.hub.watch(b"\0", b"\0")
    fast = c.hub.watch(b"\0", b"\0")
    got_slow: list[Event] = []
    got_fast: list[Event] = []
    for i in range(40):
        c.apply(TxnRequest(success=(put_op(b"a%d" % i), put_op(b"b%d" % i))))  # 2 events per revision
        got_fast.extend(fast.take())
        assert len(slow.buffer) <= 3
        if i % 7 == 0:
            got_slow.extend(slow.take(max_events=1))  # whole revision even though it holds 2 events
    for _ in range(100):
        got_slow.extend(slow.take())
        c.hub.catch_up(max_events=5)
        if slow.synced and not slow.buffer:
            break
    assert slow.synced
    assert summary(got_slow) == summary(got_fast) == summary(c.d.store.events_since(0))


def test_take_keeps_revisions_whole() -> None:
    c = Cluster()
    w = c.hub.watch(b"\0", b"\0")
    c.apply(TxnRequest(success=(put_op(b"a"), put_op(b"b"), put_op(b"c"))))  # rev 2
    c.put(b"d")  # rev 3
    assert [e.kv.key for e in w.take(max_events=4)] == [b"a", b"b", b"c", b"d"]
    c.apply(TxnRequest(success=(put_op(b"a"), put_op(b"b"), put_op(b"c"))))  # rev 4
    c.put(b"d")  # rev 5
    assert [e.kv.key for e in w.take(max_events=1)] == [b"a"]  # one revision alone exceeds the limit
    c.apply(TxnRequest(success=(put_op(b"x"), put_op(b"y"))))  # rev 6
    # Buffer: b c (rev 4), d (rev 5), x y (rev 6); a limit of 4 would split rev 6.
    assert [e.kv.key for e in w.take(max_events=4)] == [b"b", b"c", b"d"]
    assert [e.kv.key for e in w.take(max_events=0)] == []
    assert [e.kv.key for e in w.take()] == [b"x", b"y"]


def test_big_revision_is_delivered_whole_to_an_empty_buffer() -> None:
    c = Cluster(buffer_events=2)
    w = c.hub.watch(b"\0", b"\0")
    c.apply(TxnRequest(success=tuple(put_op(b"k%d" % i) for i in range(5))))
    assert len(w.take()) == 5


def test_cancel_and_replace_store() -> None:
    c = Cluster()
    w = c.hub.watch(b"k")
    gone = c.hub.watch(b"k")
    assert c.hub.cancel(gone.id) and not c.hub.cancel(gone.id)
    c.put(b"k", b"1")  # 2
    assert gone.take() == []
    # A follower receives a snapshot of a store that is further ahead.
    ahead = Driver()
    ahead.put(b"k", b"1")
    ahead.put(b"k", b"2")  # 3
    ahead.delete(b"k")  # 4
    restored = Store.restore(ahead.store.snapshot())
    c.hub.replace_store(restored)
    assert not w.synced
    c.hub.catch_up()
    assert summary(w.take()) == [(0, b"k", 2), (0, b"k", 3), (1, b"k", 4)]


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "del", "txn", "take", "catch", "compact"]),
        st.sampled_from([b"a", b"b", b"c"]),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=60,
)


@settings(max_examples=250, deadline=None)
@given(ops, st.integers(min_value=1, max_value=4))
def test_every_watcher_sees_exactly_the_history_in_order(script: list[tuple[str, bytes, int]], cap: int) -> None:
    c = Cluster(buffer_events=cap)
    watchers: list[tuple[Watcher, bytes, bytes]] = [
        (c.hub.watch(b"a"), b"a", b""),
        (c.hub.watch(b"b", b"c"), b"b", b"c"),
        (c.hub.watch(b"\0", b"\0"), b"\0", b"\0"),
    ]
    received: dict[int, list[Event]] = {w.id: [] for w, _, _ in watchers}
    all_events: list[Event] = []
    for op, key, n in script:
        before = c.d.store.revision
        if op == "put":
            c.put(key)
        elif op == "del":
            c.delete(key, b"\0" if n == 0 else b"")
        elif op == "txn":
            c.apply(TxnRequest(success=(put_op(key), del_op(b"z"), put_op(b"zz%d" % n))))
        elif op == "take":
            for w, _, _ in watchers:
                received[w.id].extend(w.take(max_events=n or None))
        elif op == "catch":
            c.hub.catch_up(max_events=n + 1)
        elif op == "compact" and c.d.store.revision - n % 2 > c.d.store.compact_revision:
            c.apply(CompactionRequest(revision=c.d.store.revision - n % 2))
        if c.d.store.revision != before:
            all_events.extend(c.d.store.last_events)
    for _ in range(200):
        for w, _, _ in watchers:
            received[w.id].extend(w.take())
        c.hub.catch_up()
        if all(w.canceled or (w.synced and not w.buffer) for w, _, _ in watchers):
            break
    for w, key, end in watchers:
        expected = [e for e in all_events if in_range(e.kv.key, key, end)]
        got = received[w.id]
        if w.canceled:
            # Cancelled by compaction: what it got is a gap-free prefix of the history.
            assert summary(got) == summary(expected[: len(got)])
            assert w.compact_revision >= (got[-1].kv.mod_revision if got else 0)
        else:
            assert summary(got) == summary(expected)
            assert all(e.type in (EventType.PUT, EventType.DELETE) for e in got)
