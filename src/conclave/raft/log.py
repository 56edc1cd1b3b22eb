"""``RaftLog``: the node's view of its log, from the last snapshot to the last entry.

Theory of operation
-------------------
The log is a snapshot offset (``offset`` = index of the last entry the snapshot
covers, ``offset_term`` its term) followed by ``entries`` (indexes offset+1 ..
last). All entries are kept in memory until compaction; the driver owns the disk.

Three cursors split the entries by durability:

- ``persisted``: the highest index known durable on the local disk. Entries past it
  may be lost in a crash, so nothing past it is acknowledged or applied.
- ``unstable``: the first index not yet handed to the driver in a ``Ready``.
  ``persisted < unstable`` always; between them are entries the driver is writing.
- ``committed``: the highest index known committed cluster-wide. It may run ahead
  of ``persisted`` on a follower; applying waits for both.

Appending a conflicting suffix truncates: both durability cursors move back to the
truncation point, because what the disk holds past it is now wrong. Committed
entries are never truncated (asserted: that would be a safety bug).

This module never sends messages and never decides commitment by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from conclave.raft.types import Entry, EntryType, Snapshot


class RaftLog:
    __slots__ = ("committed", "entries", "offset", "offset_term", "pending_snapshot", "persisted", "snapshot",
                 "unstable")

    def __init__(self, snapshot: Snapshot | None, entries: Sequence[Entry], committed: int) -> None:
        self.snapshot = snapshot
        self.pending_snapshot: Snapshot | None = None
        self.offset = snapshot.meta.index if snapshot is not None else 0
        self.offset_term = snapshot.meta.term if snapshot is not None else 0
        self.entries: list[Entry] = [e for e in entries if e.index > self.offset]
        for i, e in enumerate(self.entries):
            assert e.index == self.offset + 1 + i, "persisted entries are not contiguous"
        self.persisted = self.last_index()
        self.unstable = self.persisted + 1
        assert committed <= self.last_index(), "commit index beyond the persisted log"
        self.committed = max(committed, self.offset)

    # -- queries -------------------------------------------------------------------

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or not yet written."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo`` .. ``hi`` inclusive; at least one entry when non-empty, then
        as many as fit in ``max_bytes`` of payload."""
        assert lo > self.offset, "slice below the snapshot"
        hi = min(hi, self.last_index())
        if lo > hi:
            return []
        out = self.entries[lo - self.offset - 1 : hi - self.offset]
        if max_bytes is None:
            return out
        size = 0
        for n, e in enumerate(out):
            size += len(e.data)
            if n > 0 and size > max_bytes:
                return out[:n]
        return out

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """First index of ``ents`` that is new or conflicts with our log; 0 if all present."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``i <= index`` whose term is ``<= term``, with that term.

        A rejecting follower sends this as its hint so the leader can skip every
        entry of a conflicting term in one round trip (etcd's fast back-off).
        """
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            assert t is not None
            if t <= term:
                return index, t
            index -= 1
        return self.offset, self.offset_term

    def has_conf_change_between(self, lo: int, hi: int) -> bool:
        lo = max(lo, self.first_index())
        return any(e.type == EntryType.CONF_CHANGE for e in self.slice(lo, hi)) if lo <= hi else False

    # -- mutations -----------------------------------------------------------------

    def append(self, ents: Sequence[Entry]) -> int:
        """Append ``ents``, truncating any conflicting suffix first; returns the last index."""
        if not ents:
            return self.last_index()
        first = ents[0].index
        assert first > self.committed, f"truncating committed entry {first} (committed {self.committed})"
        assert self.offset < first <= self.last_index() + 1, "append leaves a gap in the log"
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(ents)
        # What the driver holds past the truncation point is no longer our log.
        self.persisted = min(self.persisted, first - 1)
        self.unstable = min(self.unstable, first)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, committed: int, ents: Sequence[Entry]) -> int | None:
        """The follower side of AppendEntries: None if the consistency check fails,
        otherwise the index of the last entry the message vouched for."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        conflict = self.find_conflict(ents)
        if conflict:
            assert conflict > self.committed, "leader overwrote a committed entry"
            self.append(ents[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index())
        if index > self.committed:
            self.committed = index
            return True
        return False

    def take_unstable(self) -> tuple[Entry, ...]:
        """Hand every not-yet-handed entry to the driver (inside a Ready)."""
        if self.unstable > self.last_index():
            return ()
        out = tuple(self.slice(self.unstable, self.last_index()))
        self.unstable = self.last_index() + 1
        return out

    def has_unstable(self) -> bool:
        return self.unstable <= self.last_index()

    def stable_to(self, handed: Sequence[Entry]) -> None:
        """The driver made ``handed`` (a Ready's entries) durable."""
        if not handed:
            return
        # Log matching: if our entry at j still has the term the driver wrote, our log
        # and the disk agree on everything up to j.
        best = handed[0].index - 1
        for e in reversed(handed):
            if self.match_term(e.index, e.term):
                best = e.index
                break
        if best >= handed[0].index:
            self.persisted = max(self.persisted, best)
        else:
            self.persisted = min(self.persisted, best)

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log by a received snapshot (handed to the driver next Ready)."""
        assert snap.meta.index > self.committed, "restoring a snapshot that is not ahead of commit"
        self.snapshot = snap
        self.pending_snapshot = snap
        self.offset = snap.meta.index
        self.offset_term = snap.meta.term
        self.entries = []
        self.committed = snap.meta.index
        self.persisted = min(self.persisted, snap.meta.index - 1)
        self.unstable = snap.meta.index + 1

    def snapshot_persisted(self, snap: Snapshot) -> None:
        if self.offset == snap.meta.index and self.offset_term == snap.meta.term:
            self.persisted = max(self.persisted, snap.meta.index)

    def compact(self, snap: Snapshot) -> None:
        """Drop entries covered by a locally taken snapshot."""
        idx = snap.meta.index
        assert self.offset < idx <= self.persisted, "compaction outside the persisted log"
        assert self.term(idx) == snap.meta.term
        del self.entries[: idx - self.offset]
        self.offset = idx
        self.offset_term = snap.meta.term
        self.snapshot = snap
