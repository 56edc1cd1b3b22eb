"""The clients' history: every operation with its call and return step, and the
linearizability check for reads against the append-only list.

Theory of operation: a write is a proposal of one unique value; it returns ``ok``
when the node it was sent to applies the entry holding that value (it is then in the
list at a known position), ``fail`` when the node refused it outright, and ``info``
(outcome unknown) when it times out. A read asks a node for a ReadIndex and returns
the length of that node's list once the node has applied up to the read index.

At the end of a run ``to_verify`` hands the whole history to ``conclave.verify``'s
checker as appends and reads of one key (its ``kv`` model), which searches for a
linearization of every operation, writes included.

Because every replica applies the same list (state machine safety is checked
elsewhere), a read returning length ``L`` is linearizable iff ``L`` is at least the
list length already made visible before the read was called: the position of every
write acknowledged before the call, and the length returned by every read that
completed before the call. Likewise a write must land beyond that length. ``History``
keeps that floor as operations complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from conclave.sim.errors import InvariantBroken
from conclave.verify import history as vh


class OpKind(Enum):
    WRITE = "write"
    READ = "read"


class OpStatus(Enum):
    PENDING = "pending"
    OK = "ok"
    FAIL = "fail"  # definitely did not take effect (refused) or read not served
    INFO = "info"  # outcome unknown (timed out, node crashed)


@dataclass(slots=True)
class Operation:
    op_id: int
    client: int
    kind: OpKind
    node: int
    value: bytes
    call_step: int
    call_ms: int
    floor_length: int = 0  # reads: the list length that had to be visible at call time
    status: OpStatus = OpStatus.PENDING
    return_step: int = 0
    return_ms: int = 0
    index: int = 0  # writes: log index of the entry; reads: index the node had applied
    length: int = 0  # writes: list length including the value; reads: the length returned

    def describe(self) -> str:
        what = f"{self.kind.value} {self.value.decode()!r}" if self.kind is OpKind.WRITE else "read"
        done = f"returned {self.status.value} at step {self.return_step}" if self.return_step else "pending"
        extra = f" index={self.index} length={self.length}" if self.status is OpStatus.OK else ""
        who = f"op {self.op_id} client {self.client} {what} via node {self.node}"
        return f"{who} called at step {self.call_step}, {done}{extra}"


class History:
    def __init__(self) -> None:
        self.ops: list[Operation] = []
        self.visible_length = 0  # the longest list length any completed operation has shown

    def call(self, client: int, kind: OpKind, node: int, value: bytes, step: int, now_ms: int) -> Operation:
        op = Operation(len(self.ops) + 1, client, kind, node, value, step, now_ms, floor_length=self.visible_length)
        self.ops.append(op)
        return op

    def acknowledge_write(self, op: Operation, index: int, length: int, step: int, now_ms: int) -> None:
        self._finish(op, OpStatus.OK, step, now_ms)
        op.index, op.length = index, length
        if length <= op.floor_length:
            raise InvariantBroken(
                "linearizability",
                f"write op {op.op_id} ({op.value.decode()}) landed at position {length} of the list, "
                f"but length {op.floor_length} was already visible when it was called at step {op.call_step}",
            )
        self.visible_length = max(self.visible_length, length)

    def return_read(self, op: Operation, index: int, length: int, step: int, now_ms: int) -> None:
        self._finish(op, OpStatus.OK, step, now_ms)
        op.index, op.length = index, length
        if length < op.floor_length:
            raise InvariantBroken(
                "linearizability",
                f"read op {op.op_id} via node {op.node} returned length {length} (applied index {index}), "
                f"but length {op.floor_length} was already visible when it was called at step {op.call_step}",
            )
        self.visible_length = max(self.visible_length, length)

    def give_up(self, op: Operation, step: int, now_ms: int) -> None:
        self._finish(op, OpStatus.INFO if op.kind is OpKind.WRITE else OpStatus.FAIL, step, now_ms)

    def refuse(self, op: Operation, step: int, now_ms: int) -> None:
        self._finish(op, OpStatus.FAIL, step, now_ms)

    @staticmethod
    def _finish(op: Operation, status: OpStatus, step: int, now_ms: int) -> None:
        assert op.status is OpStatus.PENDING, f"op {op.op_id} finished twice"
        op.status, op.return_step, op.return_ms = status, step, now_ms

    def acknowledged_writes(self) -> list[Operation]:
        return [op for op in self.ops if op.kind is OpKind.WRITE and op.status is OpStatus.OK]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            key = f"{op.kind.value}_{op.status.value}"
            out[key] = out.get(key, 0) + 1
        return out

    def to_verify(self, final: list[bytes], applied_step: dict[bytes, int]) -> list[vh.Operation]:
        """The history as ``conclave.verify`` operations on one key: a write appends
        ``"<value>,"``; a read of length L returns the first L values of ``final`` (every
        replica's list is a prefix of it, which state machine safety checks).

        A write whose outcome the client never learned is resolved with what the
        simulation saw: if some replica applied it, it took effect no later than that
        step, so it becomes ``ok`` returning then; if none did, no read can have seen
        it, and it is left out. Both keep the verdict exact and spare the checker the
        "maybe, anywhere, or never" of indeterminate operations.
        """
        out: list[vh.Operation] = []
        for op in self.ops:
            ret_step = op.return_step
            status = {OpStatus.OK: vh.Status.OK, OpStatus.FAIL: vh.Status.FAIL}.get(op.status, vh.Status.INFO)
            if op.kind is OpKind.WRITE:
                f, value, output = "append", op.value.decode() + ",", None
                if status is vh.Status.INFO:
                    if op.value not in applied_step:
                        continue
                    status, ret_step = vh.Status.OK, applied_step[op.value]
            else:
                if op.status is not OpStatus.OK:
                    continue  # a read that returned nothing constrains nothing
                f, value, output = "get", None, "".join(v.decode() + "," for v in final[: op.length])
            ret = float(ret_step) if status is not vh.Status.INFO else None
            out.append(vh.Operation(len(out), op.client, f, value, output, status, float(op.call_step), ret, "list"))
        return out
