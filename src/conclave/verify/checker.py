"""The linearizability checker: Wing & Gong / Lowe search with P-compositionality.

Theory of operation. ``check`` drops the operations the model ignores, splits
the rest by ``model.partition`` (Horn & Kroening: a history is linearizable iff
every part is) and checks each part alone, in three stages:

1. Indeterminate writes (register-like models, every value assigned once; see
   ``_plan``). An ``info`` write whose value some operation observed took effect
   before the first such observer returned: it gets that return. One whose value
   nothing mentions can only matter to a failed compare-and-set that runs while
   its value is the state: without failed compares it is dropped ("it never
   happened"); with them it becomes a ghost, rewritten to assign the one value
   ``UNOBSERVED``, so that ghost writes are interchangeable and need not stay
   pending (stage 2 counts how many were used). All of this is exact.
2. Windows. The part is cut wherever no operation is pending (every operation
   called before the cut returned before it; an ``info`` operation never
   returns, so no cut follows one). Every linearization places the operations
   of a window before those of the next, so the windows are searched one after
   the other, each from every state the previous one can end in: each window
   but the last is searched exhaustively for the set of its possible end
   states (with one linearization per end state kept as the witness), and the
   part is linearizable iff the last window has a linearization from one of the
   states carried into it. An empty set of end states makes the window where it
   happens the failing window, reported on its own. A carried state comes with
   the fewest ghost writes used to reach it; a window may use the next ones.
3. The search of a window is Lowe's just-in-time linearization of Wing & Gong's
   algorithm, as in Porcupine: the call and return events sit in a doubly
   linked list in time order; the operations whose call comes before the first
   remaining return are the candidates to take effect next; taking one
   (``lift``) unlinks its two events, and backtracking relinks them. A cache of
   (bitset of linearized operations, model state) prunes every configuration
   already explored (its outcome is known: no linearization, or its end states
   are recorded). The search is a loop over an explicit stack, so its depth is
   not bounded by Python's recursion limit. In a window of more than 512 ops,
   indeterminate operations have their own bitset, so one never placed does not
   make every later key wide.

Reductions of the search that keep verdicts (and end states) exact:

* Observers first. A legal candidate that cannot change the state (a read, a
  failed cas) is taken at once as a forced move with no alternative: any
  linearization of the configuration can be rearranged to put it first, since
  nothing still pending precedes it in real time.
* Indeterminate operations may also never take effect: the search ends when
  every operation that returned is placed, and never places an indeterminate
  one where it would leave the state unchanged.
* Twins in order. Two operations the model calls equivalent (same function,
  input, output and status, by default), where one is called and returns no
  later than the other, are interchangeable, so only orders taking the earlier
  one first are explored.
* Ghosts late. A ghost is placed only just before a failed compare it makes
  legal: placed earlier, it can be moved later up to there, since nothing else
  can tell its value from the one before it and no return bounds it.

Limits: ``Limits.should_stop`` (a deadline check passed in by the caller: this
module never reads a clock) is polled after every ``poll_every`` configurations
of a part, and the estimated bytes of every cache, stack and carried witness
together may not exceed ``memory_bytes_max``; either ends the check with the
verdict UNKNOWN and says which. The estimate counts each cached configuration
as a set slot, a tuple and its integers (``_ENTRY_BYTES`` plus the bitsets).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from conclave.verify.errors import HistoryError
from conclave.verify.history import History, Operation, Status, Value
from conclave.verify.model import REJECT, UNOBSERVED, Model


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Limits:
    """How long and how large a search may grow, and which reductions it uses.

    ``should_stop`` returns True to give up. ``windows`` and ``indeterminate``
    turn stages 2 and 1 of the module docstring off (for cross-checks).
    """

    should_stop: Callable[[], bool] | None = None
    poll_every: int = 64  # configurations per search slice; the deadline is polled after each slice
    memory_bytes_max: int = 1 << 30  # estimated bytes of all caches, stacks and witnesses together
    stop_at_first_failure: bool = True  # stop the other partitions once one is not linearizable
    windows: bool = True  # split partitions where no operation is pending
    indeterminate: bool = True  # bound observed and drop unobserved indeterminate writes (register models)
    window_ops_min: int = 48  # windows are merged up to at least this many operations
    windows_from_ops: int = 500  # a shorter partition is one window (collecting end states costs more there)


@dataclass(frozen=True, slots=True)
class Blocked:
    """A candidate that could not be placed after the longest linearizable prefix."""

    op: Operation
    reason: str
    legal: bool  # the model allows it here, but no linearization continues from there


@dataclass(frozen=True, slots=True)
class PartitionResult:
    """The verdict for one partition and the evidence for it.

    ``order`` lists indices into ``operations``: the whole linearization when the
    part is linearizable, otherwise the longest linearizable prefix found.
    ``states[k]`` is the model state after ``order[k]``; ``initial`` before it.

    When ``window`` is set, ``operations`` are only the operations of that window
    of the partition (positions from the first call to the last return): the
    failing window, or the one the search gave up in. ``entry_states`` are the
    states the partition can be in when the window starts; ``initial`` is the one
    the longest prefix starts from.
    """

    key: Hashable
    operations: tuple[Operation, ...]
    ignored: tuple[Operation, ...]
    verdict: Verdict
    order: tuple[int, ...]
    initial: Value
    states: tuple[Value, ...]
    blocked: tuple[Blocked, ...] = ()
    deadline: Operation | None = None  # the pending op that returned first: it had to be placed by then
    configurations: int = 0
    reason: str = ""
    window: tuple[float, float] | None = None
    entry_states: tuple[Value, ...] = ()
    windows: int = 1  # windows the partition was cut into
    checked: int = 0  # operations of the whole partition that were searched
    dropped: int = 0  # indeterminate writes nothing observed, left out
    bounded: int = 0  # indeterminate writes that must have happened before an observer returned
    pruned: int = 0  # operations legal in every state they can meet, left out
    ghosts: int = 0  # indeterminate writes nothing observed, kept as interchangeable ghosts
    memory_bytes: int = 0  # peak estimate of the bytes the search held


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    model: str
    partitions: tuple[PartitionResult, ...]
    configurations: int  # cached configurations, summed over partitions
    memory_bytes: int  # peak estimates of the bytes the searches held, summed over partitions
    reason: str = ""
    failing: tuple[PartitionResult, ...] = field(default=())


def check(history: History, model: Model[Any], limits: Limits | None = None) -> CheckResult:
    """Check ``history`` against ``model``; raises ``HistoryError`` for ops the model cannot read."""
    return check_operations(history.operations, model, limits, source=history.source)


def check_operations(
    operations: Sequence[Operation], model: Model[Any], limits: Limits | None = None, source: str = "history"
) -> CheckResult:
    lim = limits or Limits()
    parts = partitions(operations, model, source)
    return combine(model, _run_parts(parts, model, lim))


def partitions(
    operations: Sequence[Operation], model: Model[Any], source: str = "history"
) -> list[tuple[Hashable, list[Operation], list[Operation]]]:
    """(key, operations to check in call order, operations set aside) per partition, in first-seen order."""
    parts: dict[Hashable, tuple[list[Operation], list[Operation]]] = {}
    for op in operations:
        problem = model.validate(op)
        if problem is not None:
            raise HistoryError(source, op.call_line, problem)
        kept, dropped = parts.setdefault(model.partition(op), ([], []))
        (dropped if model.ignores(op) else kept).append(op)
    for kept, _ in parts.values():  # in call order, so that low bits are the ops linearized first
        kept.sort(key=_call_order)
    return [(key, kept, dropped) for key, (kept, dropped) in parts.items()]


def check_partition(
    key: Hashable, kept: list[Operation], ignored: list[Operation], model: Model[Any], limits: Limits | None = None
) -> PartitionResult:
    """Check one partition of ``partitions`` alone (a worker process may call this)."""
    return _run_parts([(key, kept, ignored)], model, limits or Limits())[0]


def combine(model: Model[Any], results: Sequence[PartitionResult]) -> CheckResult:
    """The verdict of a history from the results of its partitions."""
    verdicts = {r.verdict for r in results}
    if Verdict.NOT_LINEARIZABLE in verdicts:
        verdict = Verdict.NOT_LINEARIZABLE
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    reason = next((r.reason for r in results if r.verdict is Verdict.UNKNOWN), "")
    return CheckResult(
        verdict,
        model.name,
        tuple(results),
        sum(r.configurations for r in results),
        sum(r.memory_bytes for r in results),
        reason,
        tuple(r for r in results if r.verdict is Verdict.NOT_LINEARIZABLE),
    )


def _call_order(op: Operation) -> tuple[float, float]:
    return (op.call, _INF if op.ret is None else op.ret)


_INF = float("inf")
_ENTRY_BYTES = 160  # a cached configuration: its set slot, its tuple and one small integer
_FRAME_BYTES = 48  # one stack frame: three list slots and the best-prefix copy
_WITNESS_BYTES = 120  # one carried end state and its witness tuple, besides 8 bytes per step


def _size(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.3g} MiB"


# --- stage 1: indeterminate writes ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """What a partition's search works on: ``ops`` (call order), each standing for ``origin[i]``.

    Ghosts are indeterminate writes whose value nothing mentions, rewritten to
    assign ``UNOBSERVED``; ``writes`` are unconditional (interchangeable), ``cas``
    ghosts apply only when the state equals the value they expect.
    """

    ops: list[Operation]
    origin: list[Operation]
    dropped: list[Operation] = field(default_factory=list)
    pruned: list[Operation] = field(default_factory=list)
    bounded: int = 0
    ghost_writes: list[tuple[Operation, Operation]] = field(default_factory=list)  # (rewritten, original)
    ghost_cas: list[tuple[Operation, Operation]] = field(default_factory=list)

    @property
    def ghosts(self) -> int:
        return len(self.ghost_writes) + len(self.ghost_cas)


def _plan(kept: list[Operation], model: Model[Any], reduce: bool) -> _Plan:
    """Stage 1 of the module docstring, where the model and the part allow it.

    Needs every operation to assign a value or observe one (``model.assigns`` /
    ``observes``), every assigned value distinct and none equal to the initial
    state: then the op that assigned a value read later is known. Also prunes
    a "not equal" observation of a value nobody assigns: legal everywhere.
    """
    plain = _Plan(kept, kept)
    if not reduce:
        return plain
    init = model.init()
    assigned: set[Value] = set()
    mentioned: set[Value] = set()
    first_seen: dict[Value, float] = {}
    try:
        for op in kept:
            a = model.assigns(op)
            ob = model.observes(op)
            if a is None and ob is None:
                return plain
            if a is not None:
                if a[0] in assigned or a[0] == init:
                    return plain
                assigned.add(a[0])
            mentioned.update(model.mentions(op))
            if ob is not None and ob[0] and op.ret is not None:
                v = ob[1]
                first_seen[v] = min(first_seen.get(v, _INF), op.ret)
    except TypeError:  # an unhashable value
        return plain
    plan = _Plan([], [])
    negative = False
    ghosts: list[tuple[Operation, Operation]] = []
    for op in kept:
        ob = model.observes(op)
        if ob is not None and not ob[0]:
            if ob[1] not in assigned and ob[1] != init:
                plan.pruned.append(op)
                continue
            negative = True
        a = model.assigns(op)
        if op.ret is None and a is not None:
            seen = first_seen.get(a[0])
            if seen is None and a[0] not in mentioned:
                ghosts.append((model.assigning(op, UNOBSERVED), op))
                continue
            if seen is not None and seen >= op.call:
                plan.ops.append(replace(op, status=Status.OK, ret=seen))
                plan.origin.append(op)
                plan.bounded += 1
                continue
        plan.ops.append(op)
        plan.origin.append(op)
    if not negative:
        # Nothing can tell a ghost's value from the one before it: a linearization may leave them all out.
        plan.dropped = [original for _, original in ghosts]
    else:
        for ghost, original in ghosts:
            (plan.ghost_cas if model.mentions(ghost) else plan.ghost_writes).append((ghost, original))
    pairs = sorted(zip(plan.ops, plan.origin, strict=True), key=lambda p: _call_order(p[0]))
    plan.ops = [p[0] for p in pairs]
    plan.origin = [p[1] for p in pairs]
    return plan


# --- stage 2: windows -------------------------------------------------------------------------------------------


def _cut(ops: Sequence[Operation], ops_min: int) -> list[tuple[int, int]]:
    """[start, end) ranges of ``ops`` (call order), cut where no op is pending, each at least ``ops_min`` long."""
    ranges = []
    start = 0
    reach = -_INF
    for j, op in enumerate(ops):
        if j - start >= ops_min and reach < op.call:
            ranges.append((start, j))
            start = j
        reach = max(reach, _INF if op.ret is None else op.ret)
    ranges.append((start, len(ops)))
    return ranges


@dataclass(slots=True)
class _Progress:
    """What a running part search has found so far, for its scheduler and an UNKNOWN report."""

    best: list[int] = field(default_factory=list)  # the longest linearizable prefix in the current window
    best_start: Value = None
    cached: int = 0  # configurations in the current cache
    bytes: int = 0  # estimated bytes of the current search
    held: int = 0  # estimated bytes carried between windows
    peak: int = 0
    configurations: int = 0  # cached in finished windows
    plan: _Plan | None = None
    local: list[Operation] = field(default_factory=list)  # the operations of the current search
    local_origin: list[Operation] = field(default_factory=list)  # the history's operations they stand for
    entry: tuple[Value, ...] = ()
    windows: int = 1
    until_yield: int = 0  # configurations left in the current slice


_PartSearch = Generator[None, None, PartitionResult]


def _run_parts(
    parts: list[tuple[Hashable, list[Operation], list[Operation]]], model: Model[Any], lim: Limits
) -> list[PartitionResult]:
    """Run one search per partition, round robin, as Porcupine runs them in parallel.

    The first partition found not linearizable settles the verdict, so the others
    stop there (reported as not checked) unless ``lim.stop_at_first_failure`` is
    off; a deadline or the memory bound stops all.
    """
    progress = [_Progress() for _ in parts]
    running = {i: _part(key, kept, ignored, model, lim, progress[i]) for i, (key, kept, ignored) in enumerate(parts)}
    done: dict[int, PartitionResult] = {}
    stop_reason = ""
    while running and not stop_reason:
        for i in list(running):
            try:
                next(running[i])
            except StopIteration as finished:
                done[i] = finished.value
                del running[i]
                progress[i].bytes = progress[i].held = 0
                if finished.value.verdict is Verdict.NOT_LINEARIZABLE and lim.stop_at_first_failure:
                    stop_reason = "not checked to the end: another partition is already not linearizable"
                    break
                continue
            if sum(p.bytes + p.held for p in progress) >= lim.memory_bytes_max:
                stop_reason = f"the memory bound of {_size(lim.memory_bytes_max)} was reached"
                break
            if lim.should_stop is not None and lim.should_stop():
                stop_reason = "the time limit was reached"
                break
    for i, search in running.items():
        search.close()
        key, kept, ignored = parts[i]
        done[i] = _unknown_result(key, kept, ignored, model, progress[i], stop_reason)
    return [done[i] for i in range(len(parts))]


def _part(
    key: Hashable, kept: list[Operation], ignored: list[Operation], model: Model[Any], lim: Limits, pr: _Progress
) -> _PartSearch:
    plan = _plan(kept, model, lim.indeterminate)
    return (yield from _windows(key, plan, ignored, model, lim, pr))


def _clip(op: Operation, begin: float) -> Operation:
    return op if op.call >= begin else replace(op, call=begin)


def _windows(
    key: Hashable, plan: _Plan, ignored: list[Operation], model: Model[Any], lim: Limits, pr: _Progress
) -> _PartSearch:
    """Stage 2: search the windows of ``plan`` in order, carrying the set of possible states across.

    A carried state comes with the fewest unconditional ghosts used to reach it
    (fewer used leave more for later: it dominates). A window may use the next
    ghosts called before it ends, at most one per failed compare in it (a ghost
    matters only just before a compare that fails because of it), and the cas
    ghosts expecting a value the state can hold in it. Ghost write ``j`` has the
    index ``len(plan.ops) + j`` in the result, ghost cas ``j`` the next ones.
    """
    ops = plan.ops
    cut = lim.windows and len(ops) + plan.ghosts >= lim.windows_from_ops
    ranges = _cut(ops, lim.window_ops_min) if cut else [(0, len(ops))]
    writes, cases = plan.ghost_writes, plan.ghost_cas
    base = len(ops)
    negatives = [0]
    for op in ops:
        ob = model.observes(op) if plan.ghosts else None
        negatives.append(negatives[-1] + (ob is not None and not ob[0]))
    carried: dict[Value, int] = {model.init(): 0}  # state -> fewest ghost writes used
    witnesses: list[dict[Value, tuple[Value, tuple[int, ...]]]] = []
    configurations = 0
    pr.plan, pr.windows, pr.held, pr.peak = plan, len(ranges), 0, 0
    pr.configurations = 0
    for w, (lo, hi) in enumerate(ranges):
        last = w == len(ranges) - 1
        window = ops[lo:hi]
        begin = window[0].call if window else -_INF
        end = max((_INF if op.ret is None else op.ret for op in window), default=-_INF)
        if last:
            end = _INF
        usable = negatives[hi] - negatives[lo]
        here: set[Value] = set(carried)
        if usable and cases:
            for op in window:
                a = model.assigns(op)
                if a is not None:
                    here.add(a[0])
        cas_here = [j for j, (g, _) in enumerate(cases) if usable and g.call <= end and model.mentions(g)[0] in here]
        by_used: dict[int, list[Value]] = {}
        for state, used in carried.items():
            by_used.setdefault(used, []).append(state)
        ends: dict[Value, tuple[int, Value, tuple[int, ...]]] = {}  # state -> (ghosts used, entry, steps)
        failed: tuple[_Found, list[Operation], list[Operation], list[Value]] | None = None
        for used in sorted(by_used):
            starts = by_used[used]
            avail = [j for j in range(used, len(writes)) if writes[j][0].call <= end][:usable]
            local = [*window, *(_clip(writes[j][0], begin) for j in avail),
                     *(_clip(cases[j][0], begin) for j in cas_here)]
            local_origin = [*plan.origin[lo:hi], *(writes[j][1] for j in avail), *(cases[j][1] for j in cas_here)]
            glob = [*range(lo, hi), *(base + j for j in avail), *(base + len(writes) + j for j in cas_here)]
            pr.local, pr.local_origin, pr.entry = local, local_origin, tuple(starts)
            found = yield from _search(local, model, pr, lim.poll_every, starts, collect=not last)
            configurations += found.cached
            pr.configurations = configurations
            pr.bytes = 0
            if last and found.found:
                order = [glob[i] for i in found.order]
                state = found.start
                for steps_of in reversed(witnesses):
                    state, steps = steps_of[state]
                    order[:0] = steps
                return _linearizable_result(key, plan, ignored, model, order, len(ranges), configurations, pr.peak)
            for (state, _linfo), (entry, steps) in found.ends.items():
                g = [glob[i] for i in steps]
                n_used = used + sum(1 for i in g if base <= i < base + len(writes))
                if state not in ends or n_used < ends[state][0]:
                    ends[state] = (n_used, entry, tuple(g))
            if not found.found and (failed is None or len(found.best) > len(failed[0].best)):
                failed = (found, local, local_origin, starts)
        if not ends:
            assert failed is not None
            found, local, local_origin, starts = failed
            return _failing_result(key, plan, ignored, model, found, local, local_origin, list(carried),
                                   len(ranges), configurations, pr)
        witnesses.append({s: (entry, steps) for s, (_, entry, steps) in ends.items()})
        pr.held += sum(_WITNESS_BYTES + 8 * len(steps) for _, _, steps in ends.values())
        carried = {s: n_used for s, (n_used, _, _) in ends.items()}
    raise AssertionError("unreachable: the last window returns")  # pragma: no cover


def _set_aside(plan: _Plan, ignored: list[Operation]) -> list[Operation]:
    return sorted([*ignored, *plan.dropped, *plan.pruned], key=_call_order)


def _states(model: Model[Any], start: Value, ops: Sequence[Operation], order: Sequence[int]) -> list[Value]:
    states = []
    state = start
    for i in order:
        state = model.step(state, ops[i])
        states.append(state)
    return states


def _counted(result: PartitionResult, plan: _Plan) -> PartitionResult:
    return replace(result, checked=len(plan.ops) + plan.ghosts, dropped=len(plan.dropped), bounded=plan.bounded,
                   pruned=len(plan.pruned), ghosts=plan.ghosts)


def _linearizable_result(
    key: Hashable, plan: _Plan, ignored: list[Operation], model: Model[Any], order: list[int], windows: int,
    configurations: int, peak: int,
) -> PartitionResult:
    """The whole linearization, over the history's own operations (a ghost writes its real value)."""
    initial = model.init()
    operations = [*plan.origin, *(o for _, o in plan.ghost_writes), *(o for _, o in plan.ghost_cas)]
    states = _states(model, initial, operations, order)
    return _counted(
        PartitionResult(
            key, tuple(operations), tuple(_set_aside(plan, ignored)), Verdict.LINEARIZABLE, tuple(order), initial,
            tuple(states), configurations=configurations, windows=windows, memory_bytes=peak,
        ),
        plan,
    )


