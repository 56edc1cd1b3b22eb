"""Histories: operations with a process, a call, a return, an input and an output.

Theory of operation. A loader (``conclave.verify.formats``) turns text into a
stream of ``Event`` values (invoke / ok / fail / info, one per line) and
``build_history`` pairs each completion with the outstanding invoke of the same
process, Jepsen style. The result is a ``History``: a tuple of ``Operation``
values, each an interval ``[call, ret]`` on one axis (event order, or the
``time`` field when every event carries one). An ``info`` completion means the
outcome is unknown: the operation may take effect at any point after its call,
or never, so its ``ret`` is ``None`` (after everything else). An invoke still
open at the end of the input is treated the same way.

Real-time order: A precedes B iff ``A.ret < B.call``. Intervals are closed, so
equal positions overlap; the checker orders calls before returns at ties.

This module is pure: it never reads files, clocks or randomness. Values are
"frozen" (lists become tuples, maps become sorted item tuples, sets become
frozensets) so that models can keep them in hashable states.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from conclave.verify.errors import HistoryError

Value: TypeAlias = Any
"""A frozen (hashable) value: None, bool, int, float, str, tuple, frozenset."""


class Status(enum.Enum):
    """How an operation completed."""

    OK = "ok"  # took effect, output known
    FAIL = "fail"  # definitely had no effect
    INFO = "info"  # indeterminate: may take effect at any point after its call, or never


class EventType(enum.Enum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history file."""

    line: int
    process: Hashable
    type: EventType
    f: str
    value: Value = None
    key: Value = None
    time: float | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation: an interval with an input, an output and a status.

    ``index`` is the position in the history (invoke order). ``call`` and
    ``ret`` are positions on the history's axis; ``ret is None`` means the
    operation never returned (status INFO). ``output`` is None when unknown.
    """

    index: int
    process: Hashable
    f: str
    input: Value
    output: Value
    status: Status
    call: float
    ret: float | None
    key: Value = None
    call_line: int = 0
    ret_line: int = 0


@dataclass(frozen=True, slots=True)
class History:
    source: str
    format: str
    operations: tuple[Operation, ...]
    timed: bool = False  # positions are the events' times rather than their order


def freeze(value: object) -> Value:
    """Make a decoded JSON/EDN value hashable without changing its meaning."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted(((str(k), freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, set | frozenset):
        return frozenset(freeze(v) for v in value)
    return value


_COMPLETION = {EventType.OK: Status.OK, EventType.FAIL: Status.FAIL, EventType.INFO: Status.INFO}


def build_history(events: Iterable[Event], source: str, fmt: str) -> History:
    """Pair completions with invokes (one outstanding operation per process)."""
    evs = list(events)
    timed = bool(evs) and all(e.time is not None for e in evs)
    open_ops: dict[Hashable, tuple[Event, float]] = {}
    done: list[tuple[Event, float, Status, Event | None, float | None]] = []
    for seq, ev in enumerate(evs):
        pos = float(ev.time) if timed and ev.time is not None else float(seq)
        if ev.type is EventType.INVOKE:
            prior = open_ops.get(ev.process)
            if prior is not None:
                raise HistoryError(
                    source,
                    ev.line,
                    f"process {ev.process!r} invokes {ev.f!r} while its {prior[0].f!r} "
                    f"from line {prior[0].line} has not completed",
                )
            open_ops[ev.process] = (ev, pos)
            continue
        pending = open_ops.pop(ev.process, None)
        if pending is None:
            raise HistoryError(
                source, ev.line, f"{ev.type.value} {ev.f!r} of process {ev.process!r} has no matching invoke"
            )
        inv, call = pending
        if inv.f != ev.f:
            raise HistoryError(
                source, ev.line, f"completion {ev.f!r} does not match the invoke {inv.f!r} on line {inv.line}"
            )
        if pos < call:
            raise HistoryError(source, ev.line, f"returns at time {pos} before its call at time {call}")
        done.append((inv, call, _COMPLETION[ev.type], ev, pos))
    for inv, call in open_ops.values():
        done.append((inv, call, Status.INFO, None, None))
    done.sort(key=lambda d: (d[1], d[0].line))
    ops: list[Operation] = []
    for index, (inv, call, status, comp, ret) in enumerate(done):
        if status is Status.INFO or comp is None:
            ops.append(
                Operation(index, inv.process, inv.f, inv.value, None, Status.INFO, call, None, inv.key, inv.line,
                          comp.line if comp is not None else 0)
            )
        else:
            key = inv.key if inv.key is not None else comp.key
            ops.append(
                Operation(index, inv.process, inv.f, inv.value, comp.value, status, call, ret, key, inv.line,
                          comp.line)
            )
    return History(source, fmt, tuple(ops), timed)
