"""The deterministic simulation: real Raft nodes, virtual time, a hostile network and disk.

Theory of operation
-------------------
One seed feeds one ``random.Random``, which seeds a separate generator for each
source of choice (network, disk, nemesis, clients, each node's election timer), so
the whole run is a function of the seed: one seed = one exact replay.

The run is a loop over events from the ``Agenda`` (see ``clock``). One event is one
*step*: a node ticks, a message arrives, an fsync completes, the nemesis acts, a
client calls or times out. After each step the affected node's ``Ready`` batches are
handled exactly as a server would (send, save, fsync, send the persisted messages,
apply, serve reads, advance), and every observation goes to the ``SafetyMonitor``
and the ``History``, which raise ``InvariantBroken`` the moment a rule breaks.

Phases: a faulty phase of ``steps`` steps, in which the nemesis partitions (also one-way), crashes
(also between save and fsync), pauses, drops, duplicates, delays and reorders, and
changes membership; then a quiet phase in which every fault heals and a leader must be
elected and commit a probe write within ``quiet_ms`` of virtual time (liveness), and
every acknowledged write must be in that leader's state machine (durability); last,
the whole client history goes through ``conclave.verify``'s linearizability checker.

Rules for this module: it may use ``random`` but never a real clock, thread, socket
or the OS; anything the Raft core raises that is not a ``RaftError`` on a call that
may refuse is a found bug and becomes a ``Violation`` with the seed and the step.
"""

from __future__ import annotations

import random
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from conclave.raft.errors import CompactionError, RaftError
from conclave.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    ConfState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
)
from conclave.sim.clock import Agenda, Event, EventKind
from conclave.sim.errors import InvariantBroken, SetupError, Violation
from conclave.sim.faults import FAULT_KINDS, FAULT_RULES, FaultRates
from conclave.sim.history import History, Operation, OpKind, OpStatus
from conclave.sim.invariants import SafetyMonitor
from conclave.sim.machine import carries_value
from conclave.sim.network import LinkConditions, Network
from conclave.sim.replica import Replica
from conclave.verify.checker import Limits, Verdict, check_operations
from conclave.verify.model import KeyValue

CLUSTER_SIZES = (3, 5, 7)
TICK_MS = 10
ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
WRITE_TIMEOUT_MS = 500
READ_TIMEOUT_MS = 300
CLIENT_THINK_MS = (2, 30)
DISK_SYNC_MS = (0, 0, 1, 2, 4)
COMPACT_EVERY_ENTRIES = 8  # small, so lagging and new nodes often need InstallSnapshot
MAX_SIZE_PER_MSG_CHOICES = (1, 1, 1, 200, 1024 * 1024)
MAX_INFLIGHT_CHOICES = (1, 2, 8, 256)
READY_LOOP_MAX = 1000
LINEARIZABILITY_POLLS_MAX = 2000  # search slices (64 configurations each) before the check gives up
QUIET_STEPS_MAX = 50_000  # a message storm that never lets virtual time advance is a liveness failure too

T = TypeVar("T")

# Events addressed to one node, which a paused node defers.
_NODE_EVENTS = frozenset({EventKind.TICK, EventKind.DELIVER, EventKind.SYNC_DONE, EventKind.REPORT})


@dataclass(frozen=True, slots=True)
class SimOptions:
    nodes: int = 3
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    steps: int = 3000
    fault_rule: str | None = None
    clients: int = 3
    quiet_ms: int = 3000
    check_persistence_rule: bool = True
    # False: joiners start with no configuration at all. The core then never learns one
    # by log replay, and a joiner holding the longest log can block every election
    # (a liveness bug, tests/sim/test_sim_core_findings.py).
    joiners_know_bootstrap: bool = True
    rates: FaultRates = FaultRates()

    def validate(self) -> None:
        if self.nodes not in CLUSTER_SIZES:
            raise SetupError(f"--nodes must be one of {', '.join(map(str, CLUSTER_SIZES))}, not {self.nodes}")
        if self.steps < 1:
            raise SetupError(f"--steps must be at least 1, not {self.steps}")
        if self.fault_rule is not None and self.fault_rule not in FAULT_RULES:
            raise SetupError(f"unknown fault rule {self.fault_rule!r}; choose from {', '.join(FAULT_RULES)}")
        unknown = self.faults - set(FAULT_KINDS)
        if unknown:
            raise SetupError(f"unknown fault kinds {sorted(unknown)}")


@dataclass(slots=True)
class SimResult:
    seed: int
    steps: int = 0
    time_ms: int = 0
    violation: Violation | None = None
    ops: dict[str, int] = field(default_factory=dict)
    leader_terms: int = 0
    commit_index: int = 0
    stats: dict[str, int] = field(default_factory=dict)  # how often each fault and mechanism occurred

    @property
    def ok(self) -> bool:
        return self.violation is None


