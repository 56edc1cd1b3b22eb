"""Several Raft groups on one virtual clock, and transactions across them (machine/xshard.py).

Theory of operation
-------------------
``MultiGroupSim`` runs K groups (``GroupSim``: the single-group ``Simulation`` unchanged: real
``RaftNode`` s, the real ``StateMachine``, the driver's batching, forwarding, re-proposal after a
leader change, ReadIndex reads, the SafetyMonitor, and each group's own nemesis: partitions,
crashes with the WAL kept, pauses, lost / duplicated / delayed messages, membership changes and
leadership transfers). The groups share one ``Agenda``: each group schedules through a view that
tags its events with the group id, and this module's loop hands every event back to its group,
so the whole run is still one seeded sequence of steps.

On top run simulated clients as coroutines (generators) that yield requests to the driver:
``Call(group, command)`` proposes a command to the group's leader (any live member when none is
known; a follower forwards it inside Raft) and returns the applied ``Result``; an answer that
does not come back in ``CALL_TIMEOUT_MS`` is retried (the xshard commands are idempotent, the
once-only table keeps a re-proposed copy from applying twice); ``ReadRecord`` reads a record
group's transaction record linearizably (ReadIndex); ``Sleep`` waits on virtual time. The
client-side faults are the driver's: answers lost, commands proposed twice, and copies of
Prepares proposed again long after (late prepares).

- the coordinator (``_coordinate``) runs the protocol step by step in a seeded order (Begin
  and the Prepares in any order, Decide, the Resolves, Forget) while a heartbeat task moves
  the record's epoch; it may crash at any step (for good) or pause past the heartbeat deadline
  at any step and then go on, as a restarted coordinator would;
- a recovery (``_recover``) is what a member does on meeting a lock: read the record, wait
  ``HEARTBEAT_TIMEOUT_MS``, read it again, abort it conditionally on the epoch it saw, resolve
  the participants as decided and forget it; several may race each other and the coordinator;
- a sweeper per group (a member scanning its own intents and PENDING records) starts
  recoveries for whatever is left;
- the bank: accounts spread over the groups; transfer clients read two accounts (plain Range
  commands through the log, so locks refuse them) and transfer with compares on the
  mod_revisions read (a plain Txn when both are in one group, a cross-shard one otherwise);
  auditors read every account and validate the read with a cross-shard transaction of compares
  on all the mod_revisions: a validated sum that is not the bank's total is a violation.

Checked as the run goes: everything the single-group simulation checks, per group; a record is
decided once (never COMMITTED and ABORTED); a transaction's part is resolved at most once per
group (applied); an auditor's validated sum. After the faults heal (quiet phase: every group
healed, coordinators and recoveries finish, sweepers recover the rest) within
``quiet_bound_ms``: no intent and no PENDING record on any replica, every replica of a group at
the leader's applied index with the same store hash and the same xshard state, every committed
transaction resolved as committed in every participant and no aborted one resolved as
committed anywhere, and a final validated read equal to the total.

Rules for this module: as the rest of sim, virtual time and seeded ``random`` only.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

from conclave.kv import types as kt
from conclave.kv.command import Command
from conclave.machine import Result, StateMachine
from conclave.machine import xshard as xs
from conclave.sim.clock import Agenda, Event, EventKind
from conclave.sim.errors import InvariantBroken, SetupError, Violation
from conclave.sim.faults import FAULT_KINDS, FaultRates
from conclave.sim.history import Operation, OpStatus
from conclave.sim.network import LinkConditions
from conclave.sim.replica import Replica
from conclave.sim.simulation import SimOptions, Simulation, check_fault_kinds, check_rule

CALL_TIMEOUT_MS = 700
REFUSED_RETRY_MS = 30
HEARTBEAT_MS = 150
HEARTBEAT_TIMEOUT_MS = 800
SWEEP_MS = 300
THINK_MS = (5, 60)
INITIAL_BALANCE = 100
SETUP_MS_MAX = 5000
STEPS_MAX = 400_000  # a run that does not end in this many steps is a liveness failure
# Gentler than the single-group defaults: a transaction needs ~8 commits in a row.
MULTI_RATES = FaultRates(round_ms=40, crash=0.03, crash_before_sync=0.004, partition_start=0.04, pause=0.03,
                         membership=0.03, leader_moment_seeds=0.0)  # no figure-8 hunting: leaders never settle


@dataclass(frozen=True, slots=True)
class MultiOptions:
    groups: int = 3
    accounts_per_group: int = 3
    transfer_clients: int = 4
    auditors: int = 1
    faulty_ms: int = 4000
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    client_faults: bool = True  # answers lost, duplicated and late proposals
    coordinator_crash: float = 0.15  # per cross-shard transaction: crashes for good at a random step
    coordinator_pause: float = 0.1  # ... or pauses past the heartbeat deadline at a random step
    crash_step: int | None = None  # every client's first cross-shard transaction crashes at this step
    broken: str | None = None  # one of xshard.BROKEN_RULES
    # False: no check at each decision and resolution as it is applied, only the end-to-end ones
    # (the validated sums, atomicity at the end): to show those catch a broken rule on their own.
    check_as_applied: bool = True
    quiet_bound_ms: int = 6 * HEARTBEAT_TIMEOUT_MS + 4 * CALL_TIMEOUT_MS
    rates: FaultRates = MULTI_RATES

    def validate(self) -> None:
        if not 2 <= self.groups <= 8:
            raise SetupError(f"groups must be 2..8, not {self.groups}")
        if self.accounts_per_group < 1 or self.transfer_clients < 0 or self.auditors < 0:
            raise SetupError("need at least one account per group")
        check_rule("broken rule", self.broken, xs.BROKEN_RULES)
        check_fault_kinds(self.faults)


@dataclass(slots=True)
class MultiResult:
    seed: int
    steps: int = 0
    time_ms: int = 0
    violation: Violation | None = None
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violation is None


# ---------------------------------------------------------------------- the shared clock


@dataclass(slots=True)
class _Tagged:
    gid: int
    payload: object


class _GroupAgenda(Agenda):
    """One group's view of the shared agenda: the same clock; its events carry the group id."""

    def __init__(self, shared: Agenda, gid: int) -> None:  # no super().__init__: the queue is the shared one
        self._shared = shared
        self.gid = gid

    @property
    def now_ms(self) -> int:
        return self._shared.now_ms

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        raise AttributeError("a group's clock is the shared one")

    def schedule(self, delay_ms: int, kind: EventKind, node_id: int = 0, incarnation: int = 0,
                 payload: object = None) -> None:
        self._shared.schedule(delay_ms, kind, node_id, incarnation, _Tagged(self.gid, payload))

    def pop(self) -> Event | None:
        raise RuntimeError("a group's events are taken by the multi-group loop")


