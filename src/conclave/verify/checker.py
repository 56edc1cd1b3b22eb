"""The linearizability checker: Wing & Gong / Lowe search with P-compositionality.

Theory of operation. ``check`` drops the operations the model ignores, splits
the rest by ``model.partition`` (Horn & Kroening: a history is linearizable iff
every part is) and searches each part alone. The search is Lowe's just-in-time
linearization of Wing & Gong's algorithm, as in Porcupine: the call and return
events sit in a doubly linked list in time order; the operations whose call
comes before the first remaining return are the candidates to take effect next;
taking one (``lift``) unlinks its two events, and backtracking relinks them. A
cache of (bitset of linearized operations, model state) pairs prunes every
configuration already explored (a configuration seen before has failed, else the
search would have ended). The search is a loop over an explicit stack, so its
depth is not bounded by Python's recursion limit.

Two reductions keep the search small; both keep verdicts exact:

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

Limits: ``Limits.should_stop`` (a deadline check passed in by the caller: this
module never reads a clock) is polled every ``poll_every`` configurations, and
the caches may hold at most ``memory_bytes_max`` (estimated); either ends the
part with the verdict UNKNOWN. The cache size is reported.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conclave.verify.errors import HistoryError
from conclave.verify.history import History, Operation, Value
from conclave.verify.model import REJECT, Model


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Limits:
    """How long and how large a search may grow. ``should_stop`` returns True to give up."""

    should_stop: Callable[[], bool] | None = None
    poll_every: int = 64  # configurations per search slice; the deadline is polled after each slice
    memory_bytes_max: int = 1 << 30  # estimated bytes of all caches together


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


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    model: str
    partitions: tuple[PartitionResult, ...]
    configurations: int  # cached configurations, summed over partitions
    memory_bytes: int  # an estimate of the bytes the caches held at the end
    reason: str = ""
    failing: tuple[PartitionResult, ...] = field(default=())


def check(history: History, model: Model[Any], limits: Limits | None = None) -> CheckResult:
    """Check ``history`` against ``model``; raises ``HistoryError`` for ops the model cannot read."""
    return check_operations(history.operations, model, limits, source=history.source)


def check_operations(
    operations: Sequence[Operation], model: Model[Any], limits: Limits | None = None, source: str = "history"
) -> CheckResult:
    lim = limits or Limits()
    parts: dict[Hashable, tuple[list[Operation], list[Operation]]] = {}
    for op in operations:
        problem = model.validate(op)
        if problem is not None:
            raise HistoryError(source, op.call_line, problem)
        kept, dropped = parts.setdefault(model.partition(op), ([], []))
        (dropped if model.ignores(op) else kept).append(op)
    inf = float("inf")
    for kept, _ in parts.values():  # in call order, so that low bits are the ops linearized first
        kept.sort(key=lambda o: (o.call, inf if o.ret is None else o.ret))
    keys = list(parts)
    outcomes = _run_searches([parts[k][0] for k in keys], model, lim)
    results: list[PartitionResult] = []
    for key, (verdict, order, cached, reason) in zip(keys, outcomes, strict=True):
        kept, dropped = parts[key]
        results.append(_partition_result(key, kept, dropped, model, verdict, order, cached, reason))
    verdicts = {r.verdict for r in results}
    if Verdict.NOT_LINEARIZABLE in verdicts:
        verdict = Verdict.NOT_LINEARIZABLE
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    reason = next((r.reason for r in results if r.verdict is Verdict.UNKNOWN), "")
    configurations = sum(r.configurations for r in results)
    return CheckResult(
        verdict,
        model.name,
        tuple(results),
        configurations,
        sum(r.configurations * _config_bytes(len(r.operations)) for r in results),
        reason,
        tuple(r for r in results if r.verdict is Verdict.NOT_LINEARIZABLE),
    )


def _config_bytes(ops: int) -> int:
    """Rough bytes one cached configuration holds: a set slot, a tuple and a bitset.

    In a part of more than ``_COMPACT_FROM_OPS`` ops the bitset spans the ops in
    flight, assumed to be fewer than that. States are not counted: most are
    shared with the operations (values) or small.
    """
    return 130 + min(ops, _COMPACT_FROM_OPS) // 7


def _size(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.3g} MiB"


def _run_searches(
    parts: list[list[Operation]], model: Model[Any], lim: Limits
) -> list[tuple[Verdict, list[int], int, str]]:
    """Run one search per partition, round robin, as Porcupine runs them in parallel.

    The first partition found not linearizable settles the verdict, so the others
    stop there (reported as not checked); a deadline or the memory bound stops all.
    """
    progress = [_Progress() for _ in parts]
    config_bytes = [_config_bytes(len(ops)) for ops in parts]
    running = {i: _search(ops, model, progress[i], lim.poll_every) for i, ops in enumerate(parts)}
    done: dict[int, tuple[Verdict, list[int], int, str]] = {}
    stop_reason = ""
    while running and not stop_reason:
        for i in list(running):
            try:
                next(running[i])
            except StopIteration as finished:
                verdict, order = finished.value
                done[i] = (verdict, order, progress[i].cached, "")
                del running[i]
                if verdict is Verdict.NOT_LINEARIZABLE:
                    stop_reason = "not checked to the end: another partition is already not linearizable"
                    break
                continue
            if sum(p.cached * b for p, b in zip(progress, config_bytes, strict=True)) >= lim.memory_bytes_max:
                stop_reason = f"the memory bound of {_size(lim.memory_bytes_max)} was reached"
                break
            if lim.should_stop is not None and lim.should_stop():
                stop_reason = "the time limit was reached"
                break
    for i, search in running.items():
        search.close()
        done[i] = (Verdict.UNKNOWN, progress[i].best, progress[i].cached, stop_reason)
    return [done[i] for i in range(len(parts))]


def _partition_result(
    key: Hashable,
    ops: list[Operation],
    ignored: list[Operation],
    model: Model[Any],
    verdict: Verdict,
    order: list[int],
    cached: int,
    reason: str,
) -> PartitionResult:
    initial = model.init()
    states: list[Value] = []
    state = initial
    for i in order:
        state = model.step(state, ops[i])
        states.append(state)
    blocked: tuple[Blocked, ...] = ()
    deadline = None
    if verdict is Verdict.NOT_LINEARIZABLE:
        blocked, deadline = _blocked_after(ops, order, state, model)
    return PartitionResult(
        key, tuple(ops), tuple(ignored), verdict, tuple(order), initial, tuple(states), blocked, deadline, cached,
        reason,
    )


def _event_order(ops: Sequence[Operation]) -> list[tuple[float, int, int]]:
    """Events as (position, 0 for call / 1 for return, op index); calls first at equal positions."""
    inf = float("inf")
    events = [(op.call, 0, i) for i, op in enumerate(ops)]
    events += [(inf if op.ret is None else op.ret, 1, i) for i, op in enumerate(ops)]
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
    inf = float("inf")
    twin = [-1] * len(ops)
    last: dict[Hashable, int] = {}
    for i in sorted(range(len(ops)), key=lambda j: (ops[j].call, inf if ops[j].ret is None else ops[j].ret)):
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


_DEFINITE, _INDETERMINATE, _FORCED = 0, 1, 2
_COMPACT_FROM_OPS = 512


@dataclass(slots=True)
class _Progress:
    """What a running search has found so far, for its scheduler."""

    best: list[int] = field(default_factory=list)  # the longest linearizable prefix
    cached: int = 0  # configurations in its cache


_Search = Generator[None, None, tuple[Verdict, list[int]]]


def _search(ops: Sequence[Operation], model: Model[Any], progress: _Progress, slice_configurations: int) -> _Search:
    """Search for a linearization; yields every ``slice_configurations`` configurations.

    Returns (LINEARIZABLE, the order) or (NOT_LINEARIZABLE, the longest prefix found).
    """
    n = len(ops)
    if n == 0:
        return Verdict.LINEARIZABLE, []
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
    definite_left = n - sum(info)
    twin = _twins(ops, model)
    step = model.step
    reject = REJECT
    slice_size = max(1, slice_configurations)

    # A configuration is (linearized set, state). In a long part the set is stored as (bits above
    # its lowest gap, position of that gap): every op called before the gap is linearized, so
    # the stored bits span only the ops in flight, not the whole history.
    compact = n > _COMPACT_FROM_OPS
    cache: set[tuple[Any, ...]] = set()
    key: tuple[Any, ...]
    # One frame per move: the event node taken, the state before it, and how it was chosen
    # (FORCED: an observer, no alternatives; otherwise the scan pass it came from).
    stack_node: list[int] = []
    stack_state: list[Any] = []
    stack_how: list[int] = []
    best: list[int] = []
    lin = 0
    state: Any = model.init()
    arrived = True
    node = head
    scan_pass = _DEFINITE
    until_yield = slice_size
    # lift (unlink an op's call and return events) and its undo are written out in place below:
    # they run once per configuration, where a function call would cost as much as the work.
    while True:
        dead = False
        if arrived:
            arrived = False
            first = nxt[head]
            if definite_left == 0:
                # Only indeterminate ops are left, and each of them may never have taken effect.
                progress.cached = len(cache)
                return Verdict.LINEARIZABLE, [opid[x] for x in stack_node]
            until_yield -= 1
            if until_yield == 0:
                until_yield = slice_size
                if len(stack_node) > len(best):
                    best = [opid[x] for x in stack_node]
                progress.best = best
                progress.cached = len(cache)
                yield
            # Observers first: a legal one is a forced move.
            x = first
            forced = 0
            while is_call[x]:
                i = opid[x]
                if observer[i] and step(state, ops[i]) is not reject:
                    nl = lin | (1 << i)
                    if compact:
                        low = (~nl & (nl + 1)).bit_length() - 1
                        key = (nl >> low, low, state)
                    else:
                        key = (nl, state)
                    if key in cache:
                        dead = True
                    else:
                        cache.add(key)
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
                i = opid[forced]
                lin |= 1 << i
                if not info[i]:
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
                    t = twin[i]
                    if info[i] is (scan_pass == _INDETERMINATE) and not observer[i] and (t < 0 or (lin >> t) & 1):
                        s2 = step(state, ops[i])
                        # An indeterminate op that would change nothing here is not needed here: any
                        # linearization that places it here also works without it.
                        if s2 is not reject and not (info[i] and s2 == state):
                            nl = lin | (1 << i)
                            if compact:
                                low = (~nl & (nl + 1)).bit_length() - 1
                                key = (nl >> low, low, s2)
                            else:
                                key = (nl, s2)
                            if key not in cache:
                                cache.add(key)
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
        # Backtrack: undo forced moves, then the most recent choice, and try the next candidate.
        while True:
            if not stack_node:
                progress.cached = len(cache)
                return Verdict.NOT_LINEARIZABLE, best
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
            lin ^= 1 << i
            if not info[i]:
                definite_left += 1
            if how != _FORCED:
                break
        scan_pass = how
        node = nxt[node]
