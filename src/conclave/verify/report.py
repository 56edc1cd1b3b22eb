"""The checker's verdict in words a person can follow.

Theory of operation. ``render_text`` turns a ``CheckResult`` into plain text:
what was checked, and for a part that is not linearizable, the longest
linearizable prefix the search found, the state it leaves, every operation that
could have gone next with the reason it cannot, and the operation whose return
forced the issue; when the partition was cut into windows, only the failing
window is shown, with the states the partition can be in when it starts. With
several partitions, one line per partition gives its verdict. Pure: returns
strings, prints nothing.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from conclave.verify.checker import CheckResult, PartitionResult, Verdict
from conclave.verify.history import Operation
from conclave.verify.model import Model, show

PREFIX_SHOWN_MAX = 12  # steps of a long prefix shown before its end: the end is where it goes wrong
ENTRY_SHOWN_MAX = 8  # possible states at the start of a failing window


def partition_label(key: Hashable) -> str:
    return "the history" if key is None else f"key {show(key)}"


def where(op: Operation) -> str:
    """Source lines of an operation: 'lines 12-14', or 'line 12, never returned'."""
    if op.ret is None:
        if not op.call_line:
            return f"call {op.call:g}, never returned"
        return f"line {op.call_line}, " + (f"info at line {op.ret_line}" if op.ret_line else "never completed")
    if not op.call_line:
        return f"call {op.call:g}, return {op.ret:g}"
    if op.call_line == op.ret_line:
        return f"line {op.call_line}"
    return f"lines {op.call_line}-{op.ret_line}"


def describe(op: Operation, model: Model[Any]) -> str:
    return f"process {op.process}: {model.describe_op(op)} ({where(op)})"


def render_text(result: CheckResult, model: Model[Any]) -> str:
    parts = result.partitions
    checked = sum(p.checked if p.checked else len(p.operations) for p in parts)
    dropped = sum(p.dropped for p in parts)
    pruned = sum(p.pruned for p in parts)
    ignored = sum(len(p.ignored) - p.dropped - p.pruned for p in parts if p.window is None)
    bounded = sum(p.bounded for p in parts)
    ghosts = sum(p.ghosts for p in parts)
    lines = [
        f"model: {model.name} ({model.summary})",
        f"operations: {checked + ignored + dropped + pruned} in {len(parts)} partition{'s' if len(parts) != 1 else ''}"
        + (f"; {ignored} set aside because they cannot constrain anything (failed, or unknown reads)" if ignored
           else ""),
    ]
    if dropped or pruned or bounded or ghosts:
        lines.append(
            f"indeterminate writes: {bounded} must precede the first read of their value; {dropped + ghosts} "
            f"nobody observed" + (f" ({ghosts} kept as interchangeable ghosts for failed compares)" if ghosts else "")
            + (f"; {pruned} failed compares of values nobody wrote set aside" if pruned else "")
        )
    windows = sum(p.windows for p in parts)
    lines.append(
        f"search: {result.configurations} configurations cached (peak about {_size(result.memory_bytes)})"
        + (f", in {windows} windows cut where no operation was pending" if windows > len(parts) else "")
    )
    for p in parts:
        if p.verdict is Verdict.NOT_LINEARIZABLE:
            lines.append("")
            lines.extend(_explain_failure(p, model))
    if result.verdict is Verdict.UNKNOWN:
        lines.append("")
        lines.append(f"gave up: {result.reason}.")
        for p in parts:
            where_ = f" of its window {p.window[0]:g}-{p.window[1]:g}" if p.window is not None else ""
            status = f"{p.verdict.value} ({_extent(p)})" if p.verdict is not Verdict.UNKNOWN else (
                f"unknown (longest linearizable prefix so far: {len(p.order)} of the {len(p.operations)} "
                f"operations{where_})")
            lines.append(f"  {partition_label(p.key)}: {status}")
    elif result.verdict is Verdict.NOT_LINEARIZABLE:
        unchecked = [p for p in parts if p.verdict is Verdict.UNKNOWN]
        if unchecked:
            lines.append("")
            lines.append(
                f"{len(unchecked)} other partition{'s were' if len(unchecked) != 1 else ' was'} not checked to the "
                "end once one had failed."
            )
    elif len(parts) > 1:
        lines.append(f"every one of the {len(parts)} partitions is linearizable")
    if len(parts) > 1 and result.verdict is not Verdict.UNKNOWN:
        lines.append("")
        lines.append("per partition:")
        for p in parts:
            lines.append(f"  {partition_label(p.key)}: {p.verdict.value} ({_extent(p)})")
    return "\n".join(lines)


def _extent(p: PartitionResult) -> str:
    n = p.checked if p.checked else len(p.operations)
    text = f"{n} operations" + (f" in {p.windows} windows" if p.windows > 1 else "")
    if p.window is not None and p.verdict is not Verdict.LINEARIZABLE:
        what = "failing" if p.verdict is Verdict.NOT_LINEARIZABLE else "stopped in"
        text += f"; {what} window of {len(p.operations)}"
    return text


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{max(1, n >> 10)} KiB"


def _explain_failure(p: PartitionResult, model: Model[Any]) -> list[str]:
    ops = p.operations
    if p.window is None:
        out = [f"{partition_label(p.key)} is NOT linearizable ({len(ops)} operations)."]
    else:
        first, last = p.window
        entry = ", ".join(model.describe(s) for s in p.entry_states[:ENTRY_SHOWN_MAX])
        more = len(p.entry_states) - ENTRY_SHOWN_MAX
        out = [
            f"{partition_label(p.key)} is NOT linearizable ({p.checked} operations, cut into {p.windows} windows "
            "where no operation was pending).",
            f"The failing window has {len(ops)} operations, from position {first:g} to {last:g}. Every window "
            "before it has a linearization; when it starts the state can be: "
            + entry + (f" (and {more} more)" if more > 0 else "") + ".",
        ]
    if p.order:
        out.append(
            f"The longest linearizable prefix found places {len(p.order)} of its {len(ops)} operations, in this order:"
        )
        skip = max(0, len(p.order) - PREFIX_SHOWN_MAX)
        if skip:
            out.append(f"  ... {skip} earlier steps ...")
        for k in range(skip, len(p.order)):
            op = ops[p.order[k]]
            out.append(f"  {k + 1:>4}. {describe(op, model)}  -> {model.describe(p.states[k])}")
        state = p.states[-1]
        out.append(f"After it the state is {model.describe(state)}, and no operation that could go next fits:")
    else:
        state = p.initial
        out.append(f"Not even a first operation fits. The initial state is {model.describe(state)}, and:")
    for b in p.blocked:
        out.append(f"  - {describe(b.op, model)}: {b.reason}")
    d = p.deadline
    if d is not None and [b.op for b in p.blocked] == [d]:
        out.append("It is the only candidate: every other pending operation was called after it returned.")
    elif d is not None:
        out.append(
            f"All of these were called before process {d.process}'s {model.describe_op(d)} returned "
            f"({where(d)}), so one of them had to take effect next."
        )
    return out
