"""The server side of cross-shard transactions: coordinator, recovery and sweeper (asyncio).

Theory of operation
-------------------
The replicated half (``conclave.machine.xshard``) says what each command does to a group; this
module drives those commands through the groups' Raft logs, as ``sim/multigroup.py`` does on the
simulated core. It knows a group only through ``GroupPort``: propose an xshard command and get
its applied result, read a transaction record linearizably, and (for the sweeper) look at the
group's cross-shard state when this member leads it. ``NodeGroupPort`` is that port over one
server ``Node``; a multi-raft host gives one port per group it hosts.

``Coordinator.txn(req)``:

1. ``plan()`` splits the request into parts (limits: ``MAX_TXN_GROUPS`` groups, ``MAX_TXN_KEYS``
   compares + ops); the id is ``(member id, seq)``, seqs counting up from ``seq_base`` (a start
   number persisted in the data dir, ``txn_seq_base``, shifted as the once-only table's: every
   start's seqs lie above the previous start's, far beyond the fence window);
2. ``Begin`` in the record group and ``Prepare`` in every participant, in parallel, while a
   heartbeat task moves the record's epoch every ``heartbeat_interval``. A prepare that meets
   another transaction's lock starts a recovery of that transaction and re-proposes the prepare
   (a no vote for a lock leaves nothing behind), until ``lock_wait`` (then: abort,
   ``LockWaitTimeout``);
3. ``Decide(COMMITTED, branch)`` if every vote was yes (branch: every group's compares held),
   else ``Decide(ABORTED)``. The record's answer is the outcome: COMMITTED (the client gets the
   merged TxnResponse, ``succeeded=false`` when a compare failed, as etcd's), ABORTED (a recovery
   aborted it first: ``TxnAborted``), FORGOTTEN (aborted and forgotten by a recovery; or, if an
   earlier Decide attempt may have applied, ``OutcomeUnknown``). A Decide whose answers never
   come back after an attempt that may have applied: ``OutcomeUnknown``; nothing is retried
   after the deadline, and the transaction itself is never retried;
4. ``Resolve`` in every participant by a background task (retried with backoff for
   ``resolve_bound``), then ``Forget``. The client waits up to ``resolve_wait`` for the answers
   of a commit (they carry the ops' responses); a part resolved by someone else first has no
   answer: a part of blind puts is answered without it, others give ``ResponseLost``.

Every proposal is retried on a failure that leaves it unapplied or unknown (timeout, no leader,
stopped, unreachable): the xshard commands are idempotent. ``Coordinator.close()`` cancels every
task of the coordinator (what a crash does; the sweeper then finishes its transactions).

``Recovery.resolve_intent(txn, record_group, where)``: read the record; decided: resolve the
participants (and ``where``) as decided, forget it; absent or PENDING: wait ``heartbeat_timeout``,
read again, and if the epoch did not move, ``Decide(ABORTED, expect_epoch)`` (a live heartbeat
wins); a COMMITTED record is resolved only after ``resolve_grace`` (its coordinator resolves it
first and so gets the ops' answers for its client); FORGOTTEN: the intent at ``where``
belongs to no commit, resolve it aborted. Concurrent requests for one transaction share one
task per member; two members may race (idempotent).
``Recovery.run_with_lock_wait(fn, bound, where)``: call ``fn``; on ``Locked`` start (or join)
the recovery and retry ``fn`` every ``lock_poll`` until ``bound`` (then ``LockWaitTimeout``).

``Sweeper``: every ``sweep_interval``, in each group this member leads, recovers every intent
(through its record) and every PENDING record, and every decided record seen twice
``decided_grace`` apart (its coordinator's resolution died). Bound: once faults heal, nothing is
in doubt after ``sweep_interval + heartbeat_timeout + (4 + P) * call_timeout`` (P participants;
``decided_grace`` more for a decided record left behind) -- see ``Sweeper.bound``.

Clocks: ``asyncio`` loop time only. Rules: no module-global state; every loop is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.machine import entry
from conclave.machine.xshard import (
    Begin,
    Decide,
    Forget,
    Heartbeat,
    Locked,
    Part,
    Plan,
    Prepare,
    Record,
    Resolve,
    Resolved,
    ShardMap,
    Status,
    TxnId,
    Vote,
    XShard,
    merge,
    plan,
)
from conclave.machine.xshard import Command as XCommand

log = logging.getLogger("conclave.xshard")

MAX_TXN_GROUPS = 16
"""A cross-shard transaction touches at most this many groups."""
MAX_TXN_KEYS = 1024
"""... and carries at most this many compares and ops in all."""
SEQ_FILE = "xshard_seq_epoch"

T = TypeVar("T")
XResult = Vote | Record | Resolved | None

# ---------------------------------------------------------------------- errors


class OutcomeUnknown(kverr.EtcdError):
    """The coordinator cannot know whether the transaction committed (never retried for the client)."""

    code = "UNAVAILABLE"
    message = "conclave: cross-shard transaction outcome unknown (it may or may not have committed)"


class TxnAborted(kverr.EtcdError):
    """Definitely not committed: a recovery aborted it, or a participant voted no. Safe to retry."""

    code = "ABORTED"
    message = "conclave: cross-shard transaction aborted"


class GroupsUnavailable(kverr.EtcdError):
    """A group the transaction needs did not answer in time; the transaction did not commit."""

    code = "UNAVAILABLE"
    message = "conclave: cross-shard transaction: groups unavailable"


class TxnTooLarge(kverr.EtcdError):
    code = "INVALID_ARGUMENT"
    message = "conclave: cross-shard transaction too large"


class ResponseLost(kverr.EtcdError):
    """Committed, but a part was resolved by a recovery first, so its ops' responses are gone."""

    code = "UNKNOWN"
    message = "conclave: cross-shard transaction committed, but its response was lost"