def _window_view(
    plan: _Plan, ignored: list[Operation], ops: list[Operation], windows: int
) -> tuple[tuple[Operation, ...], tuple[float, float] | None]:
    """What was set aside among a window's operations, and the window's span (None: the whole part)."""
    if windows == 1:
        return tuple(_set_aside(plan, ignored)), None
    begin = min((op.call for op in ops), default=0.0)
    end = max((_INF if op.ret is None else op.ret for op in ops), default=begin)
    return tuple(op for op in _set_aside(plan, ignored) if begin <= op.call <= end), (begin, end)


def _failing_result(
    key: Hashable, plan: _Plan, ignored: list[Operation], model: Model[Any], found: _Found, local: list[Operation],
    local_origin: list[Operation], carried: list[Value], windows: int, configurations: int, pr: _Progress,
) -> PartitionResult:
    origin = {id(a): b for a, b in zip(local, local_origin, strict=True)}
    start = found.best_start
    states = _states(model, start, local_origin, found.best)
    # After the prefix, the history's operations and the rewritten ones agree on every candidate: a
    # ghost's real value is one nothing compares with.
    blocked, deadline = _blocked_after(local, found.best, states[-1] if states else start, model)
    blocked = tuple(replace(b, op=origin[id(b.op)]) for b in blocked)
    aside, window = _window_view(plan, ignored, [op for op in local if op.ret is not None] or local, windows)
    return _counted(
        PartitionResult(
            key, tuple(local_origin), aside, Verdict.NOT_LINEARIZABLE, tuple(found.best), start, tuple(states),
            blocked, None if deadline is None else origin[id(deadline)], configurations, window=window,
            entry_states=tuple(carried) if window is not None else (), windows=windows, memory_bytes=pr.peak,
        ),
        plan,
    )


