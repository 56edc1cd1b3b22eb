"""Cross-shard transactions, the replicated half: transaction records and intents of one group.

Theory of operation
-------------------
A transaction over keys of several Raft groups commits atomically by two-phase commit whose
every step is a command in some group's log, so no single process holds the outcome:

1. the coordinator (any member) proposes ``Begin`` in the *record group* (the group of the
   transaction's first key) and, in parallel, ``Prepare`` in every participant group with that
   group's part: its compares, and the ops of both branches that touch its keys;
2. a participant applies ``Prepare`` by evaluating its compares against its store and taking
   locks: shared on what the part reads (compare keys, range ops), exclusive on what it may
   write (puts, deletes, nested txns, either branch). It votes yes (with its compare verdict)
   or no (a lock held by another transaction, or the transaction was already fenced here);
3. the commit point is ONE conditional write of the record: ``Decide(COMMITTED, branch)``,
   applied only while the record is PENDING. An abort is the same write with ABORTED, so commit
   and abort cannot both succeed. The branch (success iff every group's compares held) travels
   with the decision;
4. ``Resolve`` in each participant applies the chosen branch's ops through the store at that log
   position (or drops the intent) and releases the locks; it can be proposed by anyone who read
   the decision, any number of times. ``Forget`` drops the record once every part is resolved.

Recovery. A member that meets an intent (a read or a write that overlaps its locks) reads the
record: a decided record is resolved as decided; an absent one is decided ABORTED (``Decide``
on an absent record creates it ABORTED, so a late ``Begin`` finds it); a PENDING one whose
heartbeat epoch did not move for the heartbeat timeout (the coordinator proposes ``Heartbeat``
while it works) is decided ABORTED conditionally on that epoch, so a live coordinator's heartbeat
wins. Every step is idempotent: two recoveries and the coordinator may race.

Fences. A resolved (or aborted-before-prepare) transaction is remembered per participant so a
duplicated or late ``Prepare`` can never land after its resolution (it would otherwise apply a
committed transaction twice, or lock keys for a transaction nobody will resolve). Transaction
ids are ``(coordinator member id, seq)`` with seqs growing per coordinator across restarts (as
the once-only table's); the fence set keeps a window of ``FENCE_WINDOW`` seqs per coordinator,
and a prepare below the window counts as fenced. The record group keeps the same fences for
records (``Forget``), so a forgotten record is never recreated PENDING: a ``Begin`` after it
answers ABORTED (only an abort can have created a record before its Begin) and a ``Decide``
answers FORGOTTEN. A record is forgotten only once every participant it lists is resolved, and a
COMMITTED record always lists all of them (its Begin did); so an intent whose record is FORGOTTEN
belongs to no commit and is resolved as aborted. A coordinator whose first Decide meets
FORGOTTEN was aborted by a recovery; after an ambiguous earlier attempt it cannot know
(OutcomeUnknown to its client).

Why the locks give serializability: from its prepare to its resolution nothing else may write
what the part reads or read-and-write what it writes (plain commands meeting a lock raise
``Locked`` and the server resolves or waits); so evaluating the compares at prepare and applying
the ops at resolution gives the result of running the part at the commit point, in every group.

Rules for this module: no I/O, no clocks (timeouts are the caller's), no randomness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from conclave.kv import errors as kverr
from conclave.kv.command import (
    XCOMMAND_TYPES,
    Begin,
    Decide,
    Forget,
    Heartbeat,
    Part,
    Prepare,
    Resolve,
    Status,
    TxnId,
    XCommand,
)
from conclave.kv.mvcc import Store
from conclave.kv.types import (
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseHeader,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

FENCE_WINDOW = 1 << 16
MAX_INTENTS = 10_000
"""Pending transactions one group holds at most; a prepare beyond votes no (back-pressure)."""

Span = tuple[bytes, bytes]  # etcd range: (key, range_end), b"" = the key alone, b"\0" = from key


# The commands (Part, Prepare, Resolve, Begin, Heartbeat, Decide, Forget) and Status live in
# conclave.kv.command, so the one command codec encodes them; their meaning is this module's.
Command = XCommand
COMMAND_TYPES = XCOMMAND_TYPES
__all__ = ["COMMAND_TYPES", "Begin", "Command", "Decide", "Forget", "Heartbeat", "Intent", "Locked", "Part",
           "Plan", "Prepare", "Record", "Resolve", "Resolved", "ShardMap", "Status", "TooBroad", "TxnId", "Vote",
           "XShard", "merge", "overlaps", "part_spans", "plan", "request_spans"]

# Deliberately broken rules, for the simulator's teeth tests only (sim/multigroup.py):
# - decide_ignores_pending: Decide overwrites a record that is already decided;
# - prepare_ignores_fences: a Prepare after its transaction's resolution here takes locks again.
BROKEN_RULES: tuple[str, ...] = ("decide_ignores_pending", "prepare_ignores_fences")

# ---------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Vote:
    txn: TxnId
    ok: bool
    compares_ok: bool = False
    failed_compare: int = -1  # index in the part's compares of the first that failed
    conflict: TxnId | None = None  # the transaction holding a lock this one needs
    conflict_group: int = 0  # its record group
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Record:
    txn: TxnId
    status: Status
    epoch: int = 0
    participants: tuple[int, ...] = ()
    success: bool = True


@dataclass(frozen=True, slots=True)
class Resolved:
    txn: TxnId
    applied: bool  # False: nothing was pending here (a duplicate, or a fence was laid)
    response: TxnResponse | None = None


class Locked(kverr.EtcdError):
    """A plain command meets a cross-shard transaction's lock: the server resolves it, then retries.

    Never shown to a client as such: the server turns a lock it cannot clear in time into
    ``etcdserver: request timed out``.
    """

    code = "UNAVAILABLE"
    message = "conclave: key locked by a cross-shard transaction"

    def __init__(self, txn: TxnId, record_group: int) -> None:
        super().__init__(f"txn {txn[0]:x}.{txn[1]} (record in group {record_group})")
        self.txn = txn
        self.record_group = record_group


# ---------------------------------------------------------------------- spans


def _hi(span: Span) -> bytes | None:
    key, end = span
    if not end:
        return key + b"\0"
    if end == b"\0":
        return None
    return end


def overlaps(a: Span, b: Span) -> bool:
    ahi, bhi = _hi(a), _hi(b)
    return (bhi is None or a[0] < bhi) and (ahi is None or b[0] < ahi)


def _op_spans(ops: Iterable[RequestOp], reads: list[Span], writes: list[Span]) -> None:
    for op in ops:
        if op.request_put is not None:
            writes.append((op.request_put.key, b""))
            if op.request_put.prev_kv:
                reads.append((op.request_put.key, b""))
        elif op.request_delete_range is not None:
            writes.append((op.request_delete_range.key, op.request_delete_range.range_end))
        elif op.request_range is not None:
            reads.append((op.request_range.key, op.request_range.range_end))
        elif op.request_txn is not None:
            t = op.request_txn
            reads.extend((c.key, c.range_end) for c in t.compare)
            _op_spans(t.success, reads, writes)
            _op_spans(t.failure, reads, writes)


def part_spans(part: Part) -> tuple[list[Span], list[Span]]:
    """(shared, exclusive) lock spans of a part."""
    reads: list[Span] = [(c.key, c.range_end) for c in part.compares]
    writes: list[Span] = []
    _op_spans(part.success, reads, writes)
    _op_spans(part.failure, reads, writes)
    return reads, writes


def request_spans(cmd: object, store: Store | None = None) -> tuple[list[Span], list[Span]]:
    """(read, write) spans of a plain kv command (what it must not share with a lock).

    A lease revoke (also the leader's expiry) writes the keys attached to the lease: with
    ``store``, those are its spans."""
    from conclave.kv.types import LeaseRevokeRequest, PutRequest

    reads: list[Span] = []
    writes: list[Span] = []
    if isinstance(cmd, LeaseRevokeRequest):
        if store is not None:
            with contextlib.suppress(kverr.EtcdError):  # no such lease: the store says LeaseNotFound
                writes.extend((k, b"") for k in store.lease_keys(cmd.id))
    elif isinstance(cmd, PutRequest):
        writes.append((cmd.key, b""))
    elif isinstance(cmd, DeleteRangeRequest):
        writes.append((cmd.key, cmd.range_end))
    elif isinstance(cmd, RangeRequest):
        reads.append((cmd.key, cmd.range_end))
    elif isinstance(cmd, TxnRequest):
        reads.extend((c.key, c.range_end) for c in cmd.compare)
        _op_spans(cmd.success, reads, writes)
        _op_spans(cmd.failure, reads, writes)
    return reads, writes


# ---------------------------------------------------------------------- the table


@dataclass(slots=True)
class Intent:
    txn: TxnId
    record_group: int
    part: Part
    shared: list[Span]
    exclusive: list[Span]


@dataclass(slots=True)
class _Fences:
    """Per coordinator: the seqs fenced within the window below the highest one fenced."""

    high: int = 0
    seqs: set[int] = field(default_factory=set)

    def add(self, seq: int) -> None:
        if seq > self.high:
            self.high = seq
            floor = seq - FENCE_WINDOW
            if len(self.seqs) > 2 * FENCE_WINDOW // 64 + 64:
                self.seqs = {s for s in self.seqs if s > floor}
        self.seqs.add(seq)

    def __contains__(self, seq: int) -> bool:
        return seq <= self.high - FENCE_WINDOW or seq in self.seqs


class XShard:
    """The cross-shard state of one group: records it holds, intents it holds, fences."""

    __slots__ = ("_fences", "_record_fences", "broken", "intents", "records")

    def __init__(self, broken: frozenset[str] = frozenset()) -> None:
        self.broken = broken  # BROKEN_RULES switched on (the simulator's teeth tests); never in a server
        self.records: dict[TxnId, Record] = {}
        self.intents: dict[TxnId, Intent] = {}
        self._fences: dict[int, _Fences] = {}
        self._record_fences: dict[int, _Fences] = {}

    # ------------------------------------------------------------------ queries

    def fenced(self, txn: TxnId) -> bool:
        f = self._fences.get(txn[0])
        return f is not None and txn[1] in f

    def record_fenced(self, txn: TxnId) -> bool:
        f = self._record_fences.get(txn[0])
        return f is not None and txn[1] in f

    def lock_for(self, reads: Iterable[Span], writes: Iterable[Span], *, ignore: TxnId | None = None) -> Intent | None:
        """The first intent whose locks a request with these spans conflicts with."""
        reads, writes = list(reads), list(writes)
        for intent in self.intents.values():
            if intent.txn == ignore:
                continue
            for w in writes:
                if any(overlaps(w, s) for s in intent.shared) or any(overlaps(w, s) for s in intent.exclusive):
                    return intent
            for r in reads:
                if any(overlaps(r, s) for s in intent.exclusive):
                    return intent
        return None

    def check_plain(self, cmd: object, store: Store | None = None) -> None:
        """Raise ``Locked`` if a plain (single-group) command meets a pending transaction's lock
        (``store``: where a lease revoke finds the keys it would delete)."""
        if not self.intents:
            return
        intent = self.lock_for(*request_spans(cmd, store))
        if intent is not None:
            raise Locked(intent.txn, intent.record_group)

    def locks(self) -> Iterator[tuple[TxnId, int]]:
        for intent in self.intents.values():
            yield intent.txn, intent.record_group

    # ------------------------------------------------------------------ apply

    def apply(self, cmd: XCommand, store: Store, index: int) -> Vote | Record | Resolved | None:
        if isinstance(cmd, Prepare):
            return self._prepare(cmd, store)
        if isinstance(cmd, Resolve):
            return self._resolve(cmd, store, index)
        if isinstance(cmd, Begin):
            return self._begin(cmd)
        if isinstance(cmd, Heartbeat):
            return self._heartbeat(cmd)
        if isinstance(cmd, Decide):
            return self._decide(cmd)
        if isinstance(cmd, Forget):
            self.records.pop(cmd.txn, None)
            self._record_fences.setdefault(cmd.txn[0], _Fences()).add(cmd.txn[1])
            return None
        raise TypeError(f"not a cross-shard command: {cmd!r}")

    def _prepare(self, p: Prepare, store: Store) -> Vote:
        if p.txn in self.intents:  # a duplicate: the same vote again (the state did not change)
            return self._vote(p.txn, self.intents[p.txn].part, store)
        if self.fenced(p.txn) and "prepare_ignores_fences" not in self.broken:
            return Vote(p.txn, False, reason="the transaction was already resolved or aborted here")
        if len(self.intents) >= MAX_INTENTS:
            return Vote(p.txn, False, reason=f"too many pending cross-shard transactions (> {MAX_INTENTS})")
        shared, exclusive = part_spans(p.part)
        other = self.lock_for(shared, exclusive)
        if other is not None:
            return Vote(p.txn, False, conflict=other.txn, conflict_group=other.record_group,
                        reason="a key is locked by another transaction")
        self.intents[p.txn] = Intent(p.txn, p.record_group, p.part, shared, exclusive)
        return self._vote(p.txn, p.part, store)

    @staticmethod
    def _vote(txn: TxnId, part: Part, store: Store) -> Vote:
        failed = store.first_failed_compare(part.compares)
        return Vote(txn, True, compares_ok=failed < 0, failed_compare=failed)

    def _resolve(self, r: Resolve, store: Store, index: int) -> Resolved:
        intent = self.intents.pop(r.txn, None)
        self._fences.setdefault(r.txn[0], _Fences()).add(r.txn[1])
        if intent is None:
            return Resolved(r.txn, False)
        if not r.commit:
            return Resolved(r.txn, True)
        ops = intent.part.success if r.success else intent.part.failure
        response = store.apply(TxnRequest(success=ops), index)
        assert isinstance(response, TxnResponse)
        return Resolved(r.txn, True, TxnResponse(response.header, r.success, response.responses))

    def _begin(self, b: Begin) -> Record:
        rec = self.records.get(b.txn)
        if rec is not None:
            return rec
        if self.record_fenced(b.txn):
            # Forgotten before its Begin arrived: only an abort can have created that record
            # (a commit needs the PENDING record a Begin makes), so the answer is exact.
            return Record(b.txn, Status.ABORTED)
        rec = Record(b.txn, Status.PENDING, 0, b.participants)
        self.records[b.txn] = rec
        return rec

    def _heartbeat(self, h: Heartbeat) -> Record | None:
        rec = self.records.get(h.txn)
        if rec is None or rec.status != Status.PENDING or rec.epoch != h.epoch:
            return rec
        rec = Record(rec.txn, rec.status, rec.epoch + 1, rec.participants, rec.success)
        self.records[h.txn] = rec
        return rec

    def _decide(self, d: Decide) -> Record:
        rec = self.records.get(d.txn)
        if rec is None:
            if self.record_fenced(d.txn):  # decided one way or the other, long resolved
                return Record(d.txn, Status.FORGOTTEN)
            # No record: the coordinator never began (or crashed before). Only an abort may create
            # one, and it does: a Begin that arrives later finds it ABORTED.
            rec = Record(d.txn, Status.ABORTED)
            self.records[d.txn] = rec
            return rec
        if rec.status != Status.PENDING and "decide_ignores_pending" not in self.broken:
            return rec
        if d.expect_epoch is not None and d.expect_epoch != rec.epoch:
            return rec  # the coordinator is alive: its heartbeat moved the epoch
        if d.status == Status.PENDING:
            return rec
        branch = d.success if d.status == Status.COMMITTED else True
        rec = Record(rec.txn, d.status, rec.epoch, rec.participants, branch)
        self.records[d.txn] = rec
        return rec

    # ------------------------------------------------------------------ image

    def snapshot(self) -> list[object]:
        from conclave.kv.command import encode_command

        def enc_part(p: Part) -> bytes:
            return encode_command(TxnRequest(p.compares, p.success, p.failure), 0)

        return [
            [[list(r.txn), int(r.status), r.epoch, list(r.participants), r.success] for r in self.records.values()],
            [[list(i.txn), i.record_group, enc_part(i.part)] for i in self.intents.values()],
            [[c, f.high, sorted(f.seqs)] for c, f in sorted(self._fences.items())],
            [[c, f.high, sorted(f.seqs)] for c, f in sorted(self._record_fences.items())],
        ]

    @classmethod
    def restore(cls, body: Any) -> XShard:
        from conclave.kv.command import decode_command

        x = cls()
        records, intents, fences, record_fences = body
        for txn, status, epoch, parts, success in records:
            t = (int(txn[0]), int(txn[1]))
            x.records[t] = Record(t, Status(status), int(epoch), tuple(int(g) for g in parts), bool(success))
        for txn, group, raw in intents:
            t = (int(txn[0]), int(txn[1]))
            _, req = decode_command(bytes(raw))
            if not isinstance(req, TxnRequest):
                raise ValueError("an intent's part is not a txn")
            part = Part(req.compare, req.success, req.failure)
            shared, exclusive = part_spans(part)
            x.intents[t] = Intent(t, int(group), part, shared, exclusive)
        for table, rows in ((x._fences, fences), (x._record_fences, record_fences)):
            for c, high, seqs in rows:
                table[int(c)] = _Fences(int(high), {int(s) for s in seqs})
        return x


# ---------------------------------------------------------------------- splitting a txn by group


class TooBroad(kverr.EtcdError):
    """A transaction shape the cross-shard path does not run (the message says which part)."""

    code = "INVALID_ARGUMENT"
    message = "conclave: unsupported cross-shard transaction"


@dataclass(frozen=True, slots=True)
class ShardMap:
    """Group ``groups[i]`` owns ``[splits[i-1], splits[i])`` (the first from b"", the last to the end)."""

    splits: tuple[bytes, ...]
    groups: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.splits) + 1:
            raise ValueError("a shard map needs one more group than split keys")
        if list(self.splits) != sorted(set(self.splits)) or b"" in self.splits:
            raise ValueError("split keys must be distinct, non-empty and sorted")

    def group_of(self, key: bytes) -> int:
        from bisect import bisect_right

        return self.groups[bisect_right(self.splits, key)]

    def clip(self, span: Span) -> list[tuple[int, Span]]:
        """The groups a span touches, each with the part of the span it owns."""
        key, end = span
        if not end:
            return [(self.group_of(key), span)]
        out: list[tuple[int, Span]] = []
        bounds = [b"", *self.splits]
        for i, g in enumerate(self.groups):
            lo = bounds[i]
            hi = self.splits[i] if i < len(self.splits) else None
            start = max(key, lo)
            stop: bytes | None = None if end == b"\0" else end
            if hi is not None and (stop is None or hi < stop):
                stop = hi
            if stop is not None and start >= stop:
                continue
            out.append((g, (start, b"\0" if stop is None else stop)))
        return out


@dataclass(slots=True)
class Plan:
    """How a txn runs across groups: each group's part, and where each op's answer comes from."""

    parts: dict[int, Part]
    # per branch, per op of the request: [(group, index of the op in that group's branch)]
    success_map: list[list[tuple[int, int]]]
    failure_map: list[list[tuple[int, int]]]
    record_group: int


def _first_key(txn: TxnRequest) -> bytes | None:
    for c in txn.compare:
        return c.key
    for op in (*txn.success, *txn.failure):
        inner = op.request_put or op.request_delete_range or op.request_range
        if inner is not None:
            return inner.key
        if op.request_txn is not None:
            k = _first_key(op.request_txn)
            if k is not None:
                return k
    return None


def _nested_group(t: TxnRequest, shards: ShardMap) -> int:
    reads: list[Span] = [(c.key, c.range_end) for c in t.compare]
    writes: list[Span] = []
    _op_spans(t.success, reads, writes)
    _op_spans(t.failure, reads, writes)
    groups = {g for span in reads + writes for g, _ in shards.clip(span)}
    if len(groups) != 1:
        raise TooBroad("a nested txn must stay inside one shard")
    return groups.pop()


def plan(txn: TxnRequest, shards: ShardMap) -> Plan:
    """Split ``txn`` into per-group parts. Raises ``TooBroad`` for shapes that cannot be split
    without changing etcd's meaning (a compare over a range spanning groups, a sorted or limited
    range across groups, a nested txn across groups)."""
    first = _first_key(txn)
    record_group = shards.group_of(first if first is not None else b"")
    compares: dict[int, list[Compare]] = {}
    for c in txn.compare:
        clipped = shards.clip((c.key, c.range_end))
        if len(clipped) != 1:
            raise TooBroad("a compare over a range spanning shards")
        compares.setdefault(clipped[0][0], []).append(c)
    branches: list[dict[int, list[RequestOp]]] = [{}, {}]
    maps: list[list[list[tuple[int, int]]]] = [[], []]
    for b, ops in enumerate((txn.success, txn.failure)):
        for op in ops:
            where: list[tuple[int, int]] = []
            pieces: list[tuple[int, RequestOp]]
            if op.request_put is not None:
                pieces = [(shards.group_of(op.request_put.key), op)]
            elif op.request_delete_range is not None:
                d = op.request_delete_range
                pieces = [(g, RequestOp(request_delete_range=DeleteRangeRequest(k, e, d.prev_kv)))
                          for g, (k, e) in shards.clip((d.key, d.range_end))]
            elif op.request_range is not None:
                r = op.request_range
                spans = shards.clip((r.key, r.range_end))
                by_key = r.sort_order == SortOrder.NONE or (
                    r.sort_order == SortOrder.ASCEND and r.sort_target == SortTarget.KEY)
                if len(spans) > 1 and (r.limit or not by_key):
                    raise TooBroad("a sorted or limited range spanning shards")
                pieces = [(g, RequestOp(request_range=RangeRequest(
                    k, e, r.limit, r.revision, r.sort_order, r.sort_target, r.serializable, r.keys_only,
                    r.count_only, r.min_mod_revision, r.max_mod_revision, r.min_create_revision,
                    r.max_create_revision))) for g, (k, e) in spans]
            else:
                assert op.request_txn is not None
                pieces = [(_nested_group(op.request_txn, shards), op)]
            for g, piece in pieces:
                lst = branches[b].setdefault(g, [])
                where.append((g, len(lst)))
                lst.append(piece)
            maps[b].append(where)
    groups = set(compares) | set(branches[0]) | set(branches[1]) | {record_group}
    parts = {g: Part(tuple(compares.get(g, ())), tuple(branches[0].get(g, ())), tuple(branches[1].get(g, ())))
             for g in sorted(groups)}
    return Plan(parts, maps[0], maps[1], record_group)


def merge(p: Plan, success: bool, answers: dict[int, TxnResponse], header: ResponseHeader) -> TxnResponse:
    """The client's TxnResponse from each group's resolution answer, ops in request order."""
    out: list[ResponseOp] = []
    for where in (p.success_map if success else p.failure_map):
        got = [answers[g].responses[i] for g, i in where]
        if len(got) == 1:
            out.append(got[0])
        elif got and got[0].response_range is not None:
            rs = [x.response_range for x in got if x.response_range is not None]
            out.append(ResponseOp(response_range=RangeResponse(
                header, tuple(kv for r in rs for kv in r.kvs), any(r.more for r in rs), sum(r.count for r in rs))))
        else:
            ds = [x.response_delete_range for x in got if x.response_delete_range is not None]
            out.append(ResponseOp(response_delete_range=DeleteRangeResponse(
                header, sum(d.deleted for d in ds), tuple(kv for d in ds for kv in d.prev_kvs))))
    return TxnResponse(header, success, tuple(out))