class LockWaitTimeout(kverr.Timeout):
    """A key stayed locked by another cross-shard transaction past the lock wait bound (etcd's
    ``request timed out`` wording, which clients already handle)."""


# Failures after which a proposal may be retried (it did not apply, or we cannot tell).
_RETRYABLE: tuple[type[BaseException], ...] = (
    kverr.Timeout, kverr.NoLeader, kverr.Stopped, kverr.TooManyRequests, kverr.LeaderChanged,
    kverr.NotLeader, kverr.TimeoutDueToLeaderFail, kverr.TimeoutDueToConnectionLost, ConnectionError,
    TimeoutError, OSError,
)
# ... and those after which it certainly did not apply.
_NOT_APPLIED: tuple[type[BaseException], ...] = (kverr.NoLeader, kverr.TooManyRequests, kverr.NotLeader)


class _Unreachable(Exception):
    def __init__(self, group: int, maybe_applied: bool, last: BaseException | None) -> None:
        super().__init__(f"group {group}: {last!r}")
        self.group, self.maybe_applied, self.last = group, maybe_applied, last


# ---------------------------------------------------------------------- what a group offers


class GroupPort(Protocol):
    """One Raft group, as this member reaches it."""

    async def propose(self, cmd: XCommand, timeout: float) -> XResult:
        """Propose through the group's log; the applied result. Raises an EtcdError (Timeout,
        NoLeader, Stopped ...) or OSError when it cannot say, never hangs past ``timeout``."""
        ...

    async def read_record(self, txn: TxnId, timeout: float) -> tuple[Record | None, bool]:
        """Linearizably: the record of ``txn`` held by the group, and whether it is fenced."""
        ...

    def led_state(self) -> XShard | None:
        """The group's cross-shard state if this member leads the group (the sweeper's view)."""
        ...


