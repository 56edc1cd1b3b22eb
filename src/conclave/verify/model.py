"""Sequential specifications: the objects a history is checked against.

Theory of operation. A model is a small pure object: ``init()`` gives the
initial state, ``step(state, op)`` gives the state after ``op`` takes effect at
that point or ``REJECT`` when the op's output is impossible there, and
``describe(state)`` says the state in words. States must be hashable: the
checker caches (linearized set, state) pairs.

Optional hooks make the checker fast without changing verdicts:

* ``partition(op)``: operations of different partitions never constrain each
  other (P-compositionality, Horn & Kroening), so each part is checked alone.
  Every model here partitions by ``op.key``: a keyed history is one object per key.
* ``is_observer(op)``: True when ``op`` never changes the state wherever it is
  legal (a read, a failed compare-and-set). The checker linearizes a legal
  observer at once without branching on alternatives.
* ``equivalence(op)``: operations with equal values act identically in ``step``,
  so the checker needs only one order of such twins. It must cover everything
  ``step`` reads (the mutex adds the process).
* ``ignores(op)``: operations that cannot constrain anything (a ``fail`` that had
  no effect, an indeterminate read whose output is unknown) are dropped.
* ``assigns(op)`` and ``observes(op)``: for register-like models, the value an
  operation sets when it takes effect, and what a legal operation tells about the
  state before it (``(True, v)``: it was v; ``(False, v)``: it was not v). With
  them, and values written only once, the checker bounds or drops indeterminate
  writes (see docs/checker.md, "Indeterminate writes").

Adding a model is a subclass with ``name``, ``functions``, ``init`` and ``step``;
see docs/checker.md. This module must never do I/O or keep state between calls.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import replace
from typing import Any, ClassVar, Final, Generic, TypeVar

from conclave.verify.errors import UnknownNameError
from conclave.verify.history import Operation, Status, Value

S = TypeVar("S")


class Rejected:
    """The type of ``REJECT``: ``step`` found the operation impossible in that state."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REJECT"


REJECT: Final = Rejected()


class Unobserved:
    """The type of ``UNOBSERVED``: the value of a write that nobody ever read or compared against.

    The checker gives every such indeterminate write this one value, which makes
    them interchangeable (see docs/checker.md, "Indeterminate writes"). It equals
    only itself.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unobserved)

    def __hash__(self) -> int:
        return 0x5EED

    def __repr__(self) -> str:
        return "UNOBSERVED"

    def __str__(self) -> str:
        return "(a value nobody read)"


UNOBSERVED: Final = Unobserved()


def show(value: Value) -> str:
    """A value as a person reads it: nil, 3, "text", [1, 2]."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, frozenset):
        return "{" + ", ".join(sorted(show(v) for v in value)) + "}"
    return str(value)


