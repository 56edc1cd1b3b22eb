"""The lab's building blocks: virtual time, a seeded network, clocks, clients that record histories.

Theory of operation. A scenario is a small distributed system run by ``Loop``, a discrete-event
loop on virtual milliseconds: every future happening is a callback with a due time, taken in
(time, insertion) order, so a run is a pure function of its seed. ``Net`` carries messages between
named nodes with a per-link delay (a base plus seeded jitter); a cut link swallows a message both
when it is sent and when it would arrive; a crashed node drops what reaches it and a paused node
(a GC pause) holds it until it wakes. ``Recorder`` writes what each client asked for and was told in
the checker's JSON-lines history format (docs/history-format.md) with the virtual time on every
line; ``Client`` wraps one call with a timeout (a timed-out call is ``info``: its outcome is
unknown). ``Trace`` keeps what the page draws: network events as bands, replica states over time
and notes. ``Outcome`` is what a scenario returns: its story, verdict, expected verdict, counts,
the history bytes and the checker's result.

Nothing here reads a real clock or does I/O; all randomness comes from the ``random.Random``
created from the seed.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conclave.verify.checker import CheckResult, Limits, Verdict, check
from conclave.verify.formats import load
from conclave.verify.model import Model, model_named

LINEARIZABLE = Verdict.LINEARIZABLE.value
NOT_LINEARIZABLE = Verdict.NOT_LINEARIZABLE.value
CHECK_POLLS_MAX = 5000  # search slices before the checker gives up (scenarios are small: never reached)


class Loop:
    """Virtual time and the agenda of callbacks."""

    def __init__(self) -> None:
        self.now = 0
        self._queue: list[tuple[int, int, Callable[[], object]]] = []
        self._seq = 0
        self.steps = 0

    def at(self, when: int, fn: Callable[[], object]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, fn))

    def after(self, delay: int, fn: Callable[[], object]) -> None:
        self.at(self.now + max(0, delay), fn)

    def run(self, until: int) -> None:
        """Take events in order until virtual time ``until`` (events due later stay queued)."""
        while self._queue and self._queue[0][0] <= until:
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            self.steps += 1
            fn()
        self.now = max(self.now, until)


@dataclass(slots=True)
class Band:
    """A network or process event drawn as a band over time: a partition, crash, pause, delay."""

    kind: str  # "partition" | "crash" | "pause" | "delay" | "lease" | "other"
    label: str
    start: int
    end: int | None = None  # None: until the end of the run
    nodes: tuple[str, ...] = ()


@dataclass(slots=True)
class Trace:
    """What happened besides the client history: bands, replica states, notes."""

    bands: list[Band] = field(default_factory=list)
    states: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    notes: list[tuple[int, str]] = field(default_factory=list)

    def band(self, kind: str, label: str, start: int, nodes: tuple[str, ...] = ()) -> Band:
        b = Band(kind, label, start, None, nodes)
        self.bands.append(b)
        return b

    def state(self, node: str, when: int, text: str) -> None:
        seq = self.states.setdefault(node, [])
        if seq and seq[-1][1] == text:
            return
        if seq and seq[-1][0] == when:
            seq[-1] = (when, text)
            return
        seq.append((when, text))

    def note(self, when: int, text: str) -> None:
        self.notes.append((when, text))


class Net:
    """Messages between named nodes: per-link delay, cuts, crashed and paused nodes."""

    def __init__(self, loop: Loop, rng: random.Random, trace: Trace, base: int = 2, jitter: int = 3) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self.base = base
        self.jitter = jitter
        self.links: dict[tuple[str, str], tuple[int, int]] = {}
        self.cuts: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.paused: dict[str, list[Callable[[], object]]] = {}
        self.sent = 0
        self.lost = 0
        self._bands: dict[str, Band] = {}

    def set_link(self, frm: str, to: str, base: int, jitter: int = 0, both: bool = True) -> None:
        self.links[(frm, to)] = (base, jitter)
        if both:
            self.links[(to, frm)] = (base, jitter)

    def delay(self, frm: str, to: str) -> int:
        base, jitter = self.links.get((frm, to), (self.base, self.jitter))
        return base + (self.rng.randint(0, jitter) if jitter > 0 else 0)

    def send(self, frm: str, to: str, fn: Callable[[], object], delay: int | None = None) -> None:
        """Run ``fn`` at ``to`` after the link's delay, unless the link is cut or a side is down."""
        self.sent += 1
        if frm in self.down or (frm, to) in self.cuts:
            self.lost += 1
            return
        d = self.delay(frm, to) if delay is None else delay

        def arrive() -> None:
            if (frm, to) in self.cuts or to in self.down:
                self.lost += 1
                return
            self.run_at(to, fn)

        self.loop.after(d, arrive)

    def run_at(self, node: str, fn: Callable[[], object]) -> None:
        """Run ``fn`` on ``node`` now, or when it wakes if it is paused; never if it is down."""
        if node in self.down:
            return
        held = self.paused.get(node)
        if held is not None:
            held.append(fn)
        else:
            fn()

    # -- faults, each drawn as a band ----------------------------------------------------

    def partition(self, *groups: tuple[str, ...], label: str = "") -> None:
        names = [n for g in groups for n in g]
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in a:
                    for y in b:
                        self.cuts.add((x, y))
                        self.cuts.add((y, x))
        text = label or " | ".join(",".join(g) for g in groups)
        self._bands["partition"] = self.trace.band("partition", f"partition {text}", self.loop.now, tuple(names))

    def heal(self) -> None:
        self.cuts.clear()
        b = self._bands.pop("partition", None)
        if b is not None:
            b.end = self.loop.now

    def crash(self, node: str) -> None:
        self.down.add(node)
        self._bands["crash:" + node] = self.trace.band("crash", f"{node} crashed", self.loop.now, (node,))

    def recover(self, node: str) -> None:
        self.down.discard(node)
        b = self._bands.pop("crash:" + node, None)
        if b is not None:
            b.end = self.loop.now

    def pause(self, node: str, label: str = "") -> None:
        self.paused.setdefault(node, [])
        self._bands["pause:" + node] = self.trace.band("pause", label or f"{node} paused", self.loop.now, (node,))

    def resume(self, node: str) -> None:
        held = self.paused.pop(node, [])
        b = self._bands.pop("pause:" + node, None)
        if b is not None:
            b.end = self.loop.now
        for fn in held:
            self.run_at(node, fn)


