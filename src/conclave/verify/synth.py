"""Synthetic chaos-like register histories, for tests and benchmarks of the checker.

Theory of operation. ``chaos_history`` imitates what a Jepsen-style harness
records against a replicated cas-register store under faults: ``clients``
clients issue read / write / cas on ``keys`` keys, one operation in flight each,
for ``duration`` seconds. Every operation gets an interval and, when it takes
effect, a linearization point inside it; replaying the points in order on one
register per key gives every output, so the history is linearizable by
construction. Faults are stalls: every few seconds the store stops answering
for a while (a pause, a partition, a leader election), operations called then
return after the stall, and take effect at a random point after it.
A fraction ``timeouts`` of operations time out (``info``, after ``timeout``
seconds), and so does every operation a stall holds up longer than that (about
0.3 % in all with the defaults); the client's process is then retired and a new one takes its place,
as in Jepsen. Most timed-out writes never take effect (nothing observes them);
a fraction ``applied`` of them do, at a point up to twice the timeout after the
call, and may be read later. Written values are unique per key (1, 2, ...); a
cas expects the current value or, as often, an older one some read returned
(a client's stale view), and fails then.

``anomaly`` makes the history NOT linearizable: one late read returns a value
that two writes which completed before the read was called had overwritten.

Pure and deterministic: the caller passes the random source (``random.Random(seed)``: one
seed, one history), as the Raft core takes its RNG; no clock, no I/O.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conclave.verify.history import Event, EventType, Value

if TYPE_CHECKING:
    import random


@dataclass(slots=True)
class _Op:
    process: int
    key: str
    f: str
    call: float
    ret: float
    point: float | None  # when it takes effect; None: never
    timed_out: bool
    input: Value = None
    output: Value = None
    failed: bool = False


def chaos_history(
    rng: random.Random,
    *,
    clients: int = 10,
    keys: int = 5,
    duration: float = 180.0,
    rate: float = 37.0,
    timeouts: float = 0.001,
    applied: float = 0.2,
    timeout: float = 1.0,
    stall_every: float = 12.0,
    stall_length: tuple[float, float] = (0.5, 4.0),
    anomaly: bool = False,
) -> list[Event]:
    """The events of one synthetic run (see the module docstring), in time order, times in seconds.

    ``rate`` is operations per second per client; the defaults give about
    16,000 operations per key, as the run in issue 12.
    """
    key_names = [f"k{i}" for i in range(keys)]
    stalls: list[tuple[float, float]] = []
    t = rng.uniform(0.3, 1.0) * stall_every
    while t < duration:
        length = rng.uniform(*stall_length)
        stalls.append((t, min(duration, t + length)))
        t += length + rng.expovariate(1 / stall_every)

    def stall_at(when: float) -> tuple[float, float] | None:
        for a, b in stalls:
            if a <= when < b:
                return a, b
            if a > when:
                return None
        return None

    ops: list[_Op] = []
    mean_gap = 1.0 / rate
    queue = [(rng.uniform(0, mean_gap), c, c) for c in range(clients)]
    heapq.heapify(queue)
    while queue:
        call, client, process = heapq.heappop(queue)
        if call >= duration:
            continue
        key = rng.choice(key_names)
        roll = rng.random()
        f = "read" if roll < 0.5 else "write" if roll < 0.8 else "cas"
        latency = rng.lognormvariate(-4.6, 0.6)  # about 10 ms, now and then 40
        stall = stall_at(call)
        if stall is not None:
            ret = stall[1] + latency
            earliest = stall[1]
        else:
            ret = call + latency
            earliest = call
        timed_out = rng.random() < timeouts or ret - call > timeout
        if timed_out:
            ret = call + timeout
            point: float | None = None
            if f == "read" or rng.random() < applied:
                point = rng.uniform(max(call, earliest), call + 2 * timeout)
        else:
            point = rng.uniform(earliest, ret)
        ops.append(_Op(process, key, f, call, ret, point, timed_out))
        next_process = process + clients if timed_out else process
        heapq.heappush(queue, (ret + rng.expovariate(1 / (mean_gap * 0.2)), client, next_process))

    # Replay the points per key, in order: outputs, cas outcomes and unique values.
    state: dict[str, Value] = {k: None for k in key_names}
    history: dict[str, list[Value]] = {k: [None] for k in key_names}  # values read, in order
    counter = {k: 0 for k in key_names}
    effective = sorted((o for o in ops if o.point is not None), key=lambda o: o.point or 0.0)
    for o in ops:
        if o.f != "read":
            counter[o.key] += 1
            new = counter[o.key]
            o.input = new if o.f == "write" else (None, new)
    for o in effective:
        current = state[o.key]
        if o.f == "read":
            o.output = current
            if not o.timed_out and history[o.key][-1] != current:
                history[o.key].append(current)
        elif o.f == "write":
            state[o.key] = o.input
        else:
            past = history[o.key]
            expected = current if rng.random() < 0.5 else past[max(0, len(past) - 1 - rng.randrange(1, 4))]
            o.input = (expected, o.input[1])
            if expected == current:
                state[o.key] = o.input[1]
            else:
                o.failed = True
    for o in ops:
        if o.f == "cas" and o.point is None:  # never took effect: any expectation will do
            past = history[o.key]
            o.input = (past[rng.randrange(len(past))], o.input[1])
    if anomaly:
        _make_stale_read(ops, rng)
    events: list[tuple[float, int, Event]] = []
    for n, o in enumerate(ops):
        value = o.input if o.f != "read" else None
        events.append((o.call, 2 * n, Event(0, o.process, EventType.INVOKE, o.f, value, o.key, o.call)))
        if o.timed_out:
            kind = EventType.INFO
        elif o.failed:
            kind = EventType.FAIL
        else:
            kind = EventType.OK
        out = o.output if o.f == "read" else value
        events.append((o.ret, 2 * n + 1, Event(0, o.process, kind, o.f, out, o.key, o.ret)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [Event(line, e.process, e.type, e.f, e.value, e.key, e.time) for line, (_t, _n, e) in
            enumerate(events, start=1)]


def _make_stale_read(ops: list[_Op], rng: random.Random) -> None:
    """Make a late read return a value that two completed writes had overwritten before it was called."""
    reads = [o for o in ops if o.f == "read" and not o.timed_out and o.call > ops[-1].call / 2]
    rng.shuffle(reads)
    for r in reads:
        done = sorted(
            (w for w in ops if w.key == r.key and w.f == "write" and not w.timed_out and w.ret < r.call),
            key=lambda w: w.ret,
        )
        if len(done) < 3:
            continue
        # A write w whose successor w2 was called after w returned and returned before the read.
        for w, w2 in zip(done[-20:], done[-19:], strict=False):
            if w2.call > w.ret and w2.ret < r.call:
                r.output = w.input
                return
    raise ValueError("no read to make stale")  # pragma: no cover - only for tiny histories
