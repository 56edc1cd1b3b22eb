"""The watch hub: streams the store's events to watchers, never blocked by a slow one.

Theory of operation
-------------------
A ``Watcher`` wants every event on a key or range from ``start_revision`` on, minus filtered
types, into a bounded buffer its consumer drains with ``take()``. ``next_revision`` is the
first revision the watcher has not been given yet; everything before it was delivered (or
did not match) exactly once, in revision order.

Watchers are in one of two sets:

* synced: up to date with the store. ``publish(events)`` (called by the driver after each
  apply, with ``store.last_events``) appends matching events to their buffers. A watcher
  whose buffer cannot take a whole revision is moved to the unsynced set at that revision,
  so publish never waits and never drops.
* unsynced: behind (created with an old ``start_revision``, overflowed, or the store was
  replaced by a snapshot). ``catch_up(max_events)`` replays from the store's event history,
  whole revisions at a time, as buffer room allows; a watcher that reaches the end of the
  history is synced again. One whose ``next_revision`` is below the store's compact revision
  is cancelled with that ``compact_revision``; as in etcd, a client may restart from exactly
  the compact revision (the history keeps that revision's events).

A revision is never split between the buffer and the history; a single revision larger than
the buffer is buffered whole when the buffer is empty (the events are shared with the
history, so this costs references, not copies). ``take(max_events)`` splits a revision only
when it alone exceeds ``max_events``.

``notify(watcher)`` (set by the driver) is called once per publish / catch_up call for each
watcher that got events or was cancelled there. Everything iterates in watch-id order, so the
hub is deterministic.

Rules for this module: no I/O, no clocks, no randomness; the store is only read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from conclave.kv.index import in_range
from conclave.kv.mvcc import Store
from conclave.kv.types import Event, EventType, WatchFilterType

DEFAULT_BUFFER_EVENTS = 1024
DEFAULT_CATCH_UP_EVENTS = 1000
"""etcd syncs at most 1000 revisions per batch; here it bounds history events scanned per call."""


@dataclass(slots=True, eq=False)
class Watcher:
    id: int
    key: bytes
    range_end: bytes
    next_revision: int
    capacity: int
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    synced: bool = False
    canceled: bool = False
    compact_revision: int = 0
    buffer: deque[Event] = field(default_factory=deque)

    def wants(self, event: Event) -> bool:
        if event.type == EventType.PUT:
            return not self.no_put
        return not self.no_delete

    def shape(self, event: Event) -> Event:
        if self.prev_kv or event.prev_kv is None:
            return event
        return Event(event.type, event.kv, None)

    @property
    def pending(self) -> int:
        return len(self.buffer)

    def take(self, max_events: int | None = None) -> list[Event]:
        """Pop buffered events, whole revisions only unless one revision exceeds ``max_events``."""
        buf = self.buffer
        if max_events is None or max_events >= len(buf):
            out = list(buf)
            buf.clear()
            return out
        if max_events <= 0:
            return []
        out = [buf.popleft() for _ in range(max_events)]
        last_rev = out[-1].kv.mod_revision
        if buf and buf[0].kv.mod_revision == last_rev:
            # Stopped inside a revision: give back its events unless that leaves nothing.
            keep = len(out)
            while keep > 0 and out[keep - 1].kv.mod_revision == last_rev:
                keep -= 1
            if keep > 0:
                for ev in reversed(out[keep:]):
                    buf.appendleft(ev)
                del out[keep:]
        return out


class WatchHub:
    def __init__(
        self,
        store: Store,
        *,
        buffer_events: int = DEFAULT_BUFFER_EVENTS,
        notify: Callable[[Watcher], None] | None = None,
    ) -> None:
        if buffer_events <= 0:
            raise ValueError("buffer_events must be positive")
        self.store = store
        self.buffer_events = buffer_events
        self.notify = notify
        self._next_id = 1
        self._watchers: dict[int, Watcher] = {}
        self._key_watchers: dict[bytes, dict[int, Watcher]] = {}
        self._range_watchers: dict[int, Watcher] = {}
        self._unsynced: dict[int, Watcher] = {}

    # ------------------------------------------------------------------ registry

    def __len__(self) -> int:
        return len(self._watchers)

    def get(self, watch_id: int) -> Watcher | None:
        return self._watchers.get(watch_id)

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        start_revision: int = 0,
        *,
        filters: Iterable[WatchFilterType] = (),
        prev_kv: bool = False,
        watch_id: int = 0,
        buffer_events: int = 0,
    ) -> Watcher:
        """Register a watcher. A compacted ``start_revision`` gives an already-cancelled one."""
        if watch_id == 0:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self._watchers:
            raise ValueError(f"watch id {watch_id} is in use")
        store = self.store
        filter_set = set(filters)
        w = Watcher(
            id=watch_id,
            key=key,
            range_end=range_end,
            next_revision=store.revision + 1 if start_revision <= 0 else start_revision,
            capacity=buffer_events if buffer_events > 0 else self.buffer_events,
            prev_kv=prev_kv,
            no_put=WatchFilterType.NOPUT in filter_set,
            no_delete=WatchFilterType.NODELETE in filter_set,
        )
        if w.next_revision < store.compact_revision:
            w.canceled = True
            w.compact_revision = store.compact_revision
            return w
        self._watchers[watch_id] = w
        if w.next_revision > store.revision:
            self._add_synced(w)
        else:
            self._unsynced[watch_id] = w
        return w

    def cancel(self, watch_id: int) -> bool:
        w = self._watchers.pop(watch_id, None)
        if w is None:
            return False
        self._remove_synced(w)
        self._unsynced.pop(watch_id, None)
        w.canceled = True
        return True

    def replace_store(self, store: Store) -> None:
        """The driver restored a snapshot: every watcher must catch up from the new history."""
        old_next = self.store.revision + 1
        self.store = store
        for w in list(self._watchers.values()):
            if w.synced:
                self._remove_synced(w)
                w.next_revision = max(w.next_revision, old_next)
                self._unsynced[w.id] = w

    def _add_synced(self, w: Watcher) -> None:
        w.synced = True
        if w.range_end:
            self._range_watchers[w.id] = w
        else:
            self._key_watchers.setdefault(w.key, {})[w.id] = w

    def _remove_synced(self, w: Watcher) -> None:
        if not w.synced:
            return
        w.synced = False
        if w.range_end:
            self._range_watchers.pop(w.id, None)
        else:
            group = self._key_watchers.get(w.key)
            if group is not None:
                group.pop(w.id, None)
                if not group:
                    del self._key_watchers[w.key]

    # ------------------------------------------------------------------ delivery

    def publish(self, events: Sequence[Event]) -> None:
        """Deliver the events of one or more just-applied revisions to synced watchers."""
        touched: dict[int, Watcher] = {}
        start = 0
        while start < len(events):
            rev = events[start].kv.mod_revision
            end = start
            while end < len(events) and events[end].kv.mod_revision == rev:
                end += 1
            self._publish_revision(rev, events[start:end], touched)
            start = end
        if self.notify is not None:
            for wid in sorted(touched):
                self.notify(touched[wid])

    def _publish_revision(self, rev: int, events: Sequence[Event], touched: dict[int, Watcher]) -> None:
        matched: dict[int, list[Event]] = {}
        watchers: dict[int, Watcher] = {}
        key_watchers = self._key_watchers
        range_watchers = self._range_watchers
        for ev in events:
            k = ev.kv.key
            group = key_watchers.get(k)
            if group:
                for wid, w in group.items():
                    matched.setdefault(wid, []).append(ev)
                    watchers[wid] = w
            for wid, w in range_watchers.items():
                if in_range(k, w.key, w.range_end):
                    matched.setdefault(wid, []).append(ev)
                    watchers[wid] = w
        for wid in sorted(matched):
            w = watchers[wid]
            if rev < w.next_revision:
                continue  # a watcher created with a future start_revision
            wanted = [w.shape(ev) for ev in matched[wid] if w.wants(ev)]
            if wanted:
                if w.buffer and len(w.buffer) + len(wanted) > w.capacity:
                    # Full: the history keeps these events; catch_up will bring them.
                    self._remove_synced(w)
                    w.next_revision = rev
                    self._unsynced[wid] = w
                    continue
                w.buffer.extend(wanted)
                touched[wid] = w
            w.next_revision = rev + 1

    def catch_up(self, max_events: int = DEFAULT_CATCH_UP_EVENTS) -> int:
        """Move unsynced watchers forward from the history; returns the events scanned.

        Scans about ``max_events`` history events in all (a revision is always finished once
        started, so progress is guaranteed).
        """
        store = self.store
        budget = max_events
        touched: dict[int, Watcher] = {}
        for wid in list(self._unsynced):
            if budget <= 0:
                break
            w = self._unsynced[wid]
            if w.next_revision < store.compact_revision:
                del self._unsynced[wid]
                del self._watchers[wid]
                w.canceled = True
                w.compact_revision = store.compact_revision
                touched[wid] = w
                continue
            scanned, delivered, done = self._replay(w, budget)
            budget -= scanned
            if delivered:
                touched[wid] = w
            if done:
                del self._unsynced[wid]
                w.next_revision = max(w.next_revision, store.revision + 1)
                self._add_synced(w)
        if self.notify is not None:
            for wid in sorted(touched):
                self.notify(touched[wid])
        return max_events - budget

    def _replay(self, w: Watcher, budget: int) -> tuple[int, bool, bool]:
        """Replay history into ``w``: (events scanned, delivered any, reached the end)."""
        store = self.store
        pos = store.history_position(w.next_revision)
        end = store.history_length
        scanned = 0
        delivered = False
        while pos < end:
            if scanned >= budget:
                return scanned, delivered, False
            rev = store.history_revision(pos)
            wanted: list[Event] = []
            stop = pos
            while stop < end:
                if store.history_revision(stop) != rev:
                    break
                # the store rebuilds history events on demand: only for keys the watcher covers
                if in_range(store.history_key(stop), w.key, w.range_end):
                    ev = store.history_event(stop)
                    if w.wants(ev):
                        wanted.append(w.shape(ev))
                stop += 1
            if wanted and w.buffer and len(w.buffer) + len(wanted) > w.capacity:
                return scanned, delivered, False  # wait for take()
            scanned += stop - pos
            pos = stop
            if wanted:
                w.buffer.extend(wanted)
                delivered = True
            w.next_revision = rev + 1
        return scanned, delivered, True