class SkewedClock:
    """A node's wall clock: virtual time plus a fixed skew (ms)."""

    def __init__(self, loop: Loop, skew: int) -> None:
        self.loop = loop
        self.skew = skew

    def now(self) -> int:
        return self.loop.now + self.skew


class LamportClock:
    """Lamport's logical clock: tick on a local event, max(local, seen) + 1 on a receive."""

    def __init__(self) -> None:
        self.time = 0

    def tick(self) -> int:
        self.time += 1
        return self.time

    def seen(self, stamp: int) -> int:
        self.time = max(self.time, stamp) + 1
        return self.time


@dataclass(slots=True)
class OpRecord:
    """One client operation as recorded (for counts and drawing)."""

    id: int
    process: str
    f: str
    key: str | None
    value: Any
    call: int
    call_line: int
    status: str = "open"  # "ok" | "fail" | "info" | "open"
    output: Any = None
    ret: int | None = None


class Recorder:
    """Client events in the checker's JSON-lines format, with virtual time."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.lines: list[str] = []
        self.ops: list[OpRecord] = []
        self._open: dict[str, OpRecord] = {}

    def _line(self, process: str, type_: str, f: str, key: str | None, value: Any) -> int:
        event: dict[str, Any] = {"process": process, "type": type_, "f": f}
        if key is not None:
            event["key"] = key
        event["value"] = value
        event["time"] = self.loop.now
        self.lines.append(json.dumps(event, separators=(", ", ": ")))
        return len(self.lines)

    def invoke(self, process: str, f: str, value: Any = None, key: str | None = None) -> OpRecord:
        assert process not in self._open, f"{process} already has an operation in flight"
        line = self._line(process, "invoke", f, key, value)
        op = OpRecord(len(self.ops), process, f, key, value, self.loop.now, line)
        self.ops.append(op)
        self._open[process] = op
        return op

    def complete(self, op: OpRecord, status: str, output: Any = None) -> None:
        if self._open.get(op.process) is not op:
            return  # already completed (e.g. a reply after the timeout)
        del self._open[op.process]
        value = output if status == "ok" else op.value
        self._line(op.process, status, op.f, op.key, value)
        op.status, op.output, op.ret = status, (output if status == "ok" else None), self.loop.now

    def busy(self, process: str) -> bool:
        return process in self._open

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


Reply = Callable[[str, Any], None]  # (status "ok" | "fail", output)


class Client:
    """A process that calls one operation at a time, each bounded by a timeout."""

    def __init__(self, name: str, loop: Loop, rec: Recorder, timeout: int = 200) -> None:
        self.name = name
        self.loop = loop
        self.rec = rec
        self.timeout = timeout

    def call(self, f: str, value: Any, key: str | None, start: Callable[[Reply], None],
             then: Callable[[OpRecord], None] | None = None) -> OpRecord | None:
        """Invoke ``f``; ``start(reply)`` sends it; the first of reply/timeout completes it."""
        if self.rec.busy(self.name):
            return None
        op = self.rec.invoke(self.name, f, value, key)

        def done(status: str, output: Any) -> None:
            if op.status != "open":
                return
            self.rec.complete(op, status, output)
            if then is not None:
                then(op)

        def expire() -> None:
            done("info", None)

        self.loop.after(self.timeout, expire)
        start(done)
        return op


@dataclass(slots=True)
class Outcome:
    """One run of one scenario variant."""

    scenario: str
    variant: str
    seed: int
    story: str
    verdict: str
    expected: str
    history: str
    model: str | None
    result: CheckResult | None
    ops: list[OpRecord]
    trace: Trace
    end: int
    counts: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    lanes: list[str] = field(default_factory=list)  # replica/node lanes in drawing order
    sweep: list[dict[str, float]] | None = None
    sweep_axes: tuple[str, str, str] = ("", "", "")  # x key, y key, title

    @property
    def matches(self) -> bool:
        return self.verdict == self.expected


def check_history(text: str, model: str, source: str = "lab") -> tuple[str, CheckResult, Model[Any]]:
    """Judge a recorded history with the checker: (verdict, result, model)."""
    m = model_named(model)
    history = load(text, source, "json")
    polls = [0]

    def stop() -> bool:
        polls[0] += 1
        return polls[0] > CHECK_POLLS_MAX

    result = check(history, m, Limits(should_stop=stop))
    return result.verdict.value, result, m


def acked_writes(ops: list[OpRecord], fns: tuple[str, ...] = ("write", "put")) -> list[OpRecord]:
    return [o for o in ops if o.f in fns and o.status == "ok"]


def lost_register_writes(ops: list[OpRecord], final: dict[Any, Any]) -> int:
    """Acknowledged writes the final state lost: the surviving value (per key) comes from a write that
    finished before the lost one began, or from no acknowledged write at or after it."""
    lost = 0
    writes = [o for o in ops if o.f in ("write", "put")]
    for w in acked_writes(ops):
        value = final.get(w.key)
        if value == w.value:
            continue
        survivors = [o for o in writes if o.key == w.key and o.value == value and o.status != "fail"]
        # the survivor may legitimately overwrite w only if it did not end before w began
        if not survivors or all(s.ret is not None and s.ret < w.call for s in survivors):
            lost += 1
    return lost


class Lab:
    """One run's world: the seeded generator, the loop, the network, the trace and the recorder."""

    def __init__(self, scenario: str, variant: str, seed: int, base: int = 2, jitter: int = 3) -> None:
        self.scenario, self.variant, self.seed = scenario, variant, seed
        self.rng = random.Random(f"{scenario}/{seed}")
        self.loop = Loop()
        self.trace = Trace()
        self.net = Net(self.loop, random.Random(f"{scenario}/{seed}/net"), self.trace, base, jitter)
        self.rec = Recorder(self.loop)

    def client(self, name: str, timeout: int = 200) -> Client:
        return Client(name, self.loop, self.rec, timeout)

    def at(self, when: int, fn: Callable[[], object]) -> None:
        self.loop.at(when, fn)

    def finish(self, story: str, expected: str, lanes: list[str], model: str | None = "register",
               verdict: str | None = None, counts: dict[str, Any] | None = None,
               explanation: str = "") -> Outcome:
        """Judge the history (if ``model``) and package the run."""
        from conclave.verify.report import render_text

        text = self.rec.text()
        result = None
        parts: list[str] = []
        if model is not None:
            checked, result, m = check_history(text, model, f"{self.scenario} {self.variant} seed {self.seed}")
            parts.append(render_text(result, m))
            if verdict is None:
                verdict = checked
        if explanation:
            parts.insert(0, explanation)
        ops = self.rec.ops
        all_counts: dict[str, Any] = {
            "operations": len(ops),
            "ok": sum(o.status == "ok" for o in ops),
            "failed": sum(o.status == "fail" for o in ops),
            "unknown": sum(o.status in ("info", "open") for o in ops),
        }
        all_counts.update(counts or {})
        all_counts.setdefault("lost writes", 0)
        return Outcome(self.scenario, self.variant, self.seed, story, verdict or "", expected, text,
                       model, result, ops, self.trace, self.drawn_until(), all_counts, "\n\n".join(parts), lanes)

    def drawn_until(self) -> int:
        """Where the drawing ends: a little after the last thing that happened."""
        times = [0]
        for o in self.rec.ops:
            times.append(o.call if o.ret is None else o.ret)
        for b in self.trace.bands:
            times.append(b.start if b.end is None else b.end)
        times += [t for seq in self.trace.states.values() for t, _ in seq]
        times += [t for t, _ in self.trace.notes]
        last = max(times)
        return min(self.loop.now, max(10, last + max(10, last // 8)))


def availability(ops: list[OpRecord], processes: set[str], start: int, end: int) -> str:
    """Share of the operations ``processes`` called in [start, end) that succeeded, as 'k/n (p%)'."""
    mine = [o for o in ops if o.process in processes and start <= o.call < end]
    ok = sum(o.status == "ok" for o in mine)
    return f"{ok}/{len(mine)} ({100 * ok // max(1, len(mine))}%)"