def _unknown_result(
    key: Hashable, kept: list[Operation], ignored: list[Operation], model: Model[Any], pr: _Progress, reason: str
) -> PartitionResult:
    plan = pr.plan or _Plan(kept, kept)
    local_origin = pr.local_origin if pr.plan is not None else kept
    best = [i for i in pr.best if i < len(local_origin)]
    start = pr.best_start if best else (pr.entry[0] if pr.entry else model.init())
    states = _states(model, start, local_origin, best)
    aside, window = _window_view(plan, ignored, [op for op in local_origin if op.ret is not None] or local_origin,
                                 pr.windows)
    return _counted(
        PartitionResult(
            key, tuple(local_origin), aside, Verdict.UNKNOWN, tuple(best), start, tuple(states),
            configurations=pr.configurations + pr.cached, reason=reason, window=window,
            entry_states=pr.entry if window is not None else (), windows=pr.windows,
            memory_bytes=max(pr.peak, pr.bytes + pr.held),
        ),
        plan,
    )


def _event_order(ops: Sequence[Operation]) -> list[tuple[float, int, int]]:
    """Events as (position, 0 for call / 1 for return, op index); calls first at equal positions."""
    events = [(op.call, 0, i) for i, op in enumerate(ops)]
    events += [(_INF if op.ret is None else op.ret, 1, i) for i, op in enumerate(ops)]
    events.sort()
    return events


