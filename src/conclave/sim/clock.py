"""Virtual time: a clock that only moves when the next scheduled event is taken.

Theory of operation: every future happening (a node's tick, a message arriving, a
disk sync finishing, a fault starting or healing, a client's next call) is an event
with a due time in virtual milliseconds. ``Agenda.pop`` returns the earliest one and
moves the clock to its time. Ties are broken by insertion order, so a run is a pure
function of its seed. Nothing here reads a real clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import IntEnum


class EventKind(IntEnum):
    TICK = 0  # payload: node id; incarnation tells a stale tick from a live one
    DELIVER = 1  # payload: a Message
    SYNC_DONE = 2  # payload: node id; the disk finished the pending fsync
    FAULT = 3  # payload: unused; the fault scheduler decides what happens
    CLIENT = 4  # payload: client index
    RESTART = 5  # payload: node id
    REPORT = 6  # payload: a local Message (SNAP_STATUS) from the transport to its own node
    RPC = 7  # payload: a callable, a driver-to-driver request (a forwarded lease keep-alive) arriving


@dataclass(slots=True, order=True)
class Event:
    due_ms: int
    seq: int
    kind: EventKind = field(compare=False)
    node_id: int = field(compare=False, default=0)
    incarnation: int = field(compare=False, default=0)
    payload: object = field(compare=False, default=None)


class Agenda:
    """The event queue and the virtual clock it drives."""

    def __init__(self) -> None:
        self.now_ms = 0
        self._queue: list[Event] = []
        self._seq = 0

    def schedule(
        self, delay_ms: int, kind: EventKind, node_id: int = 0, incarnation: int = 0, payload: object = None
    ) -> None:
        assert delay_ms >= 0, "events cannot be scheduled in the past"
        self._seq += 1
        heapq.heappush(self._queue, Event(self.now_ms + delay_ms, self._seq, kind, node_id, incarnation, payload))

    def pop(self) -> Event | None:
        if not self._queue:
            return None
        ev = heapq.heappop(self._queue)
        assert ev.due_ms >= self.now_ms
        self.now_ms = ev.due_ms
        return ev