# ---------------------------------------------------------------------- one group


class GroupSim(Simulation):
    """The single-group simulation as one group of many: its events on the shared agenda, no
    random etcd clients of its own, answers and ReadIndex reads handed to the xshard clients."""

    def __init__(self, seed: int, options: SimOptions, gid: int, shared: Agenda, broken: frozenset[str],
                 trace: Callable[[str], None] | None) -> None:
        sink = None if trace is None else (lambda text: trace(f"g{gid} {text}"))
        super().__init__(seed, options, sink)
        self.agenda = _GroupAgenda(shared, gid)
        self.gid = gid
        self.broken = broken
        self.waiters: dict[int, Callable[[Result], None]] = {}  # op id -> who waits for the applied result
        self.readers: dict[int, Callable[[StateMachine], None]] = {}  # op id -> who reads the state at read index
        self.first_results: list[tuple[int, Result]] = []  # (index, result) of the first apply of each entry

    def _reset_lessor(self, r: Replica) -> None:
        # Called after every (re)start and snapshot install: the one place a fresh machine appears.
        r.machine.xshard.broken = self.broken
        super()._reset_lessor(r)

    def _applied(self, r: Replica, index: int, res: Result, first: bool) -> None:
        super()._applied(r, index, res, first)
        if first:
            self.first_results.append((index, res))

    def _answer(self, op: Operation, index: int, res: Result) -> None:
        super()._answer(op, index, res)
        waiter = self.waiters.pop(op.op_id, None)
        if waiter is not None:
            waiter(res)

    def _serve_read(self, r: Replica, op: Operation, why: str) -> None:
        reader = self.readers.pop(op.op_id, None)
        if reader is None:
            super()._serve_read(r, op, why)
            return
        self.history._finish(op, OpStatus.OK, self.step, self.agenda.now_ms)
        reader(r.machine)

    def target(self, rng: random.Random) -> Replica | None:
        """Where a client sends: the leader when one is up and running, else any live member."""
        now = self.agenda.now_ms
        live = [r for r in self._live() if not r.removed and r.paused_until_ms <= now]
        leader = self._leader()
        if leader is not None and leader in live and rng.random() < 0.85:
            return leader
        return rng.choice(live) if live else None

    def propose(self, r: Replica, cmd: Command, label: str, waiter: Callable[[Result], None]) -> bool:
        """False if ``r`` refused at once (no leader known, say)."""
        op = self.history.call(0, label, r.id, "", None, self.step, self.agenda.now_ms)
        self.waiters[op.op_id] = waiter
        self._submit(r, op, cmd)
        if op.status is not OpStatus.PENDING and op.op_id in self.waiters:
            self.waiters.pop(op.op_id, None)
            return False
        return True

    def read(self, r: Replica, reader: Callable[[StateMachine], None]) -> None:
        raft = r.raft
        assert raft is not None
        op = self.history.call(0, "xread", r.id, "", None, self.step, self.agenda.now_ms)
        ctx = f"x{op.op_id}".encode()
        self.readers[op.op_id] = reader
        r.pending_reads[ctx] = op
        if not self._refusable(lambda: raft.read_index(ctx), r, "read_index"):
            self.readers.pop(op.op_id, None)
            if r.pending_reads.pop(ctx, None) is not None:
                self.history.refuse(op, self.step, self.agenda.now_ms)

    def heal(self) -> None:
        """Every fault of this group stops (the start of Simulation's quiet phase)."""
        self.quiet = True
        self.network.heal()
        self.network.conditions = LinkConditions()
        for r in self.replicas.values():
            r.paused_until_ms = min(r.paused_until_ms, self.agenda.now_ms)
        for r in list(self.replicas.values()):
            if r.raft is None and not r.removed:
                self._start(r)


