"""Conclave's real Raft core (``conclave.raft.RaftNode``) on the lab's virtual time and network.

Theory of operation. ``RaftCluster`` runs one ``RaftNode`` per member, driven as the simulator and
the server drive it: every ``tick_ms`` of virtual time a live member ticks; after every input the
member's ``Ready`` batches are handled in the contract's order (persist the hard state and entries
on the member's disk, which here is durable at once; send the messages and, the disk being
durable, the persisted messages; apply the committed entries; serve the read states; advance).
Messages travel over the lab's ``Net`` between nodes named ``n1``, ``n2``..., so partitions, delays
and crashes are the lab's. A crash drops the member's volatile state; a restart builds a fresh
``RaftNode`` from the disk, which replays the committed log into an empty store.

The state machine is Conclave's own (``conclave.machine.StateMachine`` over the MVCC store, the one
the server runs): a client command (``put``, ``puts``, ``cas``, ``decide``, ``read``) becomes an etcd
request (a Put, or a Txn with a compare), framed with ``machine.entry.encode_batch`` under the
member's ``(origin, seq)`` (seq numbers start at ``entry.seq_base(incarnation)``, so a restarted
member's proposals are never mistaken for replays); applying it answers the client waiting on the
origin member. Values are JSON in the store. ``read_index`` serves a linearizable read through
Raft's ReadIndex; ``local_read`` reads whatever this member has applied (a serializable, possibly
stale, read). Leaders are recorded per term, so election safety can be asserted by a scenario.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from conclave.kv import types as kt
from conclave.lab.core import Loop, Net, Trace
from conclave.machine import StateMachine
from conclave.machine import entry as machine_entry
from conclave.raft.errors import RaftError
from conclave.raft.node import RaftNode
from conclave.raft.types import Config, ConfState, Entry, HardState, Message, PersistedState, Role

Done = Callable[[str, Any], None]  # ("ok" | "fail", output)

ROLE_NAMES = {Role.FOLLOWER: "follower", Role.CANDIDATE: "candidate", Role.LEADER: "leader",
              Role.PRE_CANDIDATE: "pre-candidate"}


def node_name(node_id: int) -> str:
    return f"n{node_id}"


@dataclass(slots=True)
class Disk:
    hard_state: HardState = HardState()
    entries: list[Entry] = field(default_factory=list)

    def save(self, hs: HardState | None, entries: tuple[Entry, ...]) -> None:
        if hs is not None:
            self.hard_state = hs
        for e in entries:
            del self.entries[e.index - 1:]  # an entry at an index replaces it and everything after
            self.entries.append(e)


class Member:
    """One member: its RaftNode, its disk, its applied store and the clients it owes an answer."""

    def __init__(self, cluster: RaftCluster, node_id: int) -> None:
        self.cluster = cluster
        self.id = node_id
        self.name = node_name(node_id)
        self.disk = Disk()
        self.incarnation = 0
        self.up = True
        self.node: RaftNode
        self.machine = StateMachine()
        self.applied = 0
        self._seq = 0
        self._view: tuple[int, dict[str, Any]] = (-1, {})
        self._pending: dict[int, Done] = {}
        self._reads: dict[bytes, Done] = {}
        self._waiting: list[tuple[int, Callable[[], None]]] = []
        self.stepped = 0
        self._start()

    def _start(self) -> None:
        c = self.cluster
        cfg = Config(id=self.id, election_tick=c.election_tick, heartbeat_tick=c.heartbeat_tick,
                     pre_vote=c.pre_vote, check_quorum=c.check_quorum)
        persisted = PersistedState(hard_state=self.disk.hard_state, entries=tuple(self.disk.entries),
                                   conf_state=ConfState(voters=frozenset(c.ids)))
        self.node = RaftNode(cfg, persisted, random.Random(c.seed * 7919 + self.id * 104729 + self.incarnation))
        self.machine = StateMachine()
        self.applied = 0
        self._pending.clear()
        self._reads.clear()
        self._waiting.clear()
        self.incarnation += 1
        self._seq = machine_entry.seq_base(self.incarnation)
        inc = self.incarnation
        self.cluster.loop.after(c.tick_ms, lambda: self._tick(inc))
        self._publish()

    # -- driving ------------------------------------------------------------------------

    def _tick(self, inc: int) -> None:
        if not self.up or inc != self.incarnation:
            return
        c = self.cluster
        c.net.run_at(self.name, self._do_tick)
        c.loop.after(c.tick_ms, lambda: self._tick(inc))

    def _do_tick(self) -> None:
        self.node.tick()
        self.handle()

    def receive(self, msg: Message, inc: int) -> None:
        if not self.up or inc != self.incarnation:
            return
        try:
            self.node.step(msg)
        except RaftError:
            return
        self.stepped += 1
        self.handle()

    def handle(self) -> None:
        c = self.cluster
        while self.up and self.node.has_ready():
            rd = self.node.ready()
            self.disk.save(rd.hard_state, rd.entries)
            for m in rd.messages + rd.persisted_messages:
                c.send(self, m)
            for e in rd.committed:
                self._apply(e)
            for rs in rd.read_states:
                done = self._reads.pop(rs.context, None)
                if done is not None:
                    self.when_applied(rs.index, partial(done, "ok", rs.index))
            self.node.advance(rd)
        self._publish()

    def _publish(self) -> None:
        c = self.cluster
        n = self.node
        role = ROLE_NAMES[n.role] if self.up else "down"
        if n.role == Role.LEADER and self.up:
            c.leaders.setdefault(n.term, set()).add(self.id)
        shown = c.show_store(self.store) if self.up else ""
        text = f"{role} t{n.term}" + (f" {shown}" if shown else "")
        c.trace.state(self.name, c.loop.now, text)
        if self.up and (n.role, n.term) != c.last_role.get(self.id):
            c.last_role[self.id] = (n.role, n.term)
            if n.role == Role.LEADER:
                c.elections += 1
                c.trace.note(c.loop.now, f"{self.name} becomes leader in term {n.term}")

    def _apply(self, e: Entry) -> None:
        out = self.machine.apply(e, self.cluster.loop.now)
        self.applied = e.index
        for r in out.results:
            if r.origin == self.id:
                done = self._pending.pop(r.seq, None)
                if done is not None:
                    done(*answer(r.command, r.response))
        self._run_waiting()

    @property
    def store(self) -> dict[str, Any]:
        """What this member has applied, as {key: value} (values decoded from JSON)."""
        if self._view[0] != self.applied:
            resp = self.machine.store.range(kt.RangeRequest(key=b"\0", range_end=b"\0", serializable=True))
            self._view = (self.applied, {kv.key.decode(): json.loads(kv.value) for kv in resp.kvs})
        return self._view[1]

    def when_applied(self, index: int, fn: Callable[[], None]) -> None:
        if self.applied >= index:
            fn()
        else:
            self._waiting.append((index, fn))

    def _run_waiting(self) -> None:
        ready = [w for w in self._waiting if w[0] <= self.applied]
        self._waiting = [w for w in self._waiting if w[0] > self.applied]
        for _, fn in ready:
            fn()

    # -- client calls ---------------------------------------------------------------------

    def propose(self, cmd: dict[str, Any], done: Done) -> None:
        """Propose ``cmd`` through the log; ``done`` runs when this member applies it (or at a refusal)."""
        if not self.up:
            return
        self._seq += 1
        try:
            self.node.propose(machine_entry.encode_batch(self.id, [(self._seq, command(cmd))]))
        except RaftError:
            done("fail", "no leader")
            return
        self._pending[self._seq] = done
        self.handle()

    def read_index(self, key: str, done: Done) -> None:
        """A linearizable read: ReadIndex, wait until applied that far, read the store."""
        if not self.up:
            return
        self._seq += 1
        ctx = f"{self.name}/{self.incarnation}/{self._seq}".encode()
        try:
            self.node.read_index(ctx)
        except RaftError:
            done("fail", "no leader")
            return
        self._reads[ctx] = lambda status, _index: done(status, self.store.get(key))
        self.handle()

    def local_read(self, key: str) -> Any:
        return self.store.get(key)

    @property
    def is_leader(self) -> bool:
        return self.up and self.node.role == Role.LEADER

    # -- faults -----------------------------------------------------------------------------

    def crash(self) -> None:
        self.up = False
        self.incarnation += 1
        self.cluster.net.crash(self.name)
        self._publish()

    def restart(self) -> None:
        self.up = True
        self.cluster.net.recover(self.name)
        self._start()


def _put(key: str, value: Any) -> kt.RequestOp:
    return kt.RequestOp(request_put=kt.PutRequest(key=key.encode(), value=json.dumps(value).encode()))


def _range(key: str) -> kt.RequestOp:
    return kt.RequestOp(request_range=kt.RangeRequest(key=key.encode()))


def command(cmd: dict[str, Any]) -> kt.PutRequest | kt.TxnRequest:
    """A lab command as the etcd request the state machine applies.

    ``put``: a Put. ``puts``: one Txn putting every key of ``value`` (atomically). ``cas``: a Txn
    whose compare is the value (or, for nil, that the key does not exist), putting the new value on
    success and reading the key on failure. ``decide``: the same with "does not exist" (the first
    decision wins). ``read``: a Txn that only reads, so a read through the log.
    """
    op, key = cmd["op"], cmd.get("key", "")
    if op == "put":
        return kt.PutRequest(key=key.encode(), value=json.dumps(cmd["value"]).encode())
    if op == "puts":
        return kt.TxnRequest(success=tuple(_put(k, v) for k, v in sorted(cmd["value"].items())))
    if op in ("cas", "decide"):
        expected, new = cmd["value"] if op == "cas" else (None, cmd["value"])
        compare = (kt.Compare(kt.CompareResult.EQUAL, kt.CompareTarget.CREATE, key.encode(), create_revision=0)
                   if expected is None else
                   kt.Compare(kt.CompareResult.EQUAL, kt.CompareTarget.VALUE, key.encode(),
                              value=json.dumps(expected).encode()))
        return kt.TxnRequest(compare=(compare,), success=(_put(key, new), _range(key)), failure=(_range(key),))
    return kt.TxnRequest(success=(_range(key),))


def answer(cmd: object, response: object) -> tuple[str, Any]:
    """The client's answer to an applied command: ("ok" | "fail", value read, if any)."""
    if isinstance(cmd, kt.TxnRequest) and isinstance(response, kt.TxnResponse):
        value = None
        for r in response.responses:
            if r.response_range is not None and r.response_range.kvs:
                value = json.loads(r.response_range.kvs[0].value)
        if cmd.compare and not response.succeeded:
            return "fail", value
        return "ok", value
    return "ok", None


