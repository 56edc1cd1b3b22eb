"""What a driver has seen of one node's Raft log.

Theory of operation: the core's log is private, but every change to it reaches the
driver through ``Ready`` (entries that replace a suffix, snapshots that replace a
prefix) or through ``compact``. ``LogMirror`` replays those changes, so the checkers
can read any node's log as the node itself sees it after each handled ``Ready``.
``base_index``/``base_term`` describe the snapshot the log starts after.
"""

from __future__ import annotations

from collections.abc import Sequence

from conclave.raft.types import Entry, PersistedState


class LogMirror:
    def __init__(self) -> None:
        self.base_index = 0
        self.base_term = 0
        self.entries: list[Entry] = []

    @classmethod
    def from_persisted(cls, p: PersistedState) -> LogMirror:
        m = cls()
        if p.snapshot is not None:
            m.base_index, m.base_term = p.snapshot.meta.index, p.snapshot.meta.term
        m.entries = [e for e in p.entries if e.index > m.base_index]
        if m.entries and m.entries[0].index != m.base_index + 1:
            m.entries = []
        return m

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if the log does not hold it (compacted or beyond)."""
        if index == self.base_index:
            return self.base_term
        if index < self.base_index or index > self.last_index:
            return None
        return self.entries[index - self.base_index - 1].term

    def entry_at(self, index: int) -> Entry | None:
        if index <= self.base_index or index > self.last_index:
            return None
        return self.entries[index - self.base_index - 1]

    def write(self, entries: Sequence[Entry]) -> int:
        """Replace the suffix from ``entries[0].index``; return the first index whose entry
        was lost (replaced by one of another term, or dropped past the new end), else 0."""
        first_lost = 0
        for e in entries:
            old = self.term_at(e.index) if e.index > self.base_index else None
            if old is not None and old != e.term:
                first_lost = e.index
                break
        new_last = entries[-1].index
        if not first_lost and self.last_index > new_last >= self.base_index:
            first_lost = new_last + 1
        keep = max(entries[0].index - self.base_index - 1, 0)
        self.entries[keep:] = [e for e in entries if e.index > self.base_index]
        return first_lost

    def install(self, index: int, term: int) -> None:
        """A snapshot at (index, term): keep the suffix only if the log agrees at ``index``."""
        if index <= self.base_index:
            return
        if self.term_at(index) == term:
            self.entries = self.entries[index - self.base_index :]
        else:
            self.entries = []
        self.base_index, self.base_term = index, term