class NodeGroupPort:
    """A ``GroupPort`` over one server ``Node`` (its group is the node's Raft group).

    ``node`` may be a callable giving the current Node (a restarted member is a new object)."""

    def __init__(self, node: Any) -> None:
        self._node = node

    @property
    def node(self) -> Any:
        return self._node() if callable(self._node) else self._node

    async def propose(self, cmd: XCommand, timeout: float) -> XResult:
        try:
            res: XResult = await asyncio.wait_for(self.node.propose_kv(cmd), timeout)
        except TimeoutError:
            raise kverr.Timeout() from None
        return res

    async def read_record(self, txn: TxnId, timeout: float) -> tuple[Record | None, bool]:
        node = self.node
        try:
            await asyncio.wait_for(node.read_barrier(), timeout)
        except TimeoutError:
            raise kverr.Timeout() from None
        x: XShard = node.sm.xshard
        return x.records.get(txn), x.record_fenced(txn)

    def led_state(self) -> XShard | None:
        node = self.node
        try:
            leads = node.is_leader()
        except AttributeError:  # not started
            return None
        return node.sm.xshard if leads else None


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Timeouts:
    call: float = 2.0  # one proposal or record read
    prepare: float = 5.0  # Begin and every Prepare (lock waits included)
    lock_wait: float = 2.0  # a prepare or a request waiting for another transaction's lock
    lock_poll: float = 0.02  # how often a lock waiter tries again
    heartbeat_interval: float = 0.3
    heartbeat_timeout: float = 1.5  # a PENDING record whose epoch did not move this long is abandoned
    decide: float = 5.0
    resolve_wait: float = 2.0  # the client waits this long for a commit's answers
    resolve_bound: float = 30.0  # background resolution gives up (the sweeper takes over) after this
    backoff: float = 0.02  # first retry delay (doubles to 0.5 s)
    sweep_interval: float = 1.0
    decided_grace: float = 5.0
    resolve_grace: float = 0.5  # a recovery that finds a fresh decision lets the coordinator resolve first

    def __post_init__(self) -> None:
        if self.heartbeat_interval * 3 > self.heartbeat_timeout:
            raise ValueError("the heartbeat timeout must be at least three heartbeat intervals")


def txn_seq_base(data_dir: str | os.PathLike[str]) -> int:
    """Count this start of the coordinator durably in ``data_dir``; the first seq it may use.

    As the once-only table's seqs: start n uses seqs from ``n << 40``, so every seq of a start
    is above every seq of the previous ones (a restarted coordinator never reuses an id, and
    its predecessor's in-flight ids fall below the participants' fence window)."""
    path = Path(data_dir) / SEQ_FILE
    try:
        n = int(path.read_text().strip() or "0") + 1
    except FileNotFoundError:
        n = 1
    except ValueError:
        raise ValueError(f"{path} is corrupt (expected a number)") from None
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(str(n))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return entry.seq_base(n)


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _call(port: GroupPort, group: int, cmd: XCommand, deadline: float, t: Timeouts,
                attempts: list[bool] | None = None) -> XResult:
    """Propose ``cmd`` until it applies or ``deadline``; ``attempts`` collects, per failed
    attempt, whether it may have applied. Raises ``_Unreachable``."""
    delay = t.backoff
    maybe = False
    last: BaseException | None = None
    while True:
        left = deadline - _now()
        if left <= 0:
            raise _Unreachable(group, maybe, last)
        try:
            return await port.propose(cmd, min(t.call, left))
        except _RETRYABLE as exc:
            last = exc
            applied = not isinstance(exc, _NOT_APPLIED)
            maybe = maybe or applied
            if attempts is not None:
                attempts.append(applied)
        await asyncio.sleep(min(delay, max(0.0, deadline - _now())))
        delay = min(delay * 2, 0.5)


async def _read(port: GroupPort, group: int, txn: TxnId, deadline: float,
                t: Timeouts) -> tuple[Record | None, bool]:
    delay = t.backoff
    last: BaseException | None = None
    while True:
        left = deadline - _now()
        if left <= 0:
            raise _Unreachable(group, False, last)
        try:
            return await port.read_record(txn, min(t.call, left))
        except _RETRYABLE as exc:
            last = exc
        await asyncio.sleep(min(delay, max(0.0, deadline - _now())))
        delay = min(delay * 2, 0.5)


def _expect(res: XResult, kind: type[T]) -> T:
    if not isinstance(res, kind):
        raise kverr.EtcdError(f"conclave: a cross-shard command gave {res!r}, not a {kind.__name__}")
    return res