# ---------------------------------------------------------------------- what clients yield


@dataclass(frozen=True, slots=True)
class Call:
    gid: int
    cmd: Command
    attempts: list[int] = field(default_factory=lambda: [0], compare=False)  # proposals made so far


@dataclass(frozen=True, slots=True)
class ReadRecord:
    gid: int
    txn: xs.TxnId


@dataclass(frozen=True, slots=True)
class Sleep:
    ms: int


T = TypeVar("T")
Request = Call | ReadRecord | Sleep
Coroutine = Generator[Request, object, None]


@dataclass(slots=True)
class _Task:
    name: str
    gen: Coroutine
    alive: bool = True
    token: int = 0  # bumped on each resume: a stale wake-up (an old timer, a late answer) is ignored


@dataclass(slots=True)
class _Coordinator:
    txn: xs.TxnId
    plan: xs.Plan
    epoch: int = 0
    done: bool = False
    paused: bool = False


# ---------------------------------------------------------------------- the run


class MultiGroupSim:
    def __init__(self, seed: int, options: MultiOptions = MultiOptions(),
                 trace: Callable[[str], None] | None = None) -> None:
        options.validate()
        self.seed, self.options, self._trace_sink = seed, options, trace
        master = random.Random(seed)
        self.rng = random.Random(master.getrandbits(64))  # clients, coordinators, client faults
        self.agenda = Agenda()
        broken = frozenset({options.broken}) if options.broken else frozenset()
        sim_options = SimOptions(nodes=3, faults=options.faults, clients=0, rates=options.rates)
        gids = list(range(1, options.groups + 1))
        self.groups = {g: GroupSim(master.getrandbits(64), sim_options, g, self.agenda, broken, trace) for g in gids}
        splits = tuple(bytes([ord("a") + i]) for i in range(1, options.groups))
        self.shards = xs.ShardMap(splits, tuple(gids))
        self.accounts = [bytes([ord("a") + g - 1]) + b"%02d" % i
                         for g in gids for i in range(options.accounts_per_group)]
        self.total = INITIAL_BALANCE * len(self.accounts)
        self.step = 0
        self.quiet = False
        self.stats: Counter[str] = Counter()
        self._tasks: list[_Task] = []
        self._recovering: set[xs.TxnId] = set()
        self._coordinators: dict[xs.TxnId, _Coordinator] = {}
        self._txn_seq = 0
        self._decided: dict[xs.TxnId, xs.Status] = {}  # the record's first decision, per transaction
        self._resolved: dict[tuple[int, xs.TxnId], bool] = {}  # (group, txn) -> resolved as committed?
        self._participants: dict[xs.TxnId, tuple[int, ...]] = {}
        self._seen: dict[int, int] = {g: 0 for g in gids}  # group -> first results already observed

    # ------------------------------------------------------------------ running

    def run(self) -> MultiResult:
        result = MultiResult(self.seed)
        try:
            self._setup()
            for g in self.groups.values():
                g.quiet = False
                g.agenda.schedule(g.rates.round_ms, EventKind.FAULT)
            for c in range(self.options.transfer_clients):
                self._spawn(f"transfer{c}", self._transfer_client(c))
            for c in range(self.options.auditors):
                self._spawn(f"auditor{c}", self._auditor(c))
            for gid in self.groups:
                self._spawn(f"sweeper{gid}", self._sweeper(gid))
            end = self.agenda.now_ms + self.options.faulty_ms
            while self.agenda.now_ms < end:
                self._one_step()
            self._quiet_phase()
        except InvariantBroken as e:
            result.violation = Violation(self.seed, self.step, self.agenda.now_ms, e.rule, e.detail)
            self._trace(f"VIOLATION {e.rule}: {e.detail}")
        result.steps, result.time_ms = self.step, self.agenda.now_ms
        for g in self.groups.values():
            for k, v in g.stats.items():
                self.stats[f"raft_{k}"] += v
            self.stats["raft_messages"] += g.network.sent
            self.stats["raft_messages_lost"] += g.network.dropped
            self.stats["raft_messages_duplicated"] += g.network.duplicated
            self.stats["raft_leader_terms"] += len(g.monitor.leader_of_term)
        result.stats = dict(sorted(self.stats.items()))
        return result

    def _one_step(self) -> None:
        ev = self.agenda.pop()
        if ev is None:
            raise InvariantBroken("liveness", "nothing left to simulate")
        self.step += 1
        if self.step > STEPS_MAX:
            raise InvariantBroken("liveness", f"the run did not end in {STEPS_MAX} steps")
        p = ev.payload
        if isinstance(p, _Tagged):
            g = self.groups[p.gid]
            g.step = self.step
            g._handle(Event(ev.due_ms, ev.seq, ev.kind, ev.node_id, ev.incarnation, p.payload))
            self._observe(g)
        else:
            assert callable(p)
            p()

    def _setup(self) -> None:
        """Boot every group without faults and write the opening balances."""
        for g in self.groups.values():
            g.quiet = True  # the FAULT event _boot schedules is not renewed while quiet
            g._boot()
        by_group: dict[int, list[bytes]] = {}
        for k in self.accounts:
            by_group.setdefault(self.shards.group_of(k), []).append(k)
        done: set[int] = set()

        def opening(gid: int, keys: list[bytes]) -> Coroutine:
            ops = tuple(kt.RequestOp(request_put=kt.PutRequest(key=k, value=str(INITIAL_BALANCE).encode()))
                        for k in keys)
            res = yield Call(gid, kt.TxnRequest(success=ops))
            assert isinstance(res, Result) and res.error is None, res
            done.add(gid)

        for gid, keys in by_group.items():
            self._spawn(f"open{gid}", opening(gid, keys))
        while len(done) < len(by_group):
            if self.agenda.now_ms > SETUP_MS_MAX:
                raise InvariantBroken("liveness", "the opening balances were not written without faults")
            self._one_step()

    # ------------------------------------------------------------------ coroutines

    def _spawn(self, name: str, gen: Coroutine) -> _Task:
        task = _Task(name, gen)
        self._tasks.append(task)
        self.agenda.schedule(0, EventKind.CLIENT, payload=functools.partial(self._resume, task, task.token, None))
        return task

    def _resume(self, task: _Task, token: int, value: object) -> None:
        if not task.alive or token != task.token:
            return
        task.token += 1
        try:
            req = task.gen.send(value)
        except StopIteration:
            task.alive = False
            return
        wake = functools.partial(self._resume, task, task.token)
        if isinstance(req, Sleep):
            self.agenda.schedule(req.ms, EventKind.CLIENT, payload=functools.partial(wake, None))
        elif isinstance(req, Call):
            self._call(req, wake, 0)
        else:
            self._read_record(req, wake)

    def _later(self, ms: int, fn: Callable[[], None]) -> None:
        self.agenda.schedule(ms, EventKind.CLIENT, payload=fn)

    def _call(self, req: Call, wake: Callable[[object], None], attempt: int) -> None:
        """Propose ``req.cmd`` until an applied answer comes back; the first answer wins."""
        answered = [False]

        def answer(res: Result) -> None:
            if answered[0]:
                return
            if self._client_fault(0.05):
                self.stats["client_answers_lost"] += 1
                return
            answered[0] = True
            self._later(0, functools.partial(wake, res))  # never resume a client inside the group's apply

        def timeout() -> None:
            if not answered[0]:
                answered[0] = True  # later answers to this attempt are dropped: the retry owns the call
                self.stats["client_retries"] += 1
                self._call(req, wake, attempt + 1)

        g = self.groups[req.gid]
        label = f"x:{type(req.cmd).__name__}"
        req.attempts[0] += 1
        r = g.target(self.rng)
        if r is None or not g.propose(r, req.cmd, label, answer):
            self._later(REFUSED_RETRY_MS, timeout)  # nobody to take it now: try again soon
            return
        if self._client_fault(0.05):  # the same command proposed twice, through another member
            other = g.target(self.rng)
            if other is not None:
                self.stats["client_duplicates"] += 1
                g.propose(other, req.cmd, label, answer)
        self._later(CALL_TIMEOUT_MS, timeout)

    def _read_record(self, req: ReadRecord, wake: Callable[[object], None]) -> None:
        answered = [False]

        def reader(sm: StateMachine) -> None:
            if not answered[0]:
                answered[0] = True
                got = (sm.xshard.records.get(req.txn), sm.xshard.record_fenced(req.txn))
                self._later(0, functools.partial(wake, got))

        def timeout() -> None:
            if not answered[0]:
                answered[0] = True
                self._read_record(req, wake)

        g = self.groups[req.gid]
        r = g.target(self.rng)
        if r is not None:
            g.read(r, reader)
        self._later(CALL_TIMEOUT_MS, timeout)

    def _client_fault(self, p: float) -> bool:
        return self.options.client_faults and not self.quiet and self.rng.random() < p

    # ------------------------------------------------------------------ the protocol's clients

    def _coordinate(self, req: kt.TxnRequest, client: int, crash_at: int | None,
                    pause_at: int | None) -> Generator[Request, object, str]:
        """Run ``req`` across groups; returns committed / aborted / unknown / crashed."""
        plan = xs.plan(req, self.shards)
        self._txn_seq += 1
        txn = (1000 + client, self._txn_seq)
        co = _Coordinator(txn, plan)
        self._coordinators[txn] = co
        rg = plan.record_group
        self._participants[txn] = tuple(plan.parts)
        steps: list[tuple[str, int]] = [("begin", rg)] + [("prepare", g) for g in plan.parts]
        self.rng.shuffle(steps)
        steps += [("decide", rg)] + [("resolve", g) for g in plan.parts] + [("forget", rg)]
        self._spawn(f"heartbeat{txn}", self._heartbeat(co))
        terms = {g: self._term(g) for g in plan.parts}
        votes: dict[int, xs.Vote] = {}
        record: xs.Record | None = None
        paused_before_decide = False
        for i, (kind, g) in enumerate(steps):
            if i == crash_at:
                co.done = True
                self.stats[f"coordinator_crashed_at_{kind}"] += 1
                self._trace(f"coordinator {txn} crashes before {kind} {g}")
                return "crashed"
            if i == pause_at and not self.quiet:
                co.paused = True
                self.stats["coordinator_paused"] += 1
                self._trace(f"coordinator {txn} pauses before {kind} {g}")
                yield Sleep(2 * HEARTBEAT_TIMEOUT_MS + self.rng.randint(0, HEARTBEAT_TIMEOUT_MS))
                co.paused = False
                paused_before_decide = record is None
            if kind == "begin":
                res = yield Call(g, xs.Begin(txn, tuple(plan.parts)))
                rec = self._response(res, xs.Record)
                co.epoch = max(co.epoch, rec.epoch)
            elif kind == "prepare":
                cmd = xs.Prepare(txn, rg, plan.parts[g])
                if self._client_fault(0.1):  # a copy of this prepare arrives late, whatever happened since
                    self.stats["late_prepares"] += 1
                    self._later(self.rng.randint(100, 2000), functools.partial(self._late, g, cmd))
                res = yield Call(g, cmd)
                vote = self._response(res, xs.Vote)
                votes[g] = vote
                if vote.conflict is not None:
                    self._start_recovery(vote.conflict, vote.conflict_group, g)
            elif kind == "decide":
                ok = len(votes) == len(plan.parts) and all(v.ok for v in votes.values())
                success = all(v.compares_ok for v in votes.values())
                status = xs.Status.COMMITTED if ok else xs.Status.ABORTED
                decide = Call(g, xs.Decide(txn, status, success))
                res = yield decide
                record = self._response(res, xs.Record)
                if paused_before_decide:  # woke up past its deadline: a recovery may have aborted it
                    self.stats[f"paused_coordinator_decided_{record.status.name.lower()}"] += 1
                if record.status == xs.Status.FORGOTTEN:
                    co.done = True
                    # At the first proposal only a recovery's abort can have forgotten the record; after
                    # a retry our own earlier Decide may have committed it: the client cannot know.
                    return "aborted" if decide.attempts[0] == 1 else "unknown"
                if record.status == xs.Status.PENDING:
                    raise InvariantBroken("xshard", f"Decide({status.name}) of {txn} left the record PENDING")
                co.done = True
            elif kind == "resolve":
                assert record is not None
                res = yield Call(g, xs.Resolve(txn, record.status == xs.Status.COMMITTED, record.success))
                self._response(res, xs.Resolved)
            else:
                res = yield Call(g, xs.Forget(txn))
                self._response(res, type(None))
        assert record is not None
        for g, term in terms.items():  # a leader change in a group while this transaction ran
            if self._term(g) != term:
                self.stats["txns_across_a_leader_change_" + ("record_group" if g == rg else "participant")] += 1
        if record.status == xs.Status.COMMITTED:
            return "committed" if record.success else "compare_failed"
        return "aborted"

    def _term(self, gid: int) -> int:
        return max(self.groups[gid].monitor.leader_of_term, default=0)

    def _late(self, gid: int, cmd: xs.Prepare) -> None:
        g = self.groups[gid]
        r = g.target(self.rng)
        if r is not None:
            g.propose(r, cmd, "x:late", lambda res: None)

    def _heartbeat(self, co: _Coordinator) -> Coroutine:
        while not co.done:
            yield Sleep(HEARTBEAT_MS)
            if co.done or co.paused:
                continue
            res = yield Call(co.plan.record_group, xs.Heartbeat(co.txn, co.epoch))
            assert isinstance(res, Result)
            if isinstance(res.response, xs.Record):
                co.epoch = max(co.epoch, res.response.epoch)
                if res.response.status != xs.Status.PENDING:
                    return

    def _response(self, res: object, kind: type[T]) -> T:
        """The response of an applied xshard command, of the type its command gives."""
        if not isinstance(res, Result) or res.error is not None or not isinstance(res.response, kind):
            got = res.error if isinstance(res, Result) and res.error is not None else res
            raise InvariantBroken("xshard", f"expected a {kind.__name__}, got {got!r}")
        return res.response

    def _start_recovery(self, txn: xs.TxnId, record_group: int, where: int) -> None:
        if txn in self._recovering:
            if self.rng.random() < 0.2:  # sometimes a second member recovers it at the same time
                self.stats["recoveries_racing"] += 1
                self._spawn(f"recover{txn}'", self._recover(txn, record_group, where, owner=False))
            return
        self._recovering.add(txn)
        self._spawn(f"recover{txn}", self._recover(txn, record_group, where, owner=True))

    def _recover(self, txn: xs.TxnId, rg: int, where: int, owner: bool) -> Coroutine:
        try:
            self.stats["recoveries"] += 1
            got = yield ReadRecord(rg, txn)
            assert isinstance(got, tuple)
            rec, fenced = got
            if rec is None and fenced:
                yield from self._resolve_forgotten(txn, where)
                return
            if rec is None or rec.status == xs.Status.PENDING:
                seen = 0 if rec is None else rec.epoch
                yield Sleep(HEARTBEAT_TIMEOUT_MS)
                got = yield ReadRecord(rg, txn)
                assert isinstance(got, tuple)
                rec, fenced = got
                if rec is None and fenced:
                    yield from self._resolve_forgotten(txn, where)
                    return
                if rec is not None and rec.status == xs.Status.PENDING and rec.epoch != seen:
                    self.stats["recoveries_saw_heartbeat"] += 1
                    return  # the coordinator is alive
                if rec is None or rec.status == xs.Status.PENDING:
                    res = yield Call(rg, xs.Decide(txn, xs.Status.ABORTED, expect_epoch=seen))
                    rec = self._response(res, xs.Record)
                    if rec.status == xs.Status.PENDING:
                        self.stats["recoveries_saw_heartbeat"] += 1
                        return
                    if rec.status == xs.Status.FORGOTTEN:
                        yield from self._resolve_forgotten(txn, where)
                        return
                    self.stats[f"recoveries_decided_{rec.status.name.lower()}"] += 1
            commit = rec.status == xs.Status.COMMITTED
            for g in sorted(set(rec.participants) | {where}):
                res = yield Call(g, xs.Resolve(txn, commit, rec.success))
                self._response(res, xs.Resolved)
            res = yield Call(rg, xs.Forget(txn))
            self._response(res, type(None))
            self.stats["recoveries_completed"] += 1
        finally:
            if owner:
                self._recovering.discard(txn)

    def _resolve_forgotten(self, txn: xs.TxnId, where: int) -> Generator[Request, object, None]:
        # Forgotten only once every listed participant was resolved: an intent still met here is
        # a late prepare of a transaction that did not commit.
        res = yield Call(where, xs.Resolve(txn, False))
        self._response(res, xs.Resolved)
        self.stats["recoveries_of_forgotten"] += 1

    def _sweeper(self, gid: int) -> Coroutine:
        """A member of the group scans its own intents and PENDING records (its local state)."""
        g = self.groups[gid]
        while True:
            yield Sleep(SWEEP_MS)
            leader = g._leader()
            if leader is None:
                continue
            x = leader.machine.xshard
            for txn, rg in list(x.locks()):
                self._start_recovery(txn, rg, gid)
            for txn, rec in list(x.records.items()):
                if rec.status == xs.Status.PENDING:
                    self._start_recovery(txn, gid, gid)

    # ------------------------------------------------------------------ the bank

    def _read(self, keys: list[bytes]) -> Generator[Request, object, dict[bytes, tuple[int, int]] | None]:
        """Each key's (balance, mod_revision) by Range commands through the groups' logs; None when
        one meets a lock (a recovery is started, as a member that meets an intent does)."""
        out: dict[bytes, tuple[int, int]] = {}
        for k in keys:
            gid = self.shards.group_of(k)
            res = yield Call(gid, kt.RangeRequest(key=k))
            assert isinstance(res, Result)
            if isinstance(res.error, xs.Locked):
                self.stats["reads_locked"] += 1
                self._start_recovery(res.error.txn, res.error.record_group, gid)
                return None
            if res.error is not None or not isinstance(res.response, kt.RangeResponse) or not res.response.kvs:
                raise InvariantBroken("xshard", f"reading {k!r} gave {res.error or res.response!r}")
            kv = res.response.kvs[0]
            out[k] = (int(kv.value), kv.mod_revision)
        return out

    def _first_txn(self, client: int) -> bool:
        return not any(t[0] == 1000 + client for t in self._coordinators)

    def _run_txn(self, req: kt.TxnRequest, client: int) -> Generator[Request, object, str]:
        p = self.plan_groups(req)
        if len(p) == 1:
            gid = p[0]
            res = yield Call(gid, req)
            assert isinstance(res, Result)
            if isinstance(res.error, xs.Locked):
                self._start_recovery(res.error.txn, res.error.record_group, gid)
                return "locked"
            if not isinstance(res.response, kt.TxnResponse):
                raise InvariantBroken("xshard", f"a plain txn gave {res.error or res.response!r}")
            return "committed" if res.response.succeeded else "compare_failed"
        n_steps = 2 * len(p) + 3
        crash_at = pause_at = None
        if self.options.crash_step is not None and self._first_txn(client):
            crash_at = self.options.crash_step
        elif not self.quiet and self.rng.random() < self.options.coordinator_crash:
            crash_at = self.rng.randrange(n_steps + 1)
        elif not self.quiet and self.rng.random() < self.options.coordinator_pause:
            pause_at = self.rng.randrange(n_steps)
        outcome = yield from self._coordinate(req, client, crash_at, pause_at)
        return outcome

    def plan_groups(self, req: kt.TxnRequest) -> list[int]:
        return sorted(xs.plan(req, self.shards).parts)

    def _transfer_client(self, client: int) -> Coroutine:
        rng = self.rng
        while not self.quiet:
            yield Sleep(rng.randint(*THINK_MS))
            a, b = rng.sample(self.accounts, 2)
            got = yield from self._read([a, b])
            if got is None or self.quiet:
                continue
            (ba, ra), (bb, rb) = got[a], got[b]
            amount = rng.randint(1, 30)
            mod = kt.CompareTarget.MOD
            req = kt.TxnRequest(
                compare=(kt.Compare(kt.CompareResult.EQUAL, mod, a, mod_revision=ra),
                         kt.Compare(kt.CompareResult.EQUAL, mod, b, mod_revision=rb)),
                success=(kt.RequestOp(request_put=kt.PutRequest(key=a, value=str(ba - amount).encode())),
                         kt.RequestOp(request_put=kt.PutRequest(key=b, value=str(bb + amount).encode()))),
            )
            outcome = yield from self._run_txn(req, client)
            kind = "cross" if self.shards.group_of(a) != self.shards.group_of(b) else "local"
            self.stats[f"transfers_{kind}_{outcome}"] += 1
            self._trace(f"client {client} transfer {a!r}->{b!r} {amount}: {kind} {outcome}")

    def _validated_sum(self, client: int) -> Generator[Request, object, int | None]:
        """Every balance, read and then validated by a cross-shard txn of compares on their
        mod_revisions: the sum at one serializable point, or None if the validation failed."""
        got = yield from self._read(list(self.accounts))
        if got is None:
            return None
        mod = kt.CompareTarget.MOD
        req = kt.TxnRequest(compare=tuple(kt.Compare(kt.CompareResult.EQUAL, mod, k, mod_revision=got[k][1])
                                          for k in self.accounts))
        outcome = yield from self._coordinate(req, client, None, None)
        self.stats[f"audits_{outcome}"] += 1
        if outcome != "committed":
            return None
        return sum(v for v, _ in got.values())

    def _auditor(self, c: int) -> Coroutine:
        client = 500 + c
        while not self.quiet:
            yield Sleep(self.rng.randint(50, 200))
            total = yield from self._validated_sum(client)
            if total is not None:
                self._check_total(total, "an auditor's validated read")

    def _check_total(self, total: int, what: str) -> None:
        self.stats["validated_reads"] += 1
        if total != self.total:
            raise InvariantBroken("bank total", f"{what} sums the balances to {total}, not {self.total}")

    # ------------------------------------------------------------------ checks

    def _observe(self, g: GroupSim) -> None:
        """The first apply of every xshard command of ``g``: one decision per record, one resolution."""
        strict = self.options.check_as_applied
        for _, res in g.first_results:
            cmd, resp = res.command, res.response
            if isinstance(cmd, xs.Decide) and isinstance(resp, xs.Record) and resp.status in (
                    xs.Status.COMMITTED, xs.Status.ABORTED):
                was = self._decided.setdefault(cmd.txn, resp.status)
                if was != resp.status and not strict:
                    self._decided[cmd.txn] = resp.status  # the end checks judge by the last decision
                elif was != resp.status:
                    raise InvariantBroken(
                        "one commit point", f"txn {cmd.txn} was decided {was.name}, then {resp.status.name}")
            elif isinstance(cmd, xs.Resolve) and isinstance(resp, xs.Resolved) and resp.applied:
                key = (g.gid, cmd.txn)
                if key in self._resolved and strict:
                    raise InvariantBroken(
                        "resolved once", f"txn {cmd.txn}'s part in group {g.gid} was resolved twice "
                        "(a prepare landed after its resolution)")
                self._resolved[key] = cmd.commit
                if strict and cmd.commit and self._decided.get(cmd.txn) != xs.Status.COMMITTED:
                    raise InvariantBroken(
                        "atomicity", f"txn {cmd.txn} resolved as committed in group {g.gid} but its record "
                        f"says {self._decided.get(cmd.txn, 'nothing')}")
        g.first_results.clear()

    def _in_doubt(self) -> list[str]:
        out: list[str] = []
        for gid, g in self.groups.items():
            for r in g.replicas.values():
                if r.removed or r.raft is None:
                    continue
                x = r.machine.xshard
                out += [f"g{gid}/n{r.id} intent {t}" for t in x.intents]
                out += [f"g{gid}/n{r.id} PENDING {t}" for t, rec in x.records.items()
                        if rec.status == xs.Status.PENDING]
        return out

    def _caught_up(self) -> bool:
        for g in self.groups.values():
            leader = g._leader()
            if leader is None or leader.raft is None:
                return False
            target = leader.raft.commit_index
            members = leader.conf.all_nodes()
            for r in g.replicas.values():
                if r.removed or r.id not in members:  # a joiner whose addition never committed waits
                    continue
                if r.raft is None or r.machine.applied_index != target:
                    return False
        return True

    def _quiet_phase(self) -> None:
        self.quiet = True
        for g in self.groups.values():
            g.heal()
        self._trace("quiet: every fault heals; transactions in flight must end, the rest be recovered")
        start = self.agenda.now_ms
        final: list[int | None] = []

        def audit() -> Coroutine:
            while True:
                total = yield from self._validated_sum(999)
                if total is not None:
                    final.append(total)
                    return
                yield Sleep(50)

        auditing = False
        while True:
            busy = any(t.alive for t in self._tasks if not t.name.startswith("sweeper"))
            doubt = self._in_doubt()
            if not busy and not doubt and not auditing:
                auditing = True
                self._spawn("final-audit", audit())
            if final and not busy and not doubt and self._caught_up():
                break
            if self.agenda.now_ms - start > self.options.quiet_bound_ms:
                left = [t.name for t in self._tasks if t.alive and not t.name.startswith("sweeper")]
                raise InvariantBroken(
                    "in doubt", f"{self.options.quiet_bound_ms}ms after the faults healed: "
                    f"{', '.join(doubt[:6]) or 'nothing in doubt'}; still running: {', '.join(left[:6]) or '-'}; "
                    f"caught up: {self._caught_up()}")
            self._one_step()
        self.stats["quiet_ms"] = self.agenda.now_ms - start
        total = final[0]
        assert total is not None
        self._check_total(total, "the final validated read")
        self._check_atomic()
        self._check_replicas()

    def _check_atomic(self) -> None:
        for txn, status in self._decided.items():
            if status != xs.Status.COMMITTED:
                continue
            self.stats["xshard_committed"] += 1
            for g in self._participants.get(txn, ()):
                if self._resolved.get((g, txn)) is not True:
                    raise InvariantBroken(
                        "atomicity", f"txn {txn} committed but its part in group {g} was "
                        f"{'resolved as aborted' if (g, txn) in self._resolved else 'never resolved'}")
        self.stats["xshard_aborted"] = sum(1 for s in self._decided.values() if s == xs.Status.ABORTED)

    def _check_replicas(self) -> None:
        for gid, g in self.groups.items():
            seen: dict[int, tuple[int, bytes, int]] = {}
            for r in g.replicas.values():
                if r.removed or r.raft is None:
                    continue
                m = r.machine
                mine = (m.hash(), bytes(repr(m.xshard.snapshot()), "utf-8"), r.id)
                other = seen.setdefault(m.applied_index, mine)
                if other[:2] != mine[:2]:
                    raise InvariantBroken(
                        "replicas agree", f"group {gid}: nodes {other[2]} and {r.id} differ at applied index "
                        f"{m.applied_index} ({'store' if other[0] != mine[0] else 'xshard state'})")

    def _trace(self, text: str) -> None:
        if self._trace_sink is not None:
            self._trace_sink(f"{self.step:>7} {self.agenda.now_ms:>7}ms  {text}")


def run_multi(seed: int, options: MultiOptions = MultiOptions(),
              trace: Callable[[str], None] | None = None) -> MultiResult:
    return MultiGroupSim(seed, options, trace).run()