def _blocked_after(
    ops: Sequence[Operation], order: Sequence[int], state: Value, model: Model[Any]
) -> tuple[tuple[Blocked, ...], Operation | None]:
    """The candidates after the prefix ``order`` and why none of them can go next."""
    done = set(order)
    candidates: list[int] = []
    deadline: Operation | None = None
    for _pos, kind, i in _event_order(ops):
        if i in done:
            continue
        if kind == 1:
            deadline = ops[i]
            break
        candidates.append(i)
    blocked = []
    for i in candidates:
        op = ops[i]
        if model.step(state, op) is REJECT:
            blocked.append(Blocked(op, model.explain(state, op), False))
        else:
            blocked.append(Blocked(op, "possible here, but no linearization of the rest follows it", True))
    return tuple(blocked), deadline


def _twins(ops: Sequence[Operation], model: Model[Any]) -> list[int]:
    """For each op, an equivalent op that is called and returns no later (or -1)."""
    twin = [-1] * len(ops)
    last: dict[Hashable, int] = {}
    for i in sorted(range(len(ops)), key=lambda j: _call_order(ops[j])):
        op = ops[i]
        sig = model.equivalence(op)
        try:
            j = last.get(sig, -1)
        except TypeError:  # an unhashable value: no twin
            continue
        if j >= 0:
            rj = ops[j].ret
            ri = op.ret
            if ri is None or (rj is not None and rj <= ri):
                twin[i] = j
        last[sig] = i
    return twin