class RaftCluster:
    """A Raft group of ``len(ids)`` members on the lab's loop and network."""

    def __init__(self, loop: Loop, net: Net, trace: Trace, seed: int, ids: tuple[int, ...] = (1, 2, 3),
                 tick_ms: int = 10, election_tick: int = 10, heartbeat_tick: int = 2,
                 pre_vote: bool = True, check_quorum: bool = True,
                 show_store: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.loop, self.net, self.trace, self.seed = loop, net, trace, seed
        self.ids = ids
        self.tick_ms, self.election_tick, self.heartbeat_tick = tick_ms, election_tick, heartbeat_tick
        self.pre_vote, self.check_quorum = pre_vote, check_quorum
        self.show_store: Callable[[dict[str, Any]], str] = show_store or (
            lambda s: " ".join(f"{k}={v}" for k, v in sorted(s.items())))
        self.leaders: dict[int, set[int]] = {}
        self.last_role: dict[int, tuple[Role, int]] = {}
        self.elections = 0
        self.messages = 0
        self.members: dict[int, Member] = {}
        for i in ids:
            self.members[i] = Member(self, i)

    def __getitem__(self, node_id: int) -> Member:
        return self.members[node_id]

    @property
    def names(self) -> list[str]:
        return [node_name(i) for i in self.ids]

    def send(self, frm: Member, m: Message) -> None:
        self.messages += 1
        dest = self.members.get(m.to)
        if dest is None:
            return
        inc = dest.incarnation
        self.net.send(frm.name, dest.name, lambda: dest.receive(m, inc))

    def campaign(self, node_id: int) -> None:
        m = self.members[node_id]
        m.node.campaign()
        m.handle()

    def leader(self) -> Member | None:
        live = [m for m in self.members.values() if m.is_leader]
        if not live:
            return None
        return max(live, key=lambda m: m.node.term)

    def election_safe(self) -> bool:
        """At most one leader per term, ever (Raft's election safety)."""
        return all(len(v) <= 1 for v in self.leaders.values())


def client_write(net: Net, client: str, member: Member, key: str, value: Any, done: Done) -> None:
    """A put through the log, sent over the network to ``member`` and answered back."""
    def at_member() -> None:
        member.propose({"op": "put", "key": key, "value": value},
                       lambda s, o: net.send(member.name, client, lambda: done(s, o)))
    net.send(client, member.name, at_member)


def client_cas(net: Net, client: str, member: Member, key: str, expected: Any, new: Any, done: Done) -> None:
    def at_member() -> None:
        member.propose({"op": "cas", "key": key, "value": [expected, new]},
                       lambda s, o: net.send(member.name, client, lambda: done(s, o)))
    net.send(client, member.name, at_member)


def client_read(net: Net, client: str, member: Member, key: str, how: str, done: Done) -> None:
    """A read at ``member``: ``local`` (serializable: its applied state), ``read-index`` or ``log``."""
    def answer(s: str, o: Any) -> None:
        net.send(member.name, client, lambda: done(s, o))

    def at_member() -> None:
        if how == "local":
            answer("ok", member.local_read(key))
        elif how == "read-index":
            member.read_index(key, answer)
        else:
            member.propose({"op": "read", "key": key}, answer)
    net.send(client, member.name, at_member)
