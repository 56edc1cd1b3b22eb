"""Test helpers: build operations, run models sequentially, and a brute-force reference checker."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import cache
from typing import Any

from conclave.verify.checker import PartitionResult, Verdict
from conclave.verify.history import Operation, Status
from conclave.verify.model import REJECT, Model


def op(
    index: int,
    process: Hashable,
    f: str,
    inp: Any = None,
    out: Any = None,
    status: Status = Status.OK,
    call: float = 0,
    ret: float | None = 1,
    key: Any = None,
) -> Operation:
    if status is Status.INFO:
        ret, out = None, None
    return Operation(index, process, f, inp, out, status, call, ret, key, index + 1, index + 1)


def brute_force(ops: Sequence[Operation], model: Model[Any]) -> bool:
    """Linearizable? By trying every order, with no reduction but memoization: the reference."""
    parts: dict[Hashable, list[Operation]] = {}
    for o in ops:
        if not model.ignores(o):
            parts.setdefault(model.partition(o), []).append(o)
    return all(_brute_part(p, model) for p in parts.values())


def _brute_part(ops: list[Operation], model: Model[Any]) -> bool:
    n = len(ops)
    definite = sum(1 << i for i, o in enumerate(ops) if o.ret is not None)
    preds = [
        sum(1 << j for j, a in enumerate(ops) if a.ret is not None and a.ret < b.call) for b in ops
    ]

    @cache
    def go(done: int, state: Any) -> bool:
        if done & definite == definite:
            return True
        for i in range(n):
            if not (done >> i) & 1 and preds[i] & ~done == 0:
                s2 = model.step(state, ops[i])
                if s2 is not REJECT and go(done | (1 << i), s2):
                    return True
        return False

    return go(0, model.init())


def assert_evidence_valid(part: PartitionResult, model: Model[Any]) -> None:
    """The order is a legal run respecting real time; complete when the part is linearizable.

    A window of a partition starts from one of the states the partition can be in there.
    """
    ops = part.operations
    if part.window is None:
        assert part.initial == model.init()
    else:
        assert part.initial in part.entry_states
    state = part.initial
    placed: set[int] = set()
    for k, i in enumerate(part.order):
        assert i not in placed
        o = ops[i]
        for j, other in enumerate(ops):
            if other.ret is not None and other.ret < o.call:
                assert j in placed, f"{o} placed before {other}, which returned before it was called"
        state = model.step(state, o)
        assert state is not REJECT
        assert state == part.states[k]
        placed.add(i)
    if part.verdict is Verdict.LINEARIZABLE:
        assert {i for i, o in enumerate(ops) if o.ret is not None} <= placed
    if part.verdict is Verdict.NOT_LINEARIZABLE:
        assert part.blocked, "a failing part names the operations that could not go next"