def _enables(
    ops: Sequence[Operation], observer: list[bool], step: Callable[[Any, Operation], Any], state: Value, after: Value,
    nxt: list[int], is_call: list[bool], opid: list[int], head: int,
) -> bool:
    """Whether some candidate observer is impossible in ``state`` but possible in ``after``.

    A ghost is placed only then: one placed earlier can be moved later, up to just
    before the failed compare that needs it, since nothing else can tell its value
    from the one before it, and it has no return that bounds it.
    """
    x = nxt[head]
    while is_call[x]:
        j = opid[x]
        if observer[j] and step(state, ops[j]) is REJECT and step(after, ops[j]) is not REJECT:
            return True
        x = nxt[x]
    return False


# --- stage 3: the search of one window --------------------------------------------------------------------------

_DEFINITE, _INDETERMINATE, _FORCED = 0, 1, 2
_COMPACT_FROM_OPS = 512


@dataclass(slots=True)
class _Found:
    """What a window search found: a linearization (or, collecting, every end state) or its best try."""

    found: bool
    order: list[int]  # the linearization (not collecting)
    start: Value  # the entry state it starts from
    ends: dict[tuple[Value, int], tuple[Value, tuple[int, ...]]]  # collecting: (end state, indeterminate
    # ops placed) -> (entry state, linearization)
    best: list[int]  # the longest linearizable prefix, when nothing was found
    best_start: Value
    cached: int


