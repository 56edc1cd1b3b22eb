"""The simulated network between Raft nodes.

Theory of operation: the network decides, for each message a node sends, how many
copies arrive (0 if dropped or the link is cut, 2 if duplicated) and after how many
virtual milliseconds each arrives. Reordering is a consequence of random latency:
with a wide latency spread a later message often overtakes an earlier one. Links are
directed, so a partition may be asymmetric (1 hears 2, 2 does not hear 1). A cut is
checked both when a message is sent and when it would arrive, so a partition also
swallows what was already in flight. Every choice comes from the ``random.Random``
handed in, never from global state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class LinkConditions:
    """How the wire behaves right now (the fault scheduler changes these)."""

    latency_min_ms: int = 1
    latency_max_ms: int = 4
    drop_rate: float = 0.0
    dup_rate: float = 0.0


class Network:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.conditions = LinkConditions()
        self._cut: set[tuple[int, int]] = set()
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    # -- partitions ---------------------------------------------------------------

    def cut(self, frm: int, to: int) -> None:
        """Stop messages from ``frm`` reaching ``to`` (one direction only)."""
        self._cut.add((frm, to))

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Cut every link between nodes of different groups, in both directions."""
        sets = [frozenset(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in sorted(a):
                    for y in sorted(b):
                        self._cut.add((x, y))
                        self._cut.add((y, x))

    def isolate(self, node: int, others: Iterable[int]) -> None:
        self.partition([[node], [o for o in others if o != node]])

    def heal(self) -> None:
        self._cut.clear()

    def link_open(self, frm: int, to: int) -> bool:
        return (frm, to) not in self._cut

    @property
    def partitioned(self) -> bool:
        return bool(self._cut)

    # -- transmission ---------------------------------------------------------------

    def transmit(self, frm: int, to: int) -> list[int]:
        """The arrival delays (ms) of the copies of one message; empty if it is lost."""
        self.sent += 1
        c = self.conditions
        if not self.link_open(frm, to) or (c.drop_rate and self._rng.random() < c.drop_rate):
            self.dropped += 1
            return []
        delays = [self._rng.randint(c.latency_min_ms, c.latency_max_ms)]
        if c.dup_rate and self._rng.random() < c.dup_rate:
            self.duplicated += 1
            delays.append(self._rng.randint(c.latency_min_ms, c.latency_max_ms))
        return delays
