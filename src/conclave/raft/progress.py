"""What the leader knows about each follower's log: ``Progress`` and its ``Inflights`` window.

Theory of operation (etcd's tracker): a follower is in one of three states.

- PROBE: the leader does not know where the logs agree. It sends one APP at a time
  (``probe_sent`` pauses further appends) and walks ``next`` back on rejections until
  an append is accepted.
- REPLICATE: logs agree up to ``match``; the leader streams appends optimistically,
  moving ``next`` past what it sent, with at most ``max_inflight_msgs`` unacknowledged
  APP messages (the ``Inflights`` window) so a slow follower cannot make it buffer
  without bound.
- SNAPSHOT: the entries the follower needs are compacted; a snapshot is on its way
  and nothing else is sent until the driver reports its fate (SNAP_STATUS) or the
  follower's ack shows it caught up.

``match`` only grows. This module never sends anything; the node reads these fields
to decide what to send.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(slots=True)
class Inflights:
    """Last indexes of the APP messages in flight to one follower, oldest first."""

    capacity: int
    _last_indexes: deque[int] = field(default_factory=deque)

    def __post_init__(self) -> None:
        assert self.capacity >= 1, "max_inflight_msgs must be >= 1"

    def add(self, last_index: int) -> None:
        assert not self.full(), "inflight window overflow"
        assert not self._last_indexes or self._last_indexes[-1] < last_index, "inflights must grow"
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        """An ack up to ``index`` frees every message that ended at or before it."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first_one(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def count(self) -> int:
        return len(self._last_indexes)

    def reset(self) -> None:
        self._last_indexes.clear()


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    is_learner: bool = False
    probe_sent: bool = False
    pending_snapshot: int = 0
    recent_active: bool = False
    snapshot_elapsed_ticks: int = 0

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed_ticks = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; returns whether ``match`` moved."""
        updated = self.match < index
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append whose prev index was ``rejected``.

        Returns False for a stale rejection (one that does not answer the append we
        are waiting on); otherwise moves ``next`` back, past the whole conflicting
        term when ``match_hint`` says so.
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        assert self.next >= 1
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int) -> None:
        """The leader just sent entries up to ``last_index`` in one APP."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
        else:  # pragma: no cover - callers never append to a snapshotting follower
            raise AssertionError("append sent to a follower in SNAPSHOT state")
