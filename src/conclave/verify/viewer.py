"""The HTML timeline of a check: one self-contained file, no network needed.

Theory of operation. ``render_html`` flattens a ``CheckResult`` into plain
JSON-able data (per partition: each operation's lane, call and return ranks,
label, status, linearization step and point, the state after it, or why it was
rejected) and drops that data into the ``viewer.html`` template shipped beside
this module, which draws it with inline CSS and JavaScript. Positions are ranks
of the partition's own events, so every partition is drawn compactly; the real
positions appear on hover. A partition cut into windows that is not
linearizable is drawn as its failing window only (with a note giving the states
it can start from); a linearizable partition longer than ``VIEW_OPS_MAX`` is
drawn up to that many steps of its linearization. Pure: returns a string; the
CLI writes the file.
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from importlib import resources
from typing import Any

from conclave.verify.checker import CheckResult, PartitionResult, Verdict
from conclave.verify.history import History, Operation, Status
from conclave.verify.model import Model, show
from conclave.verify.report import partition_label, render_text, where

_PLACEHOLDER = "/*CONCLAVE_DATA*/null"
VIEW_OPS_MAX = 2000  # operations drawn per linearizable partition


def _template() -> str:
    return resources.files("conclave.verify").joinpath("viewer.html").read_text(encoding="utf-8")


def render_html(history: History, result: CheckResult, model: Model[Any]) -> str:
    data = {
        "source": history.source,
        "format": history.format,
        "model": f"{model.name} ({model.summary})",
        "verdict": result.verdict.value,
        "report": render_text(result, model),
        "partitions": [_partition_data(p, model) for p in _display_order(result)],
    }
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = _template()
    return page.replace("{{TITLE}}", html.escape(f"conclave check: {history.source}")).replace(_PLACEHOLDER, payload)


def _display_order(result: CheckResult) -> list[PartitionResult]:
    rank = {Verdict.NOT_LINEARIZABLE: 0, Verdict.UNKNOWN: 1, Verdict.LINEARIZABLE: 2}
    return sorted(result.partitions, key=lambda p: rank[p.verdict])


def _shown(p: PartitionResult) -> tuple[PartitionResult, str]:
    """The part of ``p`` drawn, and a note saying what was left out."""
    if p.window is not None:
        first, last = p.window
        entry = ", ".join(show(s) for s in p.entry_states[:8]) + (" ..." if len(p.entry_states) > 8 else "")
        return p, (f"Only the {'failing ' if p.verdict is Verdict.NOT_LINEARIZABLE else ''}window from position "
                   f"{first:g} to {last:g} is drawn ({len(p.operations)} of the partition's {p.checked} operations, "
                   f"cut into {p.windows} windows where no operation was pending); when it starts the state can be: "
                   f"{entry}.")
    if p.verdict is not Verdict.LINEARIZABLE or len(p.operations) <= VIEW_OPS_MAX:
        return p, ""
    keep = p.order[:VIEW_OPS_MAX]
    ops = [p.operations[i] for i in keep]
    until = max(op.call for op in ops)
    shown = replace(p, operations=tuple(ops), order=tuple(range(len(ops))), states=p.states[:VIEW_OPS_MAX],
                    ignored=tuple(op for op in p.ignored if op.call <= until))
    return shown, f"The first {VIEW_OPS_MAX} steps of {len(p.order)} are drawn."


def _partition_data(whole: PartitionResult, model: Model[Any]) -> dict[str, Any]:
    p, note = _shown(whole)
    ops: list[Operation] = list(p.operations) + list(p.ignored)
    # Dense ranks of this partition's event positions; an open-ended op ends one past the last.
    positions = sorted({op.call for op in ops} | {op.ret for op in ops if op.ret is not None})
    rank = {pos: 2 * k for k, pos in enumerate(positions)}
    end = 2 * len(positions) + 1
    step_of = {i: k for k, i in enumerate(p.order)}
    blocked = {b.op.index: b for b in p.blocked}
    def span(op: Operation) -> tuple[int, int]:
        return rank[op.call], end if op.ret is None else rank[op.ret]

    points = _linearization_points([span(ops[i]) for i in p.order])
    last_state = p.states[-1] if p.states else p.initial
    stuck = model.describe(last_state)
    processes = sorted({str(op.process) for op in ops}, key=_natural)
    rows = []
    for i, op in enumerate(ops):
        row: dict[str, Any] = {
            "lane": processes.index(str(op.process)),
            "call": rank[op.call],
            "ret": None if op.ret is None else rank[op.ret],
            "label": model.describe_op(op),
            "short": _short(model.describe_op(op)),
            "status": op.status.value,
            "where": where(op),
            "at": f"call {op.call:g}, return " + ("never" if op.ret is None else f"{op.ret:g}"),
            "ignored": i >= len(p.operations),
        }
        b = blocked.get(op.index)
        if b is not None:
            row["blocked"] = b.reason
            row["legal"] = b.legal
            row["stateBefore"] = stuck
        if i in step_of:
            k = step_of[i]
            row["step"] = k + 1
            row["point"] = points[k]
            row["state"] = model.describe(p.states[k])
        elif op.status is Status.INFO and i < len(p.operations) and p.verdict is Verdict.LINEARIZABLE:
            row["unplaced"] = True
        if p.deadline is not None and op.index == p.deadline.index:
            row["deadline"] = True
        rows.append(row)
    return {
        "label": partition_label(p.key),
        "verdict": p.verdict.value,
        "reason": p.reason,
        "processes": processes,
        "end": end,
        "ops": rows,
        "initial": model.describe(p.initial),
        "stuck": stuck if p.verdict is Verdict.NOT_LINEARIZABLE else None,
        "prefix": len(p.order),
        "total": len(p.operations),
        "ignoredCount": len(p.ignored),
        "unknownOps": sum(1 for op in p.operations if op.status is Status.INFO),
        "configurations": p.configurations,
        "note": note,
    }


def _linearization_points(intervals: list[tuple[int, int]]) -> list[float]:
    """A point inside each interval, increasing along the order, as Porcupine draws them."""
    points: list[float] = []
    last = -1.0
    for call, ret in intervals:
        point = max(float(call), last + 0.25)
        point = min(point, float(ret))
        points.append(point)
        last = point
    return points


_SHORTER = ((" (outcome unknown)", "?"), (" outcome unknown", "?"), (" succeeded", " ✓"), (" failed", " ✗"),
            ("()", ""), (" → ", "→"))


def _short(label: str) -> str:
    """The label squeezed to fit a narrow bar: read→3, write(4)?, cas(1→2) ✗."""
    for long, short in _SHORTER:
        label = label.replace(long, short)
    return label


def _natural(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)
