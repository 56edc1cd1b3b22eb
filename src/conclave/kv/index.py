"""The key index: every stored revision of every key, in key order, in a compact form.

Theory of operation
-------------------
``KeyIndex`` owns the MVCC records of the store. A *record* is one revision of one key:

* one ``bytes`` blob when it is a put at sub revision 0 (the common case): a fixed header
  (create, mod = main, version, lease as four int64) followed by the value. One object per
  revision, not tracked by the cyclic GC, instead of a KeyValue, its int objects and the value;
  reads unpack a fresh ``KeyValue`` (the key comes from the index, the value is a slice);
* a ``(main, sub, kv)`` tuple otherwise: a put at a later position inside its write
  transaction, or a tombstone (``kv`` is None: the key was deleted at ``main``, ending its
  generation).

Per key, ``histories`` holds the record itself when the key has one record, or a list of
records oldest first when it has more (no per-key container object for the common case,
no parallel lists). A read "at revision r" takes the last record whose main revision is
<= r, so a duplicate main revision simply shadows the earlier one. The current value of a
key is its last record's value, so there is no second live map: the index never holds a
value twice, and the store's event history (``conclave.kv.mvcc``) refers to records by
(key, main, sub) instead of holding copies.

Two sorted key lists make ranges cheap: ``live_keys`` (keys that exist now, the fast path for
reads at the current revision: a range is two bisections) and ``all_keys`` (every key with at
least one kept record, for historical reads, compaction, hashing and snapshots).

Compaction at revision c keeps, per key, the last record with main revision <= c when it is
a value (it is still what a read at c sees) and drops it when it is a tombstone; everything
older goes.

Rules for this module: no I/O, no clocks, no randomness; it never decides revisions (the store
passes them in) and never raises client errors.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

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


Record: TypeAlias = "bytes | tuple[int, int, KeyValue | None]"
"""One revision of a key: a packed put at sub 0 (``pack_kv``) or (main, sub, kv or None for a tombstone)."""

History: TypeAlias = "Record | list[Record]"
"""A key's records: the record itself when it is the only one, else a list, oldest first."""


def record_bytes(key: bytes, kv: KeyValue | None) -> int:
    """Estimated bytes one stored record costs (used for db_size / quota)."""
    return len(key) + (len(kv.value) if kv is not None else 0) + RECORD_OVERHEAD_BYTES


_HEAD = struct.Struct("<qqqq")
"""A packed put: create revision, mod (= main) revision, version, lease, then the value bytes."""


def pack_kv(kv: KeyValue) -> bytes:
    return _HEAD.pack(kv.create_revision, kv.mod_revision, kv.version, kv.lease) + kv.value


def unpack_kv(key: bytes, blob: bytes) -> KeyValue:
    create, mod, version, lease = _HEAD.unpack_from(blob)
    return KeyValue(key, create, mod, version, blob[_HEAD.size :], lease)


def rec_main(r: Record) -> int:
    if type(r) is bytes:
        return int.from_bytes(r[8:16], "little", signed=True)
    return r[0]


def rec_sub(r: Record) -> int:
    return 0 if type(r) is bytes else r[1]


def rec_kv(key: bytes, r: Record) -> KeyValue | None:
    if type(r) is bytes:
        return unpack_kv(key, r)
    return r[2]  # type: ignore[return-value]


def rec_live(r: Record) -> bool:
    """Whether the record is a value (not a tombstone)."""
    return type(r) is bytes or r[2] is not None


def rec_value_len(r: Record) -> int | None:
    """The value's length (None for a tombstone), without unpacking."""
    if type(r) is bytes:
        return len(r) - _HEAD.size
    kv = r[2]
    return None if kv is None else len(kv.value)  # type: ignore[union-attr]


def make_record(main: int, sub: int, kv: KeyValue | None) -> Record:
    if kv is not None and sub == 0 and kv.mod_revision == main:
        return pack_kv(kv)
    return (main, sub, kv)


def last_record(h: History) -> Record:
    return h[-1] if type(h) is list else h  # type: ignore[return-value]


def records_of(h: History) -> list[Record]:
    """The key's records as a list (a fresh one-item list for a single record)."""
    return h if type(h) is list else [h]  # type: ignore[list-item]


def rows(key: bytes, h: History) -> Iterator[tuple[int, int, KeyValue | None]]:
    """(main, sub, kv) of every record, oldest first."""
    for r in records_of(h):
        if type(r) is bytes:
            kv = unpack_kv(key, r)
            yield kv.mod_revision, 0, kv
        else:
            yield r  # type: ignore[misc]


def value_at(key: bytes, h: History, revision: int) -> KeyValue | None:
    """The key's value as of ``revision`` (None: absent or deleted)."""
    if type(h) is not list:
        return rec_kv(key, h) if rec_main(h) <= revision else None  # type: ignore[arg-type]
    i = bisect_right(h, revision, key=rec_main) - 1
    return rec_kv(key, h[i]) if i >= 0 else None


def find_record(key: bytes, h: History, main: int, sub: int) -> tuple[KeyValue | None, KeyValue | None]:
    """(record's kv, previous record's kv) of the record at (main, sub); KeyError if absent."""
    recs = records_of(h)
    i = bisect_left(recs, main, key=rec_main)
    while i < len(recs) and rec_main(recs[i]) == main:
        if rec_sub(recs[i]) == sub:
            return rec_kv(key, recs[i]), rec_kv(key, recs[i - 1]) if i > 0 else None
        i += 1
    raise KeyError((main, sub))


