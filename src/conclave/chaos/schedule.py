"""The fault schedule: which fault, when, for how long, on which members, from a seed alone.

Theory of operation. ``make_schedule`` is pure (no clock, no I/O): the same seed, nemeses, length,
interval and cluster size always give the same list of ``Fault``s. Faults do not overlap: each
starts ``interval`` seconds after the previous one started (with up to 20 % jitter), lasts 40-70 %
of an interval, and is healed before the next; the schedule ends ``interval`` before the run's end
so the last fault is healed before the quiet period. A fault names its targets abstractly where
they can only be known when it happens ("the leader"); the nemesis resolves them then and
records what it did.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# nemesis name -> its variants (the fault kinds it schedules)
NEMESES: dict[str, tuple[str, ...]] = {
    "kill": ("kill-one", "kill-leader", "kill-majority"),
    "pause": ("pause-one", "pause-leader"),
    "partition": ("isolate-leader", "halves", "ring", "one-way"),
    "latency": ("latency", "loss"),
    "transfer": ("leader-transfer",),
    "compact": ("compact-defrag",),
    "member": ("member-replace",),
    "disk": ("disk-full", "wal-torn", "wal-corrupt"),
}
ALL = tuple(NEMESES)


@dataclass(frozen=True)
class Fault:
    start: float  # seconds from the start of the run
    duration: float
    kind: str
    targets: tuple[int, ...] = ()  # member indices, where the schedule chooses them
    groups: tuple[tuple[int, ...], ...] = ()  # partition sides, where the schedule chooses them
    params: tuple[tuple[str, float], ...] = field(default=())

    @property
    def end(self) -> float:
        return self.start + self.duration

    def param(self, name: str, default: float = 0.0) -> float:
        return dict(self.params).get(name, default)


def parse_nemeses(text: str) -> tuple[str, ...]:
    """``kill,pause`` or ``all`` (or ``none``); an unknown name is a ValueError that lists the known."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return ALL
    if names in (["none"], []):
        return ()
    unknown = [n for n in names if n not in NEMESES]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)}; known: {', '.join(NEMESES)}, all, none")
    return tuple(dict.fromkeys(names))


def make_schedule(seed: int, nemeses: tuple[str, ...], duration: float, interval: float, nodes: int,
                  pause_s: float = 3.0) -> list[Fault]:
    rng = random.Random(f"conclave-chaos/{seed}")
    kinds = [k for n in nemeses for k in NEMESES[n]]
    faults: list[Fault] = []
    if not kinds or interval <= 0:
        return faults
    t = min(interval * 0.5, 5.0)
    majority = nodes // 2 + 1
    while t + interval <= duration:
        kind = rng.choice(kinds)
        length = interval * rng.uniform(0.4, 0.7)
        targets: tuple[int, ...] = ()
        groups: tuple[tuple[int, ...], ...] = ()
        params: tuple[tuple[str, float], ...] = ()
        if kind in ("kill-one", "pause-one", "disk-full", "wal-torn", "wal-corrupt"):
            targets = (rng.randrange(nodes),)
        elif kind == "kill-majority":
            targets = tuple(sorted(rng.sample(range(nodes), majority)))
        elif kind == "halves":
            order = rng.sample(range(nodes), nodes)
            groups = (tuple(sorted(order[: nodes // 2])), tuple(sorted(order[nodes // 2:])))
        elif kind == "one-way":
            a, b = rng.sample(range(nodes), 2)
            targets = (a, b)  # a's packets to b are lost
        elif kind == "ring":
            targets = tuple(rng.sample(range(nodes), nodes))  # the ring's order
        elif kind == "latency":
            params = (("delay_ms", float(rng.choice((50, 100, 200)))), ("jitter_ms", float(rng.choice((10, 50)))))
        elif kind == "loss":
            params = (("loss_pct", float(rng.choice((5, 10, 20)))),)
        if kind.startswith("pause"):
            length = max(length, pause_s)
        faults.append(Fault(round(t, 3), round(length, 3), kind, targets, groups, params))
        t += interval * rng.uniform(0.9, 1.2)
    return faults


def ring_cuts(order: tuple[int, ...]) -> set[tuple[int, int]]:
    """Majorities ring: each member keeps links to its ring neighbours only (for 5: 2 of 4 peers,
    so each sees a majority of itself and two others, but no two see the same majority). With 3
    members every pair are neighbours, so one link is cut instead."""
    n = len(order)
    cuts: set[tuple[int, int]] = set()
    if n <= 3:
        if n >= 2:
            a, b = order[0], order[1]
            cuts = {(a, b), (b, a)}
        return cuts
    pos = {m: k for k, m in enumerate(order)}
    for a in order:
        for b in order:
            if a != b:
                d = abs(pos[a] - pos[b])
                if min(d, n - d) > 1:
                    cuts.add((a, b))
    return cuts


def groups_cuts(groups: tuple[tuple[int, ...], ...]) -> set[tuple[int, int]]:
    cuts: set[tuple[int, int]] = set()
    for g in groups:
        for h in groups:
            if g is not h:
                cuts |= {(a, b) for a in g for b in h}
    return cuts
