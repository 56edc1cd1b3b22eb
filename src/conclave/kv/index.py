"""The key index: every stored revision of every key, in key order.

Theory of operation
-------------------
``KeyIndex`` owns the MVCC records of the store. Per key, a ``KeyHistory`` holds parallel
lists of main revisions, sub revisions (the op's position inside its write transaction) and
values, oldest first; a ``None`` value is a tombstone (the key was deleted at that revision,
ending its generation). A read "at revision r" takes the last record whose main revision is
<= r, so a duplicate main revision simply shadows the earlier one.

Two sorted key lists make ranges cheap: ``live_keys`` (keys that exist now, the fast path for
reads at the current revision: a range is two bisections) and ``all_keys`` (every key with at
least one kept record, for historical reads, compaction, hashing and snapshots). The
``live`` dict maps a live key to its current ``KeyValue``.

Compaction at revision c keeps, per key, the last record with main revision <= c when it is
a value (it is still what a read at c sees) and drops it when it is a tombstone; everything
older goes.

Rules for this module: no I/O, no clocks, no randomness; it never decides revisions (the store
passes them in) and never raises client errors.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from dataclasses import dataclass, field

from conclave.kv.types import KeyValue

ALL_KEYS_END = b"\0"
"""A range_end of one zero byte means "every key >= key" (etcd's convention)."""

RECORD_OVERHEAD_BYTES = 48
"""Estimated per-record storage overhead (revision keys, index entry) for db size figures."""


def range_bounds(keys: list[bytes], key: bytes, range_end: bytes) -> tuple[int, int]:
    """Slice bounds in the sorted ``keys`` of the etcd range [key, range_end)."""
    lo = bisect_left(keys, key)
    if not range_end:
        return lo, lo + 1 if lo < len(keys) and keys[lo] == key else lo
    if range_end == ALL_KEYS_END:
        return lo, len(keys)
    return lo, max(lo, bisect_left(keys, range_end))


def in_range(candidate: bytes, key: bytes, range_end: bytes) -> bool:
    """Whether ``candidate`` lies in the etcd range [key, range_end)."""
    if not range_end:
        return candidate == key
    if range_end == ALL_KEYS_END:
        return candidate >= key
    return key <= candidate < range_end


def record_bytes(key: bytes, kv: KeyValue | None) -> int:
    """Estimated bytes one stored record costs (used for db_size / quota)."""
    return len(key) + (len(kv.value) if kv is not None else 0) + RECORD_OVERHEAD_BYTES


@dataclass(slots=True)
class KeyHistory:
    """Every kept revision of one key, oldest first."""

    mains: list[int] = field(default_factory=list)
    subs: list[int] = field(default_factory=list)
    kvs: list[KeyValue | None] = field(default_factory=list)

    def at(self, revision: int) -> KeyValue | None:
        """The key's value as of ``revision`` (None: absent or deleted)."""
        i = bisect_right(self.mains, revision) - 1
        return self.kvs[i] if i >= 0 else None

    def append(self, main: int, sub: int, kv: KeyValue | None) -> None:
        assert not self.mains or main >= self.mains[-1], "revisions must not go backwards"
        self.mains.append(main)
        self.subs.append(sub)
        self.kvs.append(kv)

    def compact(self, revision: int, key: bytes) -> int:
        """Drop what no read at >= ``revision`` can see; returns the bytes released."""
        i = bisect_right(self.mains, revision) - 1
        if i < 0:
            return 0
        cut = i + 1 if self.kvs[i] is None else i
        if cut == 0:
            return 0
        released = sum(record_bytes(key, kv) for kv in self.kvs[:cut])
        del self.mains[:cut]
        del self.subs[:cut]
        del self.kvs[:cut]
        return released


@dataclass(slots=True)
class KeyIndex:
    histories: dict[bytes, KeyHistory] = field(default_factory=dict)
    all_keys: list[bytes] = field(default_factory=list)
    live: dict[bytes, KeyValue] = field(default_factory=dict)
    live_keys: list[bytes] = field(default_factory=list)

    def get(self, key: bytes) -> KeyValue | None:
        return self.live.get(key)

    def put(self, kv: KeyValue, sub: int) -> None:
        key = kv.key
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = KeyHistory()
            insort(self.all_keys, key)
        history.append(kv.mod_revision, sub, kv)
        if key not in self.live:
            insort(self.live_keys, key)
        self.live[key] = kv

    def delete_range(self, key: bytes, range_end: bytes, main: int, first_sub: int) -> list[KeyValue]:
        """Tombstone every live key in the range at revision ``main``; returns their last values."""
        lo, hi = range_bounds(self.live_keys, key, range_end)
        if lo == hi:
            return []
        doomed = self.live_keys[lo:hi]
        del self.live_keys[lo:hi]
        prev: list[KeyValue] = []
        for offset, k in enumerate(doomed):
            prev.append(self.live.pop(k))
            self.histories[k].append(main, first_sub + offset, None)
        return prev

    def live_slice(self, key: bytes, range_end: bytes) -> list[bytes]:
        lo, hi = range_bounds(self.live_keys, key, range_end)
        return self.live_keys[lo:hi]

    def count_live(self, key: bytes, range_end: bytes) -> int:
        lo, hi = range_bounds(self.live_keys, key, range_end)
        return hi - lo

    def iter_live(self, key: bytes, range_end: bytes) -> Iterator[KeyValue]:
        lo, hi = range_bounds(self.live_keys, key, range_end)
        keys, live = self.live_keys, self.live
        for i in range(lo, hi):
            yield live[keys[i]]

    def iter_at(self, key: bytes, range_end: bytes, revision: int) -> Iterator[KeyValue]:
        """Values of the keys in range as of ``revision``, in key order."""
        lo, hi = range_bounds(self.all_keys, key, range_end)
        keys, histories = self.all_keys, self.histories
        for i in range(lo, hi):
            kv = histories[keys[i]].at(revision)
            if kv is not None:
                yield kv

    def compact(self, revision: int) -> int:
        """Compact every key's history at ``revision``; returns the bytes released."""
        released = 0
        emptied = False
        for key, history in self.histories.items():
            released += history.compact(revision, key)
            if not history.mains:
                emptied = True
        if emptied:
            for key in [k for k, h in self.histories.items() if not h.mains]:
                del self.histories[key]
            self.all_keys = [k for k in self.all_keys if k in self.histories]
        return released

    def records(self) -> Iterator[tuple[bytes, KeyHistory]]:
        """Every key with its kept history, in key order."""
        for key in self.all_keys:
            yield key, self.histories[key]