def _append(h: History | None, r: Record) -> History:
    if h is None:
        return r
    if type(h) is list:
        assert rec_main(r) >= rec_main(h[-1]), "revisions must not go backwards"
        h.append(r)
        return h
    assert rec_main(r) >= rec_main(h), "revisions must not go backwards"  # type: ignore[arg-type]
    return [h, r]  # type: ignore[list-item]


def compact_history(h: History, revision: int, key: bytes) -> tuple[History | None, int]:
    """Drop what no read at >= ``revision`` can see: (what is kept or None, bytes released)."""
    recs = records_of(h)
    i = bisect_right(recs, revision, key=rec_main) - 1
    if i < 0:
        return h, 0
    cut = i if rec_live(recs[i]) else i + 1
    if cut == 0:
        return h, 0
    released = 0
    for r in recs[:cut]:
        size = rec_value_len(r)
        released += len(key) + (size or 0) + RECORD_OVERHEAD_BYTES
    kept = recs[cut:]
    if not kept:
        return None, released
    if len(kept) == 1:
        return kept[0], released
    return kept, released


@dataclass(slots=True)
class KeyIndex:
    histories: dict[bytes, History] = field(default_factory=dict)
    all_keys: list[bytes] = field(default_factory=list)
    live_keys: list[bytes] = field(default_factory=list)
    live_count: int = 0

    def get(self, key: bytes) -> KeyValue | None:
        """The key's current value (None: absent or deleted)."""
        h = self.histories.get(key)
        if h is None:
            return None
        r = h[-1] if type(h) is list else h
        if type(r) is bytes:
            return unpack_kv(key, r)
        return r[2]  # type: ignore[return-value]

    def canonical(self, key: bytes) -> bytes:
        """The bytes object the index holds for ``key`` (``key`` itself if it has no history).

        Revisions and history references then share one key object however many there are.
        """
        keys = self.all_keys
        i = bisect_left(keys, key)
        return keys[i] if i < len(keys) and keys[i] == key else key

    def put(self, kv: KeyValue, sub: int) -> None:
        key = kv.key
        histories = self.histories
        h = histories.get(key)
        if h is None:
            insort(self.all_keys, key)
            insort(self.live_keys, key)
            self.live_count += 1
            histories[key] = pack_kv(kv) if sub == 0 else (kv.mod_revision, sub, kv)
            return
        if not rec_live(last_record(h)):
            insort(self.live_keys, key)
            self.live_count += 1
        histories[key] = _append(h, pack_kv(kv) if sub == 0 else (kv.mod_revision, sub, kv))

    def delete_range(self, key: bytes, range_end: bytes, main: int, first_sub: int) -> list[KeyValue]:
        """Tombstone every live key in the range at revision ``main``; returns their last values."""
        lo, hi = range_bounds(self.live_keys, key, range_end)
        if lo == hi:
            return []
        doomed = self.live_keys[lo:hi]
        del self.live_keys[lo:hi]
        self.live_count -= len(doomed)
        prev: list[KeyValue] = []
        histories = self.histories
        for offset, k in enumerate(doomed):
            h = histories[k]
            kv = rec_kv(k, last_record(h))
            assert kv is not None, "a live key's last record is a value"
            prev.append(kv)
            histories[k] = _append(h, (main, first_sub + offset, None))
        return prev

    def values_of(self, live_keys: list[bytes]) -> list[KeyValue]:
        """The current values of keys known to be live."""
        out: list[KeyValue] = []
        get = self.get
        for k in live_keys:
            kv = get(k)
            assert kv is not None, "a live key has a value"
            out.append(kv)
        return out

    def live_slice(self, key: bytes, range_end: bytes) -> list[bytes]:
        lo, hi = range_bounds(self.live_keys, key, range_end)
        return self.live_keys[lo:hi]

    def count_live(self, key: bytes, range_end: bytes) -> int:
        lo, hi = range_bounds(self.live_keys, key, range_end)
        return hi - lo

    def iter_live(self, key: bytes, range_end: bytes) -> Iterator[KeyValue]:
        lo, hi = range_bounds(self.live_keys, key, range_end)
        keys, get = self.live_keys, self.get
        for i in range(lo, hi):
            kv = get(keys[i])
            assert kv is not None
            yield kv

    def iter_at(self, key: bytes, range_end: bytes, revision: int) -> Iterator[KeyValue]:
        """Values of the keys in range as of ``revision``, in key order."""
        lo, hi = range_bounds(self.all_keys, key, range_end)
        keys, histories = self.all_keys, self.histories
        for i in range(lo, hi):
            k = keys[i]
            kv = value_at(k, histories[k], revision)
            if kv is not None:
                yield kv

    def compact(self, revision: int) -> int:
        """Compact every key's history at ``revision``; returns the bytes released."""
        released = 0
        gone: list[bytes] = []
        histories = self.histories
        for key, h in histories.items():
            kept, freed = compact_history(h, revision, key)
            if freed:
                released += freed
                if kept is None:
                    gone.append(key)
                else:
                    histories[key] = kept  # replacing a value keeps the dict's size: safe mid-iteration
        if gone:
            for key in gone:
                del histories[key]
            self.all_keys = [k for k in self.all_keys if k in histories]
        return released

    def records(self) -> Iterator[tuple[bytes, History]]:
        """Every key with its kept history, in key order."""
        for key in self.all_keys:
            yield key, self.histories[key]

    def load(self, key: bytes, recs: list[Record]) -> None:
        """Add a key with its records (restore: keys arrive in increasing order)."""
        self.histories[key] = recs[0] if len(recs) == 1 else recs
        self.all_keys.append(key)
        if rec_live(recs[-1]):
            self.live_keys.append(key)
            self.live_count += 1