class _Tasks:
    """Background tasks one object owns (cancelled together by ``close``)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:  # a background step failed; the sweeper finishes what is left
                log.warning("%s failed", name, exc_info=True)

        task = asyncio.get_running_loop().create_task(run(), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _resolve_all(groups: Mapping[int, GroupPort], txn: TxnId, where: Iterable[int], commit: bool,
                       success: bool, deadline: float, t: Timeouts) -> dict[int, Resolved]:
    """Resolve ``txn`` in every group of ``where`` in parallel; the answers that came back."""
    out: dict[int, Resolved] = {}

    async def one(g: int) -> None:
        port = groups.get(g)
        if port is None:
            return
        with contextlib.suppress(_Unreachable):
            out[g] = _expect(await _call(port, g, Resolve(txn, commit, success), deadline, t), Resolved)

    await asyncio.gather(*(one(g) for g in sorted(set(where))))
    return out


# ---------------------------------------------------------------------- recovery


class Recovery:
    """Resolves transactions whose locks a request met (one per member, shared by its requests)."""

    def __init__(self, groups: Mapping[int, GroupPort], timeouts: Timeouts = Timeouts()) -> None:
        self.groups = groups
        self.t = timeouts
        self._running: dict[TxnId, asyncio.Task[Status | None]] = {}
        self._tasks = _Tasks()
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def kick(self, txn: TxnId, record_group: int, where: int | None = None) -> asyncio.Task[Status | None]:
        """The recovery of ``txn`` running on this member, started if none is."""
        task = self._running.get(txn)
        if task is not None and not task.done():
            return task
        task = asyncio.get_running_loop().create_task(self.resolve_intent(txn, record_group, where),
                                                      name=f"xshard-recover-{txn[0]:x}.{txn[1]}")
        self._running[txn] = task
        self._tasks.tasks.add(task)

        def done(tk: asyncio.Task[Status | None]) -> None:
            self._tasks.tasks.discard(tk)
            if self._running.get(txn) is tk:
                del self._running[txn]
            if not tk.cancelled() and tk.exception() is not None:
                log.info("recovery of %s: %r", txn, tk.exception())

        task.add_done_callback(done)
        return task

    async def resolve_intent(self, txn: TxnId, record_group: int, where: int | None = None) -> Status | None:
        """Finish ``txn`` as its record says (abort it if abandoned); None if its coordinator is
        alive. Raises GroupsUnavailable when the record group does not answer in time."""
        t = self.t
        port = self.groups.get(record_group)
        if port is None:
            raise GroupsUnavailable(f"record group {record_group} is not known here")
        self._count("recoveries")
        deadline = _now() + t.heartbeat_timeout + 4 * t.call
        try:
            rec, fenced = await _read(port, record_group, txn, deadline, t)
            if rec is None and fenced:
                return await self._forgotten(txn, where, deadline)
            if rec is not None and rec.status == Status.COMMITTED:
                # Its coordinator is resolving it now (normally): resolving first would take the
                # ops' answers from its client. A lock waiter retries meanwhile.
                await asyncio.sleep(t.resolve_grace)
            if rec is None or rec.status == Status.PENDING:
                seen = 0 if rec is None else rec.epoch
                await asyncio.sleep(t.heartbeat_timeout)
                rec, fenced = await _read(port, record_group, txn, _now() + 2 * t.call, t)
                if rec is None and fenced:
                    return await self._forgotten(txn, where, _now() + t.call)
                if rec is not None and rec.status == Status.PENDING and rec.epoch != seen:
                    self._count("coordinator_alive")
                    return None
                if rec is None or rec.status == Status.PENDING:
                    res = await _call(port, record_group, Decide(txn, Status.ABORTED, expect_epoch=seen),
                                      _now() + 2 * t.call, t)
                    rec = _expect(res, Record)
                    if rec.status == Status.PENDING:
                        self._count("coordinator_alive")
                        return None
                    if rec.status == Status.FORGOTTEN:
                        return await self._forgotten(txn, where, _now() + t.call)
                    self._count(f"decided_{rec.status.name.lower()}")
        except _Unreachable as exc:
            raise GroupsUnavailable(f"record group {record_group}: {exc.last!r}") from None
        commit = rec.status == Status.COMMITTED
        where_all = set(rec.participants) | ({where} if where is not None else set())
        got = await _resolve_all(self.groups, txn, where_all, commit, rec.success, _now() + 2 * t.call, t)
        if set(rec.participants) <= set(got):
            with contextlib.suppress(_Unreachable):
                await _call(port, record_group, Forget(txn), _now() + t.call, t)
        self._count("completed")
        return rec.status

    async def _forgotten(self, txn: TxnId, where: int | None, deadline: float) -> Status:
        # Forgotten only once every listed participant was resolved: an intent still met is a
        # late prepare of a transaction that did not commit.
        if where is not None:
            await _resolve_all(self.groups, txn, (where,), False, True, deadline, self.t)
        self._count("forgotten")
        return Status.FORGOTTEN

    async def run_with_lock_wait(self, fn: Callable[[], Awaitable[T]], bound: float | None = None,
                                 where: int | None = None) -> T:
        """``fn()``, retried while it meets cross-shard locks (each recovered or waited for), for
        at most ``bound`` seconds (default ``lock_wait``): then ``LockWaitTimeout``."""
        deadline = _now() + (self.t.lock_wait if bound is None else bound)
        while True:
            try:
                return await fn()
            except Locked as exc:
                left = deadline - _now()
                if left <= 0:
                    raise LockWaitTimeout(f"key locked by txn {exc.txn[0]:x}.{exc.txn[1]}") from None
                task = self.kick(exc.txn, exc.record_group, where)
                await asyncio.wait([task], timeout=min(self.t.lock_poll, left))

    async def close(self) -> None:
        await self._tasks.close()
        self._running.clear()


# ---------------------------------------------------------------------- the coordinator


@dataclass(slots=True)
class _Run:
    txn: TxnId
    plan: Plan
    epoch: int = 0
    deciding: bool = False  # heartbeats stop once the decision is proposed


class Coordinator:
    """Runs cross-shard transactions for one member (see the module docstring)."""

    def __init__(self, member_id: int, groups: Mapping[int, GroupPort], shard_map: ShardMap, *,
                 seq_base: int = 1, timeouts: Timeouts = Timeouts(), recovery: Recovery | None = None) -> None:
        if member_id <= 0:
            raise ValueError("the coordinator's member id must be positive")
        self.member_id = member_id
        self.groups = groups
        self.shard_map = shard_map
        self.t = timeouts
        self.recovery = recovery if recovery is not None else Recovery(groups, timeouts)
        self._seq = itertools.count(max(1, seq_base))
        self._tasks = _Tasks()
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def next_txn_id(self) -> TxnId:
        return (self.member_id, next(self._seq))

    def check(self, p: Plan) -> None:
        if len(p.parts) > MAX_TXN_GROUPS:
            raise TxnTooLarge(f"it spans {len(p.parts)} groups (at most {MAX_TXN_GROUPS})")
        keys = sum(len(part.compares) + len(part.success) + len(part.failure) for part in p.parts.values())
        if keys > MAX_TXN_KEYS:
            raise TxnTooLarge(f"it has {keys} compares and ops in all (at most {MAX_TXN_KEYS})")
        missing = sorted(g for g in p.parts if g not in self.groups)
        if missing:
            raise GroupsUnavailable(f"groups {missing} are not reachable from this member")

    async def txn(self, req: kv.TxnRequest, auth: Any = None) -> kv.TxnResponse:
        """Run ``req`` atomically across the groups it touches (raises the errors above,
        ``TooBroad`` from ``plan``). ``auth`` is accepted for the sharded backend's hook and not
        checked here: a sharded cluster refuses to enable auth."""
        p = plan(req, self.shard_map)
        self.check(p)
        run = _Run(self.next_txn_id(), p)
        self._count("txns")
        beat = self._tasks.spawn(self._heartbeat(run), f"xshard-heartbeat-{run.txn[1]}")
        try:
            return await self._run(run)
        finally:
            beat.cancel()

    async def _heartbeat(self, run: _Run) -> None:
        rg = run.plan.record_group
        port = self.groups[rg]
        while not run.deciding:
            await asyncio.sleep(self.t.heartbeat_interval)
            if run.deciding:
                return
            try:
                res = await port.propose(Heartbeat(run.txn, run.epoch), self.t.call)
            except _RETRYABLE:
                continue
            if isinstance(res, Record):
                run.epoch = max(run.epoch, res.epoch)
                if res.status != Status.PENDING:
                    return

    async def _prepare(self, run: _Run, g: int, deadline: float, lock_deadline: float) -> Vote:
        cmd = Prepare(run.txn, run.plan.record_group, run.plan.parts[g])
        while True:
            vote = _expect(await _call(self.groups[g], g, cmd, deadline, self.t), Vote)
            if vote.ok or vote.conflict is None or _now() >= min(deadline, lock_deadline):
                return vote
            self._count("prepare_lock_waits")
            task = self.recovery.kick(vote.conflict, vote.conflict_group, g)
            await asyncio.wait([task], timeout=min(self.t.lock_poll * 5, max(0.0, lock_deadline - _now())))

    async def _run(self, run: _Run) -> kv.TxnResponse:
        t, p, txn = self.t, run.plan, run.txn
        rg = p.record_group
        start = _now()
        deadline, lock_deadline = start + t.prepare, start + t.lock_wait
        votes: dict[int, Vote] = {}
        unreachable: list[int] = []
        refused: list[kverr.EtcdError] = []
        begun: Record | None = None

        async def begin() -> None:
            nonlocal begun
            try:
                begun = _expect(await _call(self.groups[rg], rg, Begin(txn, tuple(p.parts)), deadline, t), Record)
                run.epoch = max(run.epoch, begun.epoch)
            except _Unreachable:
                unreachable.append(rg)
            except kverr.EtcdError as exc:  # refused outright (too large, ...): abort, say why
                refused.append(exc)

        async def prepare(g: int) -> None:
            try:
                votes[g] = await self._prepare(run, g, deadline, lock_deadline)
            except _Unreachable:
                unreachable.append(g)
            except kverr.EtcdError as exc:
                refused.append(exc)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(begin())
            for g in p.parts:
                tg.create_task(prepare(g))
        ok = begun is not None and begun.status == Status.PENDING and not unreachable and not refused and all(
            v.ok for v in votes.values())
        success = all(v.compares_ok for v in votes.values())
        status = Status.COMMITTED if ok else Status.ABORTED
        run.deciding = True
        attempts: list[bool] = []
        try:
            rec = _expect(await _call(self.groups[rg], rg, Decide(txn, status, success), _now() + t.decide, t,
                                      attempts), Record)
        except _Unreachable as exc:
            self._count("decide_unreachable")
            if status == Status.COMMITTED and exc.maybe_applied:
                raise OutcomeUnknown(f"txn {txn[0]:x}.{txn[1]}: the record group {rg} did not answer") from None
            # No COMMITTED decision can have applied: nobody else proposes one, so it never commits.
            self._finish_later(txn, rg, tuple(p.parts), False, True)
            raise GroupsUnavailable(f"record group {rg} did not answer the decision") from None
        if rec.status == Status.FORGOTTEN:
            if status == Status.COMMITTED and any(attempts):
                raise OutcomeUnknown(f"txn {txn[0]:x}.{txn[1]}: its record was forgotten after an "
                                     "ambiguous decision") from None
            rec = Record(txn, Status.ABORTED)
        if rec.status == Status.PENDING:  # cannot happen: Decide of a non-PENDING status always lands
            raise OutcomeUnknown(f"txn {txn[0]:x}.{txn[1]}: the record stayed PENDING")
        commit = rec.status == Status.COMMITTED
        if not commit:
            self._count("aborted")
            self._finish_later(txn, rg, tuple(p.parts), False, True)
            if status == Status.COMMITTED:
                raise TxnAborted(f"txn {txn[0]:x}.{txn[1]} was aborted by a recovery (its heartbeat expired)")
            if refused:
                raise refused[0]
            if unreachable:
                raise GroupsUnavailable(f"groups {sorted(set(unreachable))} did not answer the prepare")
            lock = next((v for v in votes.values() if v.conflict is not None), None)
            if lock is not None and lock.conflict is not None:
                raise LockWaitTimeout(f"keys locked by txn {lock.conflict[0]:x}.{lock.conflict[1]}")
            why = next((v.reason for v in votes.values() if not v.ok), "a recovery aborted it")
            raise TxnAborted(f"txn {txn[0]:x}.{txn[1]}: {why}")
        self._count("committed")
        answers = await self._resolve_for_answer(txn, rg, p, rec.success)
        return self._answer(p, rec.success, answers)

    async def _resolve_for_answer(self, txn: TxnId, rg: int, p: Plan, success: bool) -> dict[int, Resolved]:
        """Resolve every part (in the background); the answers that came within ``resolve_wait``."""
        got: dict[int, Resolved] = {}
        done = asyncio.Event()
        parts = tuple(p.parts)

        async def finish() -> None:
            deadline = _now() + self.t.resolve_bound
            pending = set(parts)

            async def one(g: int) -> None:
                try:
                    got[g] = _expect(await _call(self.groups[g], g, Resolve(txn, True, success), deadline, self.t),
                                     Resolved)
                except _Unreachable:
                    return
                pending.discard(g)
                if not pending:
                    done.set()

            try:
                await asyncio.gather(*(one(g) for g in parts))
            finally:
                done.set()
            if not pending:
                with contextlib.suppress(_Unreachable):
                    await _call(self.groups[rg], rg, Forget(txn), deadline + self.t.call, self.t)

        self._tasks.spawn(finish(), f"xshard-resolve-{txn[1]}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), self.t.resolve_wait)
        return dict(got)

    def _finish_later(self, txn: TxnId, rg: int, parts: tuple[int, ...], commit: bool, success: bool) -> None:
        async def finish() -> None:
            got = await _resolve_all(self.groups, txn, parts, commit, success, _now() + self.t.resolve_bound, self.t)
            if set(parts) <= set(got):
                with contextlib.suppress(_Unreachable):
                    await _call(self.groups[rg], rg, Forget(txn), _now() + self.t.call, self.t)

        self._tasks.spawn(finish(), f"xshard-resolve-{txn[1]}")

    def _answer(self, p: Plan, success: bool, answers: dict[int, Resolved]) -> kv.TxnResponse:
        header: kv.ResponseHeader | None = None
        for g in (p.record_group, *sorted(p.parts)):
            r = answers.get(g)
            if r is not None and r.response is not None:
                header = r.response.header
                break
        header = header or kv.ResponseHeader()
        full: dict[int, kv.TxnResponse] = {}
        for g, part in p.parts.items():
            r = answers.get(g)
            if r is not None and r.response is not None:
                full[g] = r.response
                continue
            blind = _blind_answer(part, success, header)
            if blind is None:
                raise ResponseLost(f"the part in group {g} was resolved elsewhere" if r is not None
                                   else f"group {g} did not answer its resolution in time")
            full[g] = blind
        return merge(p, success, full, header)

    async def close(self) -> None:
        """Stop every task of this coordinator (heartbeats, resolutions) and its recovery's."""
        await self._tasks.close()
        await self.recovery.close()