class Simulation:
    def __init__(self, seed: int, options: SimOptions = SimOptions(), trace: Callable[[str], None] | None = None):
        options.validate()
        self.seed = seed
        self.options = options
        self.rates = options.rates
        self._trace_sink = trace
        master = random.Random(seed)
        self._net_rng = random.Random(master.getrandbits(64))
        self._disk_rng = random.Random(master.getrandbits(64))
        self._nemesis_rng = random.Random(master.getrandbits(64))
        self._client_rng = random.Random(master.getrandbits(64))
        self._node_rng = random.Random(master.getrandbits(64))
        # Flow-control limits vary by seed: one entry per message and a tiny in-flight
        # window make followers acknowledge old-term entries apart from the new leader's
        # first entry, which is what the figure-8 commitment rule is about.
        self._max_size_per_msg = master.choice(MAX_SIZE_PER_MSG_CHOICES)
        self._max_inflight_msgs = master.choice(MAX_INFLIGHT_CHOICES)
        # Half of the seeds hunt figure 8 by cutting leaders off at their first append and
        # commit; the other half let leaders settle, for long logs and snapshots.
        self._hunt_leader_moments = master.random() < self.rates.leader_moment_seeds
        self.agenda = Agenda()
        self.network = Network(self._net_rng)
        self.monitor = SafetyMonitor(options.check_persistence_rule)
        self.history = History()
        self.replicas: dict[int, Replica] = {}
        self.step = 0
        self.quiet = False
        self._next_node_id = options.nodes + 1
        self._partition_until_ms = 0
        self._membership_after_ms = 0
        self._value_seq = 0
        self._bootstrap = ConfState(voters=frozenset(range(1, options.nodes + 1)))
        self._client_op: dict[int, Operation] = {}
        self.stats: Counter[str] = Counter()
        self._configs_seen: set[ConfState] = set()
        self._applied_step: dict[bytes, int] = {}  # value -> step at which a replica first applied it

    # -- running ---------------------------------------------------------------------

    def run(self) -> SimResult:
        result = SimResult(self.seed)
        try:
            self._boot()
            while self.step < self.options.steps:
                self._handle(self._next_event())
            self._quiet_phase()
        except InvariantBroken as e:
            result.violation = Violation(self.seed, self.step, self.agenda.now_ms, e.rule, e.detail)
            self._trace(f"VIOLATION {e.rule}: {e.detail}")
        result.steps = self.step
        result.time_ms = self.agenda.now_ms
        result.ops = self.history.counts()
        result.leader_terms = len(self.monitor.leader_of_term)
        result.commit_index = self.monitor.commit_max
        self.stats["configurations"] = len(self._configs_seen)
        self.stats["messages"] = self.network.sent
        self.stats["messages_lost"] = self.network.dropped
        self.stats["messages_duplicated"] = self.network.duplicated
        result.stats = dict(sorted(self.stats.items()))
        return result

    def _next_event(self) -> Event:
        ev = self.agenda.pop()
        if ev is None:  # ticks reschedule themselves, so this means every node is gone
            raise InvariantBroken("liveness", "nothing left to simulate: every node is down or removed")
        self.step += 1
        return ev

    def _boot(self) -> None:
        voters = sorted(self._bootstrap.voters)
        self._trace(
            f"boot seed={self.seed} nodes={voters} faults={sorted(self.options.faults)}"
            f" rule={self.options.fault_rule or '-'} max_size_per_msg={self._max_size_per_msg}"
            f" max_inflight_msgs={self._max_inflight_msgs} leader_moments={self._hunt_leader_moments}"
        )
        for nid in voters:
            self._add_replica(nid, self._bootstrap)
        self.agenda.schedule(self.rates.round_ms, EventKind.FAULT)
        for c in range(1, self.options.clients + 1):
            self.agenda.schedule(self._client_rng.randint(*CLIENT_THINK_MS), EventKind.CLIENT, payload=c)

    def _add_replica(self, nid: int, bootstrap: ConfState | None) -> Replica:
        faults = frozenset({self.options.fault_rule}) if self.options.fault_rule else frozenset()
        config = Config(
            id=nid,
            election_tick=ELECTION_TICKS,
            heartbeat_tick=HEARTBEAT_TICKS,
            max_size_per_msg=self._max_size_per_msg,
            max_inflight_msgs=self._max_inflight_msgs,
            faults=faults,
        )
        r = Replica(config, bootstrap)
        self.replicas[nid] = r
        self._start(r)
        return r

    def _start(self, r: Replica) -> None:
        commit = self._core(lambda: r.start(random.Random(self._node_rng.getrandbits(64))), r.id, "start")
        self.monitor.reset_node(r.id, commit)
        self._trace(
            f"node {r.id} starts: term={r.raft.term if r.raft else '?'} log={r.log.base_index}+"
            f"{len(r.log.entries)} commit={commit} conf={_conf(r.conf)}"
        )
        # A random phase so nodes do not tick in lockstep.
        self.agenda.schedule(self._node_rng.randint(1, TICK_MS), EventKind.TICK, r.id, r.incarnation)
        self._process(r)

    def _handle(self, ev: Event) -> None:
        kind = ev.kind
        if kind in _NODE_EVENTS and self._defer_while_paused(ev):
            return
        if kind == EventKind.TICK:
            r = self.replicas[ev.node_id]
            if r.raft is None or ev.incarnation != r.incarnation:
                return
            self._core(r.raft.tick, r.id, "tick")
            self.agenda.schedule(TICK_MS, EventKind.TICK, r.id, r.incarnation)
            self._process(r)
        elif kind == EventKind.DELIVER:
            assert isinstance(ev.payload, Message)
            self._deliver(ev.payload)
        elif kind == EventKind.SYNC_DONE:
            r = self.replicas[ev.node_id]
            rd = r.syncing
            if r.raft is None or ev.incarnation != r.incarnation or rd is None:
                return
            r.disk.sync()
            r.syncing = None
            self._trace(f"node {r.id} fsync done")
            self._finish_ready(r, rd)
            self._process(r)
        elif kind == EventKind.FAULT:
            if not self.quiet:
                self._nemesis()
                self.agenda.schedule(self.rates.round_ms, EventKind.FAULT)
        elif kind == EventKind.CLIENT:
            if isinstance(ev.payload, Operation):
                self._client_timeout(ev.payload)
            else:
                assert isinstance(ev.payload, int)
                self._client_call(ev.payload)
        elif kind == EventKind.REPORT:
            self._report(ev)
        elif kind == EventKind.RESTART:
            r = self.replicas[ev.node_id]
            if r.raft is None and not r.removed and ev.incarnation == r.incarnation:
                self._start(r)

    def _defer_while_paused(self, ev: Event) -> bool:
        """A paused process (GC pause, SIGSTOP) handles nothing until it resumes: its timer
        fires once on resume, and what arrived meanwhile waits in its socket buffer."""
        nid = ev.payload.to if isinstance(ev.payload, Message) and ev.kind == EventKind.DELIVER else ev.node_id
        r = self.replicas.get(nid)
        if r is None or r.paused_until_ms <= self.agenda.now_ms:
            return False
        self.agenda.schedule(r.paused_until_ms - self.agenda.now_ms, ev.kind, ev.node_id, ev.incarnation, ev.payload)
        return True

    def _core(self, call: Callable[[], T], node: int, what: str, refusable: bool = False) -> T:
        """Run a call into the Raft core. Whatever escapes it is a found bug, except a
        ``RaftError`` from a request the core may refuse (``refusable``), re-raised as is."""
        try:
            return call()
        except InvariantBroken:
            raise
        except Exception as e:  # every escape from the core is a finding, whatever its type
            if refusable and isinstance(e, RaftError):
                raise
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise InvariantBroken(
                "core failure",
                f"node {node} {what} raised {type(e).__name__}: {e} (at {where.filename}:{where.lineno})",
            ) from e

    # -- the driver loop of one node ------------------------------------------------------

    def _process(self, r: Replica) -> None:
        loops = 0
        while r.raft is not None and r.syncing is None and r.raft.has_ready():
            loops += 1
            if loops > READY_LOOP_MAX:
                raise InvariantBroken("liveness", f"node {r.id} keeps producing Ready batches ({loops} in one step)")
            rd = self._core(r.raft.ready, r.id, "ready")
            self._handle_ready(r, rd)
        if r.raft is not None:
            self.monitor.observe_role(r.id, r.raft.term, r.raft.role == Role.LEADER)

    def _handle_ready(self, r: Replica, rd: Ready) -> None:
        assert r.raft is not None
        if rd.soft_state is not None and rd.soft_state.role != r.role:
            self._trace(
                f"node {r.id} becomes {rd.soft_state.role.name} in term {r.raft.term}"
                f" (leader {rd.soft_state.leader or '-'})"
            )
            r.role = rd.soft_state.role
            if r.role != Role.LEADER:
                self.monitor.observe_not_leader(r.id)
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            r.log.install(meta.index, meta.term)
        if rd.entries:
            self.monitor.observe_write(r.id, r.log, rd.entries)
            if r.role == Role.LEADER:
                self._leader_moment(r, "appends")
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            self.monitor.observe_leader_log(r.id, r.raft.term, r.log)
        if rd.hard_state is not None:
            before = self.monitor.commit_max
            self.monitor.observe_commit(r.id, r.log, rd.hard_state.commit, rd.hard_state.term)
            if self.monitor.commit_max > before:
                self._trace(f"node {r.id} commits up to {rd.hard_state.commit} (first to know {before + 1}..)")
                if r.role == Role.LEADER:
                    self._leader_moment(r, "commits")
        self._send(r, rd.messages)
        if rd.must_sync():
            r.disk.save(rd.hard_state, rd.entries, rd.snapshot)
            if self._faulty("crash") and self._disk_rng.random() < self.rates.crash_before_sync:
                self._trace(f"node {r.id} crashes between save and fsync")
                self.stats["crashes_before_fsync"] += 1
                self._crash(r)
                return
            delay = self._disk_rng.choice(DISK_SYNC_MS)
            if delay:
                r.syncing = rd
                self.agenda.schedule(delay, EventKind.SYNC_DONE, r.id, r.incarnation)
                return
            r.disk.sync()
        self._finish_ready(r, rd)

    def _finish_ready(self, r: Replica, rd: Ready) -> None:
        raft = r.raft
        assert raft is not None
        self._send(r, rd.persisted_messages)
        if rd.snapshot is not None and rd.snapshot.meta.index > r.machine.applied_index:
            meta = rd.snapshot.meta
            self.monitor.observe_restore(r.id, meta.index, rd.snapshot.data)
            r.machine.restore(meta.index, rd.snapshot.data)
            self._trace(f"node {r.id} installs snapshot at {meta.index} (term {meta.term})")
            self.stats["snapshots_installed"] += 1
        for e in rd.committed:
            self.monitor.observe_apply(r.id, e)
            r.machine.apply(e)
            if carries_value(e):
                self._applied_step.setdefault(e.data, self.step)
                op = r.pending_writes.pop(e.data, None)
                if op is not None:
                    # The value's place in the list, which an earlier copy of the same
                    # proposal (or a snapshot holding it) may have fixed before this entry.
                    position = r.machine.position[e.data]
                    self.history.acknowledge_write(op, e.index, position, self.step, self.agenda.now_ms)
                    self._trace(f"client {op.client} <- ok write {e.data.decode()} at position {position}")
        if rd.committed:
            self._trace(f"node {r.id} applied up to {r.machine.applied_index}")
        for rs in rd.read_states:
            op = r.pending_reads.pop(rs.context, None)
            if op is not None:
                r.waiting_reads.append((rs.index, op))
        self._core(lambda: raft.advance(rd), r.id, "advance")
        self._serve_reads(r)
        if raft.conf_state != r.conf:
            self._conf_applied(r, raft.conf_state)
        if r.raft is not None and r.machine.applied_index - r.log.base_index >= COMPACT_EVERY_ENTRIES:
            self._compact(r)

    def _serve_reads(self, r: Replica) -> None:
        if not r.waiting_reads:
            return
        applied = r.machine.applied_index
        still: list[tuple[int, Operation]] = []
        for index, op in r.waiting_reads:
            if index > applied:
                still.append((index, op))
                continue
            length = len(r.machine.values)
            self._trace(f"client {op.client} <- ok read length {length} (read index {index}, applied {applied})")
            self.history.return_read(op, applied, length, self.step, self.agenda.now_ms)
        r.waiting_reads = still

    def _compact(self, r: Replica) -> None:
        raft = r.raft
        assert raft is not None
        index, image = r.machine.applied_index, r.machine.image()
        try:
            snap: Snapshot = self._core(lambda: raft.compact(index, image), r.id, "compact", refusable=True)
        except RaftError as e:
            if not isinstance(e, CompactionError):
                raise InvariantBroken("core failure", f"node {r.id} compact({index}) raised {e!r}") from e
            # The core may already hold a newer snapshot the driver has not been handed yet
            # (one arrived while the previous Ready was being synced): nothing to do.
            self._trace(f"node {r.id} does not compact: {e}")
            return
        r.disk.save(None, (), snap)
        r.disk.sync()
        r.log.install(snap.meta.index, snap.meta.term)
        self._trace(f"node {r.id} compacts its log up to {index}")
        self.stats["compactions"] += 1

    def _send(self, r: Replica, msgs: Sequence[Message]) -> None:
        for m in msgs:
            self.monitor.observe_send(r.id, m, r.disk, r.log)
            delays = self.network.transmit(m.frm, m.to)
            if self._trace_sink is not None:
                fate = "lost" if not delays else ("dup " if len(delays) > 1 else "") + f"+{delays[0]}ms"
                self._trace(f"send {_msg(m)} [{fate}]")
            for d in delays:
                self.agenda.schedule(d, EventKind.DELIVER, payload=m)
            if not delays and m.type == MessageType.SNAP:
                self._report_snapshot(m, failed=True)

    def _deliver(self, m: Message) -> None:
        r = self.replicas.get(m.to)
        if r is None or r.raft is None or not self.network.link_open(m.frm, m.to):
            self._trace(f"drop {_msg(m)} ({'node down' if r is None or r.raft is None else 'link cut'})")
            if m.type == MessageType.SNAP:
                self._report_snapshot(m, failed=True)
            return
        self._trace(f"recv {_msg(m)}")
        raft = r.raft
        self._core(lambda: raft.step(m), r.id, f"step({m.type.name})")
        self._process(r)
        if m.type == MessageType.SNAP:
            self._report_snapshot(m, failed=False)

    def _report_snapshot(self, m: Message, failed: bool) -> None:
        """Tell the sender how its snapshot send went, a moment later, as a real transport would."""
        s = self.replicas.get(m.frm)
        if s is not None and s.raft is not None:
            status = Message(MessageType.SNAP_STATUS, to=m.frm, frm=m.to, term=0, reject=failed)
            self.agenda.schedule(1, EventKind.REPORT, s.id, s.incarnation, status)

    def _report(self, ev: Event) -> None:
        s = self.replicas[ev.node_id]
        raft = s.raft
        if raft is None or ev.incarnation != s.incarnation:
            return
        assert isinstance(ev.payload, Message)
        status = ev.payload
        self._trace(f"node {s.id} hears its snapshot to {status.frm} {'failed' if status.reject else 'arrived'}")
        self._core(lambda: raft.step(status), s.id, "step(SNAP_STATUS)")
        self._process(s)

    # -- crashes and membership -----------------------------------------------------------

    def _crash(self, r: Replica) -> None:
        """Power off; unless the node was removed, it comes back after a random pause."""
        for op in r.crash():
            self.history.give_up(op, self.step, self.agenda.now_ms)
        self.monitor.reset_node(r.id, 0)
        self._trace(
            f"node {r.id} CRASH (disk keeps term={r.disk.durable.hard_state.term}"
            f" vote={r.disk.durable.hard_state.vote} entries<={_disk_last(r)})"
        )
        self.stats["crashes" if not r.removed else "removals"] += 1
        if not r.removed:
            down_ms = self._nemesis_rng.randint(*self.rates.crash_down_ms) if not self.quiet else 0
            self.agenda.schedule(down_ms, EventKind.RESTART, r.id, r.incarnation)

    def _conf_applied(self, r: Replica, conf: ConfState) -> None:
        gone = r.conf.all_nodes() - conf.all_nodes()
        self._trace(f"node {r.id} applies conf {_conf(conf)}")
        r.conf = conf
        self._configs_seen.add(conf)
        # A removed node learns it is out and shuts down, never to return (ids are not reused).
        for nid in sorted(gone):
            x = self.replicas.get(nid)
            if x is None or x.removed:
                continue
            x.removed = True
            self._trace(f"node {nid} is removed from the cluster and shuts down")
            if x.raft is not None:
                self._crash(x)

    def _leader(self) -> Replica | None:
        """The live leader of the highest term, if any (a deposed one may not know it yet)."""
        best: Replica | None = None
        best_term = -1
        for r in self.replicas.values():
            if r.raft is not None and r.raft.role == Role.LEADER and r.raft.term > best_term:
                best, best_term = r, r.raft.term
        return best

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.raft is not None]

    # -- the nemesis ----------------------------------------------------------------------

    def _faulty(self, kind: str) -> bool:
        return not self.quiet and kind in self.options.faults

    def _nemesis(self) -> None:
        rng, rates, now = self._nemesis_rng, self.rates, self.agenda.now_ms
        ids = sorted(nid for nid, r in self.replicas.items() if not r.removed)
        if self._faulty("partition"):
            if self.network.partitioned and now >= self._partition_until_ms:
                self.network.heal()
                self._trace("nemesis: partition heals")
            elif not self.network.partitioned and rng.random() < rates.partition_start:
                self._partition(ids)
                self._partition_until_ms = now + rng.randint(*rates.partition_ms)
        if self._faulty("crash") and rng.random() < rates.crash:
            up = [nid for nid in ids if self.replicas[nid].raft is not None]
            leader = self._leader()
            limit = len(ids) - 1 if rng.random() < rates.crash_majority_allowed else (len(ids) - 1) // 2
            if up and len(ids) - len(up) < limit:
                pick_leader = leader is not None and rng.random() < rates.crash_leader_bias
                victim = leader.id if pick_leader and leader is not None else rng.choice(up)
                self._crash(self.replicas[victim])
        wire = [k for k in ("drop", "dup", "reorder") if self._faulty(k)]
        if wire and rng.random() < rates.wire_change:
            c = self.network.conditions
            self.network.conditions = LinkConditions(
                latency_min_ms=1,
                latency_max_ms=rng.choice(rates.latency_max_ms) if "reorder" in wire else c.latency_max_ms,
                drop_rate=rng.choice(rates.drop_rates) if "drop" in wire else 0.0,
                dup_rate=rng.choice(rates.dup_rates) if "dup" in wire else 0.0,
            )
            n = self.network.conditions
            self._trace(f"nemesis: wire drop={n.drop_rate} dup={n.dup_rate} latency=1..{n.latency_max_ms}ms")
        if self._faulty("pause") and rng.random() < rates.pause:
            running = [self.replicas[nid] for nid in ids if self.replicas[nid].raft is not None]
            running = [r for r in running if r.paused_until_ms <= now]
            leader = self._leader()
            if running:
                pick_leader = leader is not None and leader in running and rng.random() < rates.pause_leader_bias
                r = leader if pick_leader and leader is not None else rng.choice(running)
                r.paused_until_ms = now + rng.randint(*rates.pause_ms)
                self._trace(f"nemesis: pause node {r.id} until {r.paused_until_ms}ms")
                self.stats["pauses"] += 1
        if self._faulty("membership") and now >= self._membership_after_ms and rng.random() < rates.membership:
            self._change_membership()

    def _leader_moment(self, leader: Replica, moment: str) -> None:
        """Sometimes cut a leader off as it appends or commits (most often the first time
        in its term), swallowing what it has in flight; whatever partition was there gives way.

        Cut off as it first appends, a new leader leaves a divergent higher-term tail
        behind; cut off as it first commits, it leaves a commitment only a bare majority
        knows of. Together they build the logs of Raft's figure 8, where a wrong
        commitment rule loses a committed entry.
        """
        raft = leader.raft
        assert raft is not None
        if not self._hunt_leader_moments or not self._faulty("partition"):
            return
        first = leader.moments.get(moment, 0) < raft.term
        leader.moments[moment] = raft.term
        rates = self.rates
        if moment == "appends":
            chance = rates.isolate_on_first_append if first else rates.isolate_on_append
        else:
            chance = rates.isolate_on_first_commit if first else rates.isolate_on_commit
        if self._nemesis_rng.random() < chance:
            self.network.heal()
            self.network.isolate(leader.id, sorted(self.replicas))
            self._partition_until_ms = self.agenda.now_ms + self._nemesis_rng.randint(*self.rates.partition_ms)
            when = "first " if first else ""
            self._trace(f"nemesis: isolate leader {leader.id} as it {when}{moment} in term {raft.term}")
            self.stats["partitions"] += 1

    def _partition(self, ids: list[int]) -> None:
        rng = self._nemesis_rng
        shape = rng.random()
        leader = self._leader()
        if shape < 0.4:
            victim = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
            self.network.isolate(victim, ids)
            self._trace(f"nemesis: isolate node {victim}")
            self.stats["partitions"] += 1
        elif shape < 0.7:
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            groups = [sorted(shuffled[:cut]), sorted(shuffled[cut:])]
            self.network.partition(groups)
            self._trace(f"nemesis: partition {groups[0]} | {groups[1]}")
            self.stats["partitions"] += 1
        else:
            links = [(a, b) for a in ids for b in ids if a != b]
            chosen = rng.sample(links, rng.randint(1, min(3, len(links))))
            for a, b in chosen:
                self.network.cut(a, b)
            self._trace(f"nemesis: one-way cuts {sorted(chosen)}")
            self.stats["partitions"] += 1

    def _change_membership(self) -> None:
        rng = self._nemesis_rng
        leader = self._leader()
        if leader is None or leader.raft is None:
            return
        conf = leader.conf
        if conf.joint:
            if not conf.auto_leave:  # an explicit joint change waits for the leave to be proposed
                leader_raft = leader.raft
                self._trace(f"nemesis: propose leaving the joint configuration via node {leader.id}")
                self.stats["conf_changes_proposed"] += 1
                self._refusable(lambda: leader_raft.propose_conf_change(ConfChange()), leader, "leave joint")
                self._membership_after_ms = self.agenda.now_ms + self.rates.membership_gap_ms
            return
        voters, learners = sorted(conf.voters), sorted(conf.learners)
        n = self.options.nodes
        choices: list[str] = ["transfer"] if len(voters) > 1 else []
        if len(voters) > max(2, n - 1):
            choices.append("remove_voter")
        if len(voters) < n + 1:
            choices.append("add_voter")
            if not learners:
                choices.append("add_learner")
        if learners:
            choices += ["promote", "remove_learner"]
        if len(voters) >= 3:
            choices.append("replace")
        if not choices:
            return
        what = rng.choice(choices)
        raft = leader.raft
        changes: tuple[ConfChangeSingle, ...]
        transition = ConfChangeTransition.AUTO
        if what == "transfer":
            target = rng.choice([v for v in voters if v != leader.id])
            self._trace(f"nemesis: transfer leadership {leader.id} -> {target}")
            self.stats["transfers"] += 1
            self._refusable(lambda: raft.transfer_leadership(target), leader, "transfer")
            self._membership_after_ms = self.agenda.now_ms + self.rates.membership_gap_ms
            return
        if what == "remove_voter":
            changes = (ConfChangeSingle(ConfChangeType.REMOVE_NODE, rng.choice(voters)),)
        elif what == "remove_learner":
            changes = (ConfChangeSingle(ConfChangeType.REMOVE_NODE, rng.choice(learners)),)
        elif what == "promote":
            changes = (ConfChangeSingle(ConfChangeType.ADD_VOTER, rng.choice(learners)),)
        else:
            new_id = self._next_node_id
            self._next_node_id += 1
            # A joiner starts with an empty log and disk. By default it is told the cluster's
            # founding configuration (the log's conf changes are deltas from it), as
            # etcd's --initial-cluster does; without it the core can only learn the
            # configuration from a snapshot (see SimOptions.joiners_know_bootstrap).
            self._add_replica(new_id, self._bootstrap if self.options.joiners_know_bootstrap else None)
            if what == "add_learner":
                changes = (ConfChangeSingle(ConfChangeType.ADD_LEARNER, new_id),)
            elif what == "add_voter":
                changes = (ConfChangeSingle(ConfChangeType.ADD_VOTER, new_id),)
            else:  # replace one voter by a new one: two changes at once go through joint consensus
                changes = (
                    ConfChangeSingle(ConfChangeType.ADD_VOTER, new_id),
                    ConfChangeSingle(ConfChangeType.REMOVE_NODE, rng.choice(voters)),
                )
                transition = rng.choice((ConfChangeTransition.JOINT_IMPLICIT, ConfChangeTransition.JOINT_EXPLICIT))
        cc = ConfChange(changes, transition)
        self.stats["conf_changes_proposed"] += 1
        self._trace(
            f"nemesis: propose conf change via node {leader.id}: "
            + ", ".join(f"{c.type.name} {c.node_id}" for c in changes)
        )
        if leader.raft is not None:
            self._refusable(lambda: raft.propose_conf_change(cc), leader, "conf change")
        self._membership_after_ms = self.agenda.now_ms + self.rates.membership_gap_ms

    def _refusable(self, call: Callable[[], object], r: Replica, what: str) -> bool:
        """Call into the core where a refusal (``RaftError``) is a normal answer; False if refused."""
        try:
            self._core(call, r.id, what, refusable=True)
        except RaftError as e:
            self._trace(f"node {r.id} refuses {what}: {e}")
            return False
        self._process(r)
        return True

    # -- clients --------------------------------------------------------------------------

    def _client_call(self, client: int) -> None:
        if self.quiet:
            return
        rng = self._client_rng
        self.agenda.schedule(rng.randint(*CLIENT_THINK_MS), EventKind.CLIENT, payload=client)
        busy = self._client_op.get(client)
        now = self.agenda.now_ms
        live = [r for r in self._live() if not r.removed and r.paused_until_ms <= now]
        if (busy is not None and busy.status is OpStatus.PENDING) or not live:
            return
        leader = self._leader()
        r = leader if leader is not None and leader in live and rng.random() < 0.5 else rng.choice(live)
        if rng.random() < 0.7:
            self._client_op[client] = self._write(r, client, WRITE_TIMEOUT_MS)
        else:
            self._client_op[client] = self._read(r, client)

    def _write(self, r: Replica, client: int, timeout_ms: int) -> Operation:
        self._value_seq += 1
        value = f"c{client}.{self._value_seq}".encode()
        op = self.history.call(client, OpKind.WRITE, r.id, value, self.step, self.agenda.now_ms)
        self._trace(f"client {client} -> write {value.decode()} via node {r.id}")
        raft = r.raft
        assert raft is not None
        r.pending_writes[value] = op
        if not self._refusable(lambda: raft.propose(value), r, "propose"):
            if r.pending_writes.pop(value, None) is not None:
                self.history.refuse(op, self.step, self.agenda.now_ms)
        elif op.status is OpStatus.PENDING:
            self.agenda.schedule(timeout_ms, EventKind.CLIENT, payload=op)
        return op

    def _read(self, r: Replica, client: int) -> Operation:
        op = self.history.call(client, OpKind.READ, r.id, b"", self.step, self.agenda.now_ms)
        ctx = f"r{op.op_id}".encode()
        self._trace(f"client {client} -> read via node {r.id} (ctx {ctx.decode()})")
        raft = r.raft
        assert raft is not None
        r.pending_reads[ctx] = op
        if not self._refusable(lambda: raft.read_index(ctx), r, "read_index"):
            if r.pending_reads.pop(ctx, None) is not None:
                self.history.refuse(op, self.step, self.agenda.now_ms)
        elif op.status is OpStatus.PENDING:
            self.agenda.schedule(READ_TIMEOUT_MS, EventKind.CLIENT, payload=op)
        return op

    def _client_timeout(self, op: Operation) -> None:
        if op.status is not OpStatus.PENDING:
            return
        r = self.replicas[op.node]
        if op.kind is OpKind.WRITE:
            r.pending_writes.pop(op.value, None)
        r.pending_reads = {k: v for k, v in r.pending_reads.items() if v is not op}
        r.waiting_reads = [(i, w) for i, w in r.waiting_reads if w is not op]
        self.history.give_up(op, self.step, self.agenda.now_ms)
        self._trace(f"client {op.client} <- timeout op {op.op_id}")

    # -- the quiet phase: liveness and durability -------------------------------------------

    def _quiet_phase(self) -> None:
        self.quiet = True
        self.network.heal()
        self.network.conditions = LinkConditions()
        for r in self.replicas.values():
            r.paused_until_ms = min(r.paused_until_ms, self.agenda.now_ms)
        self._trace("quiet: every fault heals; a leader must commit a probe write")
        for r in list(self.replicas.values()):
            if r.raft is None and not r.removed:
                self._start(r)
        start_ms, start_step = self.agenda.now_ms, self.step
        probe: Operation | None = None
        while probe is None or probe.status is not OpStatus.OK:
            leader = self._leader()
            stale = probe is None or probe.status is not OpStatus.PENDING or probe.node != (leader and leader.id)
            if leader is not None and stale:
                if probe is not None and probe.status is OpStatus.PENDING:
                    self._client_timeout(probe)
                probe = self._write(leader, 0, self.options.quiet_ms)
                if probe.status is OpStatus.OK:
                    break
            if self.agenda.now_ms - start_ms > self.options.quiet_ms or self.step - start_step > QUIET_STEPS_MAX:
                roles = ", ".join(
                    f"{r.id}:{r.raft.role.name}/t{r.raft.term}" if r.raft else f"{r.id}:down"
                    for r in self.replicas.values()
                    if not r.removed
                )
                raise InvariantBroken(
                    "liveness",
                    f"{'no leader elected' if leader is None else 'no probe write committed'} within "
                    f"{self.options.quiet_ms}ms after every fault healed (nodes {roles})",
                )
            self._handle(self._next_event())
        leader = self.replicas[probe.node]
        self._trace(f"quiet: leader {leader.id} committed the probe after {self.agenda.now_ms - start_ms}ms")
        values = leader.machine.values
        for op in self.history.acknowledged_writes():
            if op.length > len(values) or values[op.length - 1] != op.value:
                raise InvariantBroken(
                    "durability",
                    f"acknowledged {op.describe()} is not at position {op.length} of leader {leader.id}'s list",
                )
        self._check_linearizable()

    def _check_linearizable(self) -> None:
        """The whole client history, writes and reads, must have a linearization (verify's checker)."""
        budget = [LINEARIZABILITY_POLLS_MAX]

        def exhausted() -> bool:
            budget[0] -= 1
            return budget[0] < 0

        ops = self.history.to_verify(self.monitor.values, self._applied_step)
        result = check_operations(ops, KeyValue(), Limits(should_stop=exhausted, memory_bytes_max=64 << 20))
        self.stats["linearizability_configurations"] += result.configurations
        if result.verdict is Verdict.UNKNOWN:
            self.stats["linearizability_unknown"] += 1
            self._trace(f"quiet: linearizability check gave up ({result.reason})")
        elif result.verdict is Verdict.NOT_LINEARIZABLE:
            part = result.failing[0]
            stuck = "; ".join(f"{b.op.f} {b.op.input or ''}->{b.op.output or ''}: {b.reason}" for b in part.blocked[:3])
            raise InvariantBroken(
                "linearizability",
                f"the client history ({len(ops)} operations) has no linearization; "
                f"longest linearizable prefix {len(part.order)} operations; then {stuck}",
            )
        else:
            self._trace(f"quiet: the {len(ops)} client operations are linearizable")

    # -- trace ------------------------------------------------------------------------------

    def _trace(self, text: str) -> None:
        if self._trace_sink is not None:
            self._trace_sink(f"{self.step:>7} {self.agenda.now_ms:>7}ms  {text}")