_Search = Generator[None, None, _Found]


def _search(
    ops: Sequence[Operation], model: Model[Any], progress: _Progress, slice_configurations: int,
    starts: Sequence[Value], collect: bool,
) -> _Search:
    """Search ``ops`` from each state of ``starts``; yields every ``slice_configurations`` configurations.

    Not collecting: stops at the first linearization. Collecting (a window that is
    not the last; every op returned): explores every configuration and records
    each reachable end state with one linearization that reaches it.
    """
    n = len(ops)
    # Nodes: 0 is the head, event k is node k + 1, 2n + 1 is the tail.
    size = 2 * n + 2
    head, tail = 0, size - 1
    nxt = list(range(1, size + 1))
    nxt[tail] = tail
    prv = list(range(-1, size - 1))
    prv[head] = head
    is_call = [False] * size
    opid = [0] * size
    match = [0] * size
    call_node = [0] * n
    for k, (_pos, kind, i) in enumerate(_event_order(ops)):
        node = k + 1
        opid[node] = i
        if kind == 0:
            is_call[node] = True
            call_node[i] = node
        else:
            match[call_node[i]] = node
    observer = [model.is_observer(op) for op in ops]
    info = [op.ret is None for op in ops]
    ghost = [info[i] and model.assigns(op) == (UNOBSERVED,) for i, op in enumerate(ops)]
    compact = n > _COMPACT_FROM_OPS
    # Op i is dbit[i] in lin or ibit[i] in linfo (the other is 0). In a long part the indeterminate ops
    # have their own bitset, linfo, so that one never placed does not hold the lowest gap (below) down;
    # in a short one every op is in lin, the returned ones first, each group in call order.
    dbit = [0] * n
    ibit = [0] * n
    definite_total = n - sum(info)
    counts = [0, 0 if compact else definite_total]
    for i in range(n):
        b = 1 << counts[info[i]]
        counts[info[i]] += 1
        if compact and info[i]:
            ibit[i] = b
        else:
            dbit[i] = b
    info_mask = 0 if compact else ((1 << n) - 1) ^ ((1 << definite_total) - 1)
    twins = _twins(ops, model)
    twin_d = [0 if t < 0 else dbit[t] for t in twins]
    twin_i = [0 if t < 0 else ibit[t] for t in twins]
    step = model.step
    reject = REJECT
    slice_size = max(1, slice_configurations)
    entry_bytes = _ENTRY_BYTES

    # A configuration is (linearized set, state). In a long part the set is stored as (bits above
    # its lowest gap, position of that gap): every op called before the gap is linearized, so
    # the stored bits span only the ops in flight, not the whole history.
    cache: set[tuple[Any, ...]] = set()
    mem = 0
    key: tuple[Any, ...]
    ends: dict[tuple[Value, int], tuple[Value, tuple[int, ...]]] = {}
    best: list[int] = []
    best_start: Value = starts[0] if starts else None
    progress.best, progress.best_start, progress.cached = best, best_start, 0
    until_yield = progress.until_yield or slice_size  # slices run on across windows
    for start in starts:
        # One frame per move: the event node taken, the state before it, and how it was chosen
        # (FORCED: an observer, no alternatives; otherwise the scan pass it came from).
        stack_node: list[int] = []
        stack_state: list[Any] = []
        stack_how: list[int] = []
        lin = 0
        linfo = 0
        state: Any = start
        definite_left = definite_total
        arrived = True
        node = head
        scan_pass = _DEFINITE
        # lift (unlink an op's call and return events) and its undo are written out in place below:
        # they run once per configuration, where a function call would cost as much as the work.
        while True:
            dead = False
            if arrived:
                arrived = False
                first = nxt[head]
                if definite_left == 0:
                    # Only indeterminate ops are left, and each of them may never have taken effect.
                    order = [opid[x] for x in stack_node]
                    if not collect:
                        progress.cached = len(cache)
                        progress.until_yield = until_yield
                        return _Found(True, order, start, {}, [], start, len(cache))
                    placed_info = linfo | (lin & info_mask)
                    if (state, placed_info) not in ends:
                        ends[state, placed_info] = (start, tuple(order))
                    dead = True
                else:
                    until_yield -= 1
                    if until_yield == 0:
                        until_yield = slice_size
                        if len(stack_node) > len(best):
                            best = [opid[x] for x in stack_node]
                            best_start = start
                        progress.best = best
                        progress.best_start = best_start
                        progress.cached = len(cache)
                        progress.bytes = mem + _FRAME_BYTES * len(stack_node)
                        progress.peak = max(progress.peak, progress.bytes + progress.held)
                        yield
                    # Observers first: a legal one is a forced move.
                    x = first
                    forced = 0
                    while is_call[x]:
                        i = opid[x]
                        if observer[i] and step(state, ops[i]) is not reject:
                            nl = lin | dbit[i]
                            if compact:
                                nli = linfo | ibit[i]
                                low = (~nl & (nl + 1)).bit_length() - 1
                                k0 = nl >> low
                                key = (k0, low, nli, state)
                                mem += nli.bit_length() >> 3
                            else:
                                k0 = nl
                                key = (k0, state)
                            if key in cache:
                                dead = True
                            else:
                                cache.add(key)
                                mem += entry_bytes + (k0.bit_length() >> 3)
                                forced = x
                            break
                        x = nxt[x]
                    if forced:
                        stack_node.append(forced)
                        stack_state.append(state)
                        stack_how.append(_FORCED)
                        r = match[forced]
                        p, q = prv[forced], nxt[forced]
                        nxt[p] = q
                        prv[q] = p
                        p, q = prv[r], nxt[r]
                        nxt[p] = q
                        prv[q] = p
                        lin = nl
                        if compact:
                            linfo = nli
                        if not info[opid[forced]]:
                            definite_left -= 1
                        arrived = True
                        continue
                    node = first
                    scan_pass = _DEFINITE
            if not dead:
                # Pass one tries the operations that returned; pass two the indeterminate ones, which
                # more often did not happen and so are better tried late.
                while True:
                    while is_call[node]:
                        i = opid[node]
                        if info[i] is (scan_pass == _INDETERMINATE) and not observer[i] and (
                            twins[i] < 0 or lin & twin_d[i] or linfo & twin_i[i]
                        ):
                            s2 = step(state, ops[i])
                            # An indeterminate op that would change nothing here is not needed here: any
                            # linearization that places it here also works without it.
                            if s2 is not reject and not (info[i] and s2 == state) and (
                                not ghost[i] or _enables(ops, observer, step, state, s2, nxt, is_call, opid, head)
                            ):
                                nl = lin | dbit[i]
                                if compact:
                                    nli = linfo | ibit[i]
                                    low = (~nl & (nl + 1)).bit_length() - 1
                                    k0 = nl >> low
                                    key = (k0, low, nli, s2)
                                else:
                                    k0 = nl
                                    key = (k0, s2)
                                if key not in cache:
                                    cache.add(key)
                                    mem += entry_bytes + (k0.bit_length() >> 3)
                                    if compact:
                                        mem += nli.bit_length() >> 3
                                    stack_node.append(node)
                                    stack_state.append(state)
                                    stack_how.append(scan_pass)
                                    r = match[node]
                                    p, q = prv[node], nxt[node]
                                    nxt[p] = q
                                    prv[q] = p
                                    p, q = prv[r], nxt[r]
                                    nxt[p] = q
                                    prv[q] = p
                                    lin = nl
                                    if compact:
                                        linfo = nli
                                    state = s2
                                    if not info[i]:
                                        definite_left -= 1
                                    arrived = True
                                    break
                        node = nxt[node]
                    if arrived or scan_pass == _INDETERMINATE:
                        break
                    scan_pass = _INDETERMINATE
                    node = nxt[head]
                if arrived:
                    continue
            # A dead end: remember the deepest one (the longest linearizable prefix) for the report.
            if len(stack_node) > len(best):
                best = [opid[x] for x in stack_node]
                best_start = start
            # Backtrack: undo forced moves, then the most recent choice, and try the next candidate.
            exhausted = False
            while True:
                if not stack_node:
                    exhausted = True
                    break
                node = stack_node.pop()
                state = stack_state.pop()
                how = stack_how.pop()
                r = match[node]
                p, q = prv[r], nxt[r]
                nxt[p] = r
                prv[q] = r
                p, q = prv[node], nxt[node]
                nxt[p] = node
                prv[q] = node
                i = opid[node]
                lin ^= dbit[i]
                if info[i]:
                    linfo ^= ibit[i]
                else:
                    definite_left += 1
                if how != _FORCED:
                    break
            if exhausted:
                break
            scan_pass = how
            node = nxt[node]
    progress.cached = len(cache)
    progress.until_yield = until_yield
    progress.peak = max(progress.peak, mem + progress.held)
    if collect and ends:
        return _Found(True, [], best_start, ends, [], best_start, len(cache))
    return _Found(False, [], best_start, {}, best, best_start, len(cache))
