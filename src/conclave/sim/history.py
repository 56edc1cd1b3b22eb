"""The clients' history of etcd-style requests, checked as it grows and at the end.

Theory of operation: every request a simulated client makes is an ``Operation`` with
its call and return step. Writes (put, txn, delete range, lease grant / revoke,
compaction) are proposals tagged ``(origin member, seq)``; they return ``ok`` when the
member they were sent to applies the entry, ``fail`` when refused outright (no effect)
and ``info`` (outcome unknown) when they time out or their member crashes.

As operations complete, ``History`` checks the revision rule that linearizability
implies for a single-copy etcd: a linearizable read or a write must answer a revision
at least the highest one any operation completed before its call had shown (a write
that made a new revision, strictly above). That catches a stale read the moment it
returns, with its step.

At the end ``to_verify`` hands the whole history to ``conclave.verify``'s checker (its
``kv`` model, key by key). What each write did is taken from the canonical apply of its
command (the first replica to apply an entry; the hash check makes every replica
agree): a put is a put, a txn whose compare held is a cas, one whose compare failed is
a read of the value its else branch returned, a delete range or a lease revoke is a
delete of each key it removed. A write whose outcome the client never learned is
resolved with what the simulation saw: applied somewhere, it took effect no later than
that step; never applied, it had no effect and is left out. Lease expiries, proposed
by leaders, enter as deletes of a "lessor" process between the first proposal and the
first apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from conclave.sim.errors import InvariantBroken
from conclave.verify import history as vh


class OpStatus(Enum):
    PENDING = "pending"
    OK = "ok"
    FAIL = "fail"  # definitely did not take effect (refused) or read not served
    INFO = "info"  # outcome unknown (timed out, node crashed)


READS = frozenset({"get", "sget"})  # sget: a serializable read (may be stale, not linearizable)


@dataclass(slots=True)
class Operation:
    op_id: int
    client: int
    kind: str  # get, sget, put, cas, delete, delrange, grant, revoke, compact
    node: int
    key: str
    value: str | None
    call_step: int
    call_ms: int
    floor_rev: int = 0  # the highest revision visible when it was called
    expected: str | None = None  # cas: the value the compare wants
    status: OpStatus = OpStatus.PENDING
    return_step: int = 0
    return_ms: int = 0
    origin: int = 0  # writes: the (origin, seq) id of the command
    seq: int = 0
    revision: int = 0  # header revision of the answer
    output: str | None = None  # reads: the value returned
    index: int = 0  # writes: raft index of the entry that applied it

    @property
    def is_read(self) -> bool:
        return self.kind in READS

    def describe(self) -> str:
        what = f"{self.kind} {self.key}" + (f"={self.value}" if self.value is not None else "")
        done = f"returned {self.status.value} at step {self.return_step}" if self.return_step else "pending"
        extra = f" revision={self.revision}" if self.status is OpStatus.OK else ""
        who = f"op {self.op_id} client {self.client} {what} via node {self.node}"
        return f"{who} called at step {self.call_step}, {done}{extra}"


@dataclass(slots=True)
class Canonical:
    """What the first replica to apply a command saw it do."""

    step: int
    index: int
    ok: bool  # applied without an EtcdError
    succeeded: bool  # txn: the compare held
    observed: str | None  # txn that failed: the value its else branch read
    deleted: tuple[str, ...]  # keys it deleted
    put: tuple[str, str] | None  # (key, value) it wrote


@dataclass(slots=True)
class Expiry:
    lease: int
    proposed_step: int
    applied_step: int = 0
    deleted: tuple[str, ...] = ()


@dataclass(slots=True)
class History:
    ops: list[Operation] = field(default_factory=list)
    visible_rev: int = 0

    def call(self, client: int, kind: str, node: int, key: str, value: str | None, step: int, now_ms: int) -> Operation:
        op = Operation(len(self.ops) + 1, client, kind, node, key, value, step, now_ms, floor_rev=self.visible_rev)
        self.ops.append(op)
        return op

    def complete(self, op: Operation, revision: int, step: int, now_ms: int, new_revision: bool) -> None:
        """``op`` answered at header ``revision``; ``new_revision``: it wrote (took a new revision)."""
        self._finish(op, OpStatus.OK, step, now_ms)
        op.revision = revision
        if op.kind == "sget":
            return
        if revision < op.floor_rev or (new_revision and revision == op.floor_rev):
            raise InvariantBroken(
                "linearizability",
                f"{op.describe()}: answered revision {revision}, but revision {op.floor_rev} was already visible "
                f"when it was called",
            )
        self.visible_rev = max(self.visible_rev, revision)

    def give_up(self, op: Operation, step: int, now_ms: int) -> None:
        self._finish(op, OpStatus.FAIL if op.is_read else OpStatus.INFO, step, now_ms)

    def refuse(self, op: Operation, step: int, now_ms: int) -> None:
        self._finish(op, OpStatus.FAIL, step, now_ms)

    @staticmethod
    def _finish(op: Operation, status: OpStatus, step: int, now_ms: int) -> None:
        assert op.status is OpStatus.PENDING, f"op {op.op_id} finished twice"
        op.status, op.return_step, op.return_ms = status, step, now_ms

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            key = f"{op.kind}_{op.status.value}"
            out[key] = out.get(key, 0) + 1
        return out

    def to_verify(self, canonical: dict[tuple[int, int], Canonical], expiries: list[Expiry]) -> list[vh.Operation]:
        """The history as ``conclave.verify`` kv operations (see the module docstring)."""
        out: list[vh.Operation] = []

        def add(process: object, f: str, key: str, value: vh.Value, output: vh.Value, call: int, ret: int) -> None:
            out.append(vh.Operation(len(out), process, f, value, output, vh.Status.OK, float(call), float(ret), key))

        for op in self.ops:
            if op.kind == "get":
                if op.status is OpStatus.OK:
                    add(op.client, "get", op.key, None, op.output, op.call_step, op.return_step)
                continue
            if op.kind in ("sget", "grant", "compact") or op.status is OpStatus.FAIL:
                continue
            c = canonical.get((op.origin, op.seq))
            if c is None or not c.ok:
                if op.status is OpStatus.OK and c is None:
                    raise InvariantBroken("durability", f"{op.describe()} was acknowledged but never applied")
                continue  # never applied, or applied as an error: no effect
            ret = op.return_step if op.status is OpStatus.OK else c.step
            if op.kind == "cas":
                if c.succeeded:
                    add(op.client, "cas", op.key, (op.expected, op.value), None, op.call_step, ret)
                else:
                    add(op.client, "get", op.key, None, c.observed, op.call_step, ret)
                continue
            if c.put is not None:
                add(op.client, "put", c.put[0], c.put[1], None, op.call_step, ret)
            for k in c.deleted:
                add(op.client, "delete", k, None, None, op.call_step, ret)
        for x in expiries:
            if x.applied_step:
                for k in x.deleted:
                    add("lessor", "delete", k, None, None, x.proposed_step, x.applied_step)
        return out