def run_seed(seed: int, options: SimOptions = SimOptions(), trace: Callable[[str], None] | None = None) -> SimResult:
    return Simulation(seed, options, trace).run()


def _msg(m: Message) -> str:
    parts = [f"{m.type.name} {m.frm}->{m.to} t{m.term}"]
    if m.type in (MessageType.APP, MessageType.SNAP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"idx={m.index} lt={m.log_term}")
    if m.entries:
        parts.append(f"ents={m.entries[0].index}..{m.entries[-1].index}")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject:
        parts.append(f"REJECT hint={m.reject_hint}")
    elif m.type in (MessageType.APP_RESP, MessageType.READ_INDEX_RESP):
        parts.append(f"idx={m.index}")
    if m.snapshot is not None:
        parts.append(f"snap@{m.snapshot.meta.index}")
    return " ".join(parts)


def _conf(c: ConfState) -> str:
    s = f"voters={sorted(c.voters)}"
    if c.learners:
        s += f" learners={sorted(c.learners)}"
    if c.voters_outgoing:
        s += f" outgoing={sorted(c.voters_outgoing)}"
    return s


def _disk_last(r: Replica) -> int:
    d = r.disk.durable
    return d.entries[-1].index if d.entries else (d.snapshot.meta.index if d.snapshot else 0)