class Model(ABC, Generic[S]):
    """A sequential specification (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    functions: ClassVar[frozenset[str]]
    outputs: ClassVar[frozenset[str]] = frozenset()  # functions whose output is an observation

    @abstractmethod
    def init(self) -> S: ...

    @abstractmethod
    def step(self, state: S, op: Operation) -> S | Rejected: ...

    def describe(self, state: S) -> str:
        return show(state)

    def is_observer(self, op: Operation) -> bool:
        return False

    def ignores(self, op: Operation) -> bool:
        return op.status is Status.FAIL or (op.status is Status.INFO and self.is_observer(op))

    def partition(self, op: Operation) -> Hashable:
        return op.key  # type: ignore[no-any-return]

    def equivalence(self, op: Operation) -> Hashable:
        """Operations with equal equivalence must act the same in ``step`` (the checker orders such twins).

        Covers everything ``step`` reads; a model whose step reads more (the process) adds it.
        """
        return (op.f, op.key, op.input, op.output, op.status)

    def assigns(self, op: Operation) -> tuple[Value] | None:
        """``(v,)`` when ``op``, if it changes the state, sets it to exactly ``v`` whatever it was; else None.

        Only register-like models answer; None for every op (the default) turns
        the reductions for indeterminate writes off.
        """
        return None

    def observes(self, op: Operation) -> tuple[bool, Value] | None:
        """What ``op`` being legal says about the state just before it: ``(True, v)`` it was ``v``,
        ``(False, v)`` it was not ``v``; None: nothing (or ``op`` changes the state)."""
        return None

    def mentions(self, op: Operation) -> tuple[Value, ...]:
        """Every value ``op`` compares the state with (what it observes, what a cas expects)."""
        ob = self.observes(op)
        return () if ob is None else (ob[1],)

    def assigning(self, op: Operation, value: Value) -> Operation:
        """``op`` changed to assign ``value`` instead (only asked where ``assigns(op)`` is not None)."""
        raise NotImplementedError(f"the {self.name} model does not rewrite assignments")

    def validate(self, op: Operation) -> str | None:
        """Why ``op`` makes no sense for this model, or None."""
        if op.f not in self.functions:
            return f"the {self.name} model has no operation {op.f!r} (it has {', '.join(sorted(self.functions))})"
        return None

    def describe_op(self, op: Operation) -> str:
        text = f"{op.f}({'' if op.input is None else show(op.input)})"
        if op.status is Status.OK and op.f in self.outputs:
            text += f" → {show(op.output)}"
        elif op.status is Status.FAIL:
            text += " failed"
        elif op.status is Status.INFO:
            text += " (outcome unknown)"
        return text

    def explain(self, state: S, op: Operation) -> str:
        """Why ``step(state, op)`` rejects, in words."""
        return f"{self.describe_op(op)} is impossible when the state is {self.describe(state)}"


def _pair(value: Value) -> tuple[Value, Value] | None:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0], value[1]
    return None


class Register(Model[Value]):
    """A read/write register, initially nil."""

    name = "register"
    summary = "read/write register, initially nil"
    functions = frozenset({"read", "write"})
    outputs = frozenset({"read"})

    def init(self) -> Value:
        return None

    def step(self, state: Value, op: Operation) -> Value | Rejected:
        if op.f == "read":
            return state if op.output == state else REJECT
        return op.input

    def is_observer(self, op: Operation) -> bool:
        return op.f == "read"

    def assigns(self, op: Operation) -> tuple[Value] | None:
        return (op.input,) if op.f == "write" else None

    def observes(self, op: Operation) -> tuple[bool, Value] | None:
        return (True, op.output) if op.f == "read" and op.status is Status.OK else None

    def assigning(self, op: Operation, value: Value) -> Operation:
        return replace(op, input=value)

    def explain(self, state: Value, op: Operation) -> str:
        return f"read returned {show(op.output)} but the register holds {show(state)}"


class CasRegister(Model[Value]):
    """The etcd model of the reference data: read/write/cas on one value, initially nil.

    ``cas`` takes ``[expected, new]``. ``ok`` means the compare matched and the
    value is now ``new``; ``fail`` means the compare did not match (an
    observation: the value was not ``expected``); ``info`` may or may not have
    happened, and if it happened it compared like any other cas.
    """

    name = "cas-register"
    summary = "compare-and-set register (read/write/cas), initially nil"
    functions = frozenset({"read", "write", "cas"})
    outputs = frozenset({"read"})

    def init(self) -> Value:
        return None

    def step(self, state: Value, op: Operation) -> Value | Rejected:
        f = op.f
        if f == "read":
            return state if op.output == state else REJECT
        if f == "write":
            return op.input
        expected, new = op.input
        if op.status is Status.OK:
            return new if state == expected else REJECT
        if op.status is Status.FAIL:
            return state if state != expected else REJECT
        return new if state == expected else state

    def is_observer(self, op: Operation) -> bool:
        return op.f == "read" or (op.f == "cas" and op.status is Status.FAIL)

    def ignores(self, op: Operation) -> bool:
        if op.f == "cas" and op.status is Status.FAIL:
            return False  # a failed compare is an observation, as in Porcupine's etcd model
        return super().ignores(op)

    def assigns(self, op: Operation) -> tuple[Value] | None:
        if op.f == "write":
            return (op.input,)
        if op.f == "cas" and op.status is not Status.FAIL:
            return (op.input[1],)
        return None

    def observes(self, op: Operation) -> tuple[bool, Value] | None:
        if op.f == "read" and op.status is Status.OK:
            return (True, op.output)
        if op.f == "cas" and op.status is Status.OK:
            return (True, op.input[0])
        if op.f == "cas" and op.status is Status.FAIL:
            return (False, op.input[0])
        return None

    def mentions(self, op: Operation) -> tuple[Value, ...]:
        return (op.input[0],) if op.f == "cas" else super().mentions(op)

    def assigning(self, op: Operation, value: Value) -> Operation:
        return replace(op, input=(op.input[0], value) if op.f == "cas" else value)

    def validate(self, op: Operation) -> str | None:
        if op.f == "cas" and _pair(op.input) is None:
            return f"cas needs [expected, new] as its value, not {show(op.input)}"
        return super().validate(op)

    def describe_op(self, op: Operation) -> str:
        if op.f != "cas":
            return super().describe_op(op)
        expected, new = op.input
        outcome = {Status.OK: "succeeded", Status.FAIL: "failed", Status.INFO: "outcome unknown"}[op.status]
        return f"cas({show(expected)} → {show(new)}) {outcome}"

    def explain(self, state: Value, op: Operation) -> str:
        if op.f == "read":
            return f"read returned {show(op.output)} but the register holds {show(state)}"
        if op.f == "cas" and op.status is Status.OK:
            return f"cas succeeded, so the value was {show(op.input[0])}, but the register holds {show(state)}"
        if op.f == "cas":
            return f"cas failed, so the value was not {show(op.input[0])}, but the register holds exactly that"
        return super().explain(state, op)


class KeyValue(Model[Value]):
    """One key of a key-value map (the map is checked key by key).

    ``get`` → value, ``put(v)``, ``append(v)`` (string concatenation), ``delete``,
    ``cas([expected, new])``. An absent key reads as nil or as "": the two are the
    same to this model, as in Porcupine's kv model.
    """

    name = "kv"
    summary = "key-value map checked per key (get/put/append/delete/cas)"
    functions = frozenset({"get", "put", "append", "delete", "cas"})
    outputs = frozenset({"get"})

    def init(self) -> Value:
        return None

    @staticmethod
    def _same(state: Value, value: Value) -> bool:
        return state == value or (state in (None, "") and value in (None, ""))

    def step(self, state: Value, op: Operation) -> Value | Rejected:
        f = op.f
        if f == "get":
            return state if self._same(state, op.output) else REJECT
        if f == "put":
            return op.input
        if f == "append":
            if state is None:
                return op.input
            return (state if isinstance(state, str) else show(state)) + op.input
        if f == "delete":
            return None
        expected, new = op.input
        match = self._same(state, expected)
        if op.status is Status.OK:
            return new if match else REJECT
        if op.status is Status.FAIL:
            return state if not match else REJECT
        return new if match else state

    def is_observer(self, op: Operation) -> bool:
        return op.f == "get" or (op.f == "cas" and op.status is Status.FAIL)

    def ignores(self, op: Operation) -> bool:
        if op.f == "cas" and op.status is Status.FAIL:
            return False
        return super().ignores(op)

    def validate(self, op: Operation) -> str | None:
        if op.f == "cas" and _pair(op.input) is None:
            return f"cas needs [expected, new] as its value, not {show(op.input)}"
        if op.f == "append" and not isinstance(op.input, str):
            return f"append needs a string, not {show(op.input)}"
        return super().validate(op)

    def describe(self, state: Value) -> str:
        return "absent" if state is None else show(state)

    def explain(self, state: Value, op: Operation) -> str:
        if op.f == "get":
            return f"get returned {show(op.output)} but the key holds {self.describe(state)}"
        return super().explain(state, op)


class Mutex(Model[tuple[Hashable, Value]]):
    """A lock with fencing tokens: state is (holder process or None, last token).

    ``acquire`` → optional integer fencing token, which must be larger than every
    earlier one; ``release`` by the holder only. An indeterminate acquire that is
    placed takes the lock with an unknown token.
    """

    name = "mutex"
    summary = "lock (acquire/release) whose fencing tokens must increase"
    functions = frozenset({"acquire", "release"})
    outputs = frozenset({"acquire"})

    def init(self) -> tuple[Hashable, Value]:
        return (None, None)

    def step(self, state: tuple[Hashable, Value], op: Operation) -> tuple[Hashable, Value] | Rejected:
        holder, last = state
        if op.f == "acquire":
            if holder is not None:
                return REJECT
            token = op.output if op.status is Status.OK else None
            if token is None:
                return (op.process, last)
            if last is not None and not token > last:
                return REJECT
            return (op.process, token)
        if holder != op.process:
            return REJECT
        return (None, last)

    def equivalence(self, op: Operation) -> Hashable:
        return (op.process, super().equivalence(op))  # only the holder may release

    def validate(self, op: Operation) -> str | None:
        token = op.output
        if op.f == "acquire" and op.status is Status.OK and token is not None and (
            isinstance(token, bool) or not isinstance(token, int)
        ):
            return f"a fencing token must be an integer, not {show(op.output)}"
        return super().validate(op)

    def describe(self, state: tuple[Hashable, Value]) -> str:
        holder, last = state
        token = "" if last is None else f", last fencing token {show(last)}"
        return ("free" if holder is None else f"held by process {holder}") + token

    def explain(self, state: tuple[Hashable, Value], op: Operation) -> str:
        holder, last = state
        if op.f == "acquire" and holder is not None:
            return f"process {op.process} acquired the lock while process {holder} held it"
        if op.f == "acquire":
            return f"fencing token {show(op.output)} is not larger than the last one, {show(last)}"
        return f"process {op.process} released a lock that is {self.describe(state)}"


class GrowSet(Model[frozenset[Value]]):
    """A set: ``add(v)``, ``read`` → every element (any order)."""

    name = "set"
    summary = "set (add/read)"
    functions = frozenset({"add", "read"})
    outputs = frozenset({"read"})

    def init(self) -> frozenset[Value]:
        return frozenset()

    def step(self, state: frozenset[Value], op: Operation) -> frozenset[Value] | Rejected:
        if op.f == "add":
            return state | {op.input}
        out = op.output
        seen = frozenset(out) if isinstance(out, tuple | frozenset) else None
        return state if seen == state else REJECT

    def is_observer(self, op: Operation) -> bool:
        return op.f == "read"

    def explain(self, state: frozenset[Value], op: Operation) -> str:
        return f"read returned {show(op.output)} but the set is {show(state)}"


class FifoQueue(Model[tuple[Value, ...]]):
    """A FIFO queue: ``enqueue(v)``, ``dequeue`` → the head, or nil when empty."""

    name = "queue"
    summary = "FIFO queue (enqueue/dequeue; dequeue of an empty queue returns nil)"
    functions = frozenset({"enqueue", "dequeue"})
    outputs = frozenset({"dequeue"})

    def init(self) -> tuple[Value, ...]:
        return ()

    def step(self, state: tuple[Value, ...], op: Operation) -> tuple[Value, ...] | Rejected:
        if op.f == "enqueue":
            return (*state, op.input)
        if op.status is Status.INFO:
            return state[1:]
        if op.output is None:
            return state if not state else REJECT
        return state[1:] if state and state[0] == op.output else REJECT

    def describe(self, state: tuple[Value, ...]) -> str:
        return "empty" if not state else "[" + ", ".join(show(v) for v in state) + "] (head first)"

    def explain(self, state: tuple[Value, ...], op: Operation) -> str:
        return f"dequeue returned {show(op.output)} but the queue is {self.describe(state)}"


MODELS: dict[str, Model[Any]] = {
    m.name: m for m in (Register(), CasRegister(), KeyValue(), Mutex(), GrowSet(), FifoQueue())
}


def model_named(name: str) -> Model[Any]:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
