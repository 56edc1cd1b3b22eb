"""Lamport clocks: timestamps whose order is consistent with causality, outside the store.

Theory of operation: each process keeps a counter. A local event (including sending a message)
increments it; receiving a message carrying timestamp ``t`` sets it to ``max(own, t.counter) + 1``.
So if event a happened before event b (same process, or a's message was received before b),
``ts(a) < ts(b)``. Ties between processes are broken by the node id, which makes the order total.
Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    counter: int
    node: str

    def encode(self) -> bytes:
        return f"{self.counter}@{self.node}".encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Timestamp:
        text = raw.decode() if isinstance(raw, bytes) else raw
        counter, sep, node = text.partition("@")
        if not sep or not counter.isdigit():
            raise ValueError(f"not a Lamport timestamp: {text!r}")
        return cls(int(counter), node)


class LamportClock:
    """``tick()`` for local events and sends, ``observe(ts)`` when a message arrives."""

    def __init__(self, node: str, counter: int = 0) -> None:
        if counter < 0:
            raise ValueError("counter must be >= 0")
        self.node = node
        self.counter = counter

    def now(self) -> Timestamp:
        return Timestamp(self.counter, self.node)

    def tick(self) -> Timestamp:
        self.counter += 1
        return self.now()

    send = tick

    def observe(self, seen: Timestamp) -> Timestamp:
        """Merge a received timestamp: the result is later than both ``seen`` and every earlier local one."""
        self.counter = max(self.counter, seen.counter) + 1
        return self.now()

    receive = observe