def _blind_answer(part: Part, success: bool, header: kv.ResponseHeader) -> kv.TxnResponse | None:
    """The answer of a branch of plain puts (no prev_kv), which does not depend on the store."""
    ops = part.success if success else part.failure
    out: list[kv.ResponseOp] = []
    for op in ops:
        if op.request_put is None or op.request_put.prev_kv:
            return None
        out.append(kv.ResponseOp(response_put=kv.PutResponse(header)))
    return kv.TxnResponse(header, success, tuple(out))


# ---------------------------------------------------------------------- the sweeper


class Sweeper:
    """Per member: recovers what is left in doubt in the groups it leads (see the module docstring)."""

    def __init__(self, groups: Mapping[int, GroupPort], recovery: Recovery, timeouts: Timeouts = Timeouts()) -> None:
        self.groups = groups
        self.recovery = recovery
        self.t = timeouts
        self._decided_seen: dict[TxnId, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0

    def bound(self, participants: int = MAX_TXN_GROUPS) -> float:
        """Seconds after the faults heal by which no intent or PENDING record is left."""
        t = self.t
        return t.sweep_interval + t.heartbeat_timeout + (4 + participants) * t.call

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="xshard-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.t.sweep_interval)
            try:
                self.sweep_once()
            except Exception:  # never let one bad sweep stop the sweeper
                log.warning("xshard sweep failed", exc_info=True)

    def sweep_once(self) -> int:
        """Start the recoveries one sweep finds; how many."""
        self.sweeps += 1
        now = _now()
        started = 0
        seen_decided: set[TxnId] = set()
        for g, port in sorted(self.groups.items()):
            x = port.led_state()
            if x is None:
                continue
            for txn, rg in list(x.locks()):
                self.recovery.kick(txn, rg, g)
                started += 1
            for txn, rec in list(x.records.items()):
                if rec.status == Status.PENDING:
                    self.recovery.kick(txn, g)
                    started += 1
                elif rec.status in (Status.COMMITTED, Status.ABORTED):
                    seen_decided.add(txn)
                    first = self._decided_seen.setdefault(txn, now)
                    if now - first >= self.t.decided_grace:
                        self.recovery.kick(txn, g)
                        started += 1
        self._decided_seen = {k: v for k, v in self._decided_seen.items() if k in seen_decided}
        return started
