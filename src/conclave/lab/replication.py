"""Simulated replicas with pluggable replication and one conflict rule: the highest stamp wins.

Theory of operation. A ``Replica`` holds, per key, a (stamp, value) pair and keeps whichever stamp
is higher (a stamp is a version counter, a skewed wall-clock timestamp or a Lamport time, with the
writer's name to break ties): that is last-write-wins when the stamp is a clock, and ordinary
versioning when it is a counter. The replication schemes are small functions over ``Net``:

* leaderless quorums (``quorum_write`` / ``quorum_read``, Dynamo style): send to every replica,
  answer after ``w`` (or ``r``) replies; with ``repair`` a read first writes the newest value back
  to a write quorum (ABD's second phase), which makes quorum reads linearizable;
* ``Primary``: one leader that applies a write, then replicates it to its followers either
  asynchronously (acknowledge at once, ship the log every ``ship_every`` ms) or synchronously
  (acknowledge once every follower has it);
* multi-leader sites are replicas that accept writes locally and push them to the other sites.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from conclave.lab.core import Loop, Net, Reply, Trace

Stamp = tuple[int, str]


class Replica:
    def __init__(self, name: str, net: Net, trace: Trace) -> None:
        self.name = name
        self.net = net
        self.trace = trace
        self.data: dict[str, tuple[Stamp, Any]] = {}
        self.rejected = 0
        self.publish()

    def store(self, key: str, stamp: Stamp, value: Any) -> bool:
        """Keep the higher stamp; returns whether this write won."""
        old = self.data.get(key)
        if old is not None and old[0] >= stamp:
            self.rejected += 1
            return False
        self.data[key] = (stamp, value)
        self.publish()
        return True

    def get(self, key: str) -> tuple[Stamp, Any]:
        return self.data.get(key, ((0, ""), None))

    def value(self, key: str) -> Any:
        return self.get(key)[1]

    def publish(self) -> None:
        text = " ".join(f"{k}={v!s}@{s[0]}" for k, (s, v) in sorted(self.data.items())) or "empty"
        self.trace.state(self.name, self.net.loop.now, text)


def quorum_write(net: Net, frm: str, replicas: list[Replica], key: str, stamp: Stamp, value: Any, w: int,
                 done: Reply) -> None:
    acks = [0]

    def ack() -> None:
        acks[0] += 1
        if acks[0] == w:
            done("ok", None)

    for r in replicas:
        def at_replica(r: Replica = r) -> None:
            r.store(key, stamp, value)
            net.send(r.name, frm, ack)
        net.send(frm, r.name, at_replica)


def quorum_read(net: Net, frm: str, replicas: list[Replica], key: str, r: int, done: Reply,
                repair: bool = False, w: int = 2) -> None:
    replies: list[tuple[Stamp, Any]] = []

    def reply(got: tuple[Stamp, Any]) -> None:
        replies.append(got)
        if len(replies) != r:
            return
        stamp, value = max(replies, key=lambda sv: sv[0])
        if repair and stamp[0] > 0:
            quorum_write(net, frm, replicas, key, stamp, value, w, lambda _s, _o: done("ok", value))
        else:
            done("ok", value)

    for rep in replicas:
        def at_replica(rep: Replica = rep) -> None:
            got = rep.get(key)
            net.send(rep.name, frm, lambda: reply(got))
        net.send(frm, rep.name, at_replica)


class Primary:
    """Single-leader replication: ``sync`` acknowledges after every follower has the write."""

    def __init__(self, loop: Loop, net: Net, leader: Replica, followers: list[Replica], sync: bool,
                 ship_every: int = 100) -> None:
        self.loop, self.net = loop, net
        self.leader = leader
        self.followers = followers
        self.sync = sync
        self.ship_every = ship_every
        self.log: list[tuple[str, Stamp, Any]] = []
        self.shipped = 0
        self.version = 0
        if not sync:
            loop.after(ship_every, self._ship)

    def write(self, frm: str, key: str, value: Any, done: Reply) -> None:
        def at_leader() -> None:
            self.version += 1
            stamp = (self.version, self.leader.name)
            self.leader.store(key, stamp, value)
            self.log.append((key, stamp, value))
            if not self.sync:
                self.net.send(self.leader.name, frm, lambda: done("ok", None))
                return
            acks = [0]

            def ack() -> None:
                acks[0] += 1
                if acks[0] == len(self.followers):
                    self.net.send(self.leader.name, frm, lambda: done("ok", None))
            def at_follower(f: Replica) -> None:
                f.store(key, stamp, value)
                self.net.send(f.name, self.leader.name, ack)
            for f in self.followers:
                self.net.send(self.leader.name, f.name, partial(at_follower, f))
        self.net.send(frm, self.leader.name, at_leader)

    def read(self, frm: str, key: str, done: Reply) -> None:
        r = self.leader
        def at_leader() -> None:
            value = r.value(key)
            self.net.send(r.name, frm, lambda: done("ok", value))
        self.net.send(frm, r.name, at_leader)

    def _ship(self) -> None:
        batch = self.log[self.shipped:]
        self.shipped = len(self.log)
        for f in self.followers:
            for key, stamp, value in batch:
                self.net.send(self.leader.name, f.name, partial(f.store, key, stamp, value))
        self.loop.after(self.ship_every, self._ship)


def push(net: Net, frm: Replica, to: list[Replica], key: str, stamp: Stamp, value: Any,
         after: Callable[[], None] | None = None) -> None:
    """Multi-leader replication: send one accepted write to the other sites."""
    for r in to:
        net.send(frm.name, r.name, partial(r.store, key, stamp, value))
