"""An in-memory network of RaftNodes for tests, in the style of etcd raft's network tests.

Every node is driven through the real Ready/advance contract with a MemoryStorage
(fsync-exact) and a seeded random.Random. ``deliver_all`` runs message by message
until quiet; ``cut``/``isolate``/``recover`` shape the network. Every Ready is
checked on the fly: at most one leader per term, and every applied entry identical
across nodes (state machine safety).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from conclave.raft.node import RaftNode
from conclave.raft.types import (
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
)
from conclave.storage.memory import MemoryStorage

MAX_DELIVERIES = 200_000


class Network:
    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        *,
        learners: Iterable[int] = (),
        seed: int = 0,
        **config: Any,
    ) -> None:
        ids = list(ids)
        learners = list(learners)
        self.seed = seed
        self.config_overrides = config
        self.conf = ConfState(voters=frozenset(ids), learners=frozenset(learners))
        self.nodes: dict[int, RaftNode] = {}
        self.storages: dict[int, MemoryStorage] = {}
        self.rngs: dict[int, random.Random] = {}
        self.state: dict[int, list[tuple[int, bytes]]] = {}  # applied (index, data) per node
        self.read_states: dict[int, list[ReadState]] = {}
        self.readies: dict[int, list[Ready]] = {}
        self.queue: deque[Message] = deque()
        self.cuts: set[frozenset[int]] = set()
        self.isolated: set[int] = set()
        self.drop_types: set[MessageType] = set()
        self.filter: Callable[[Message], bool] | None = None  # return False to drop
        self.delivered: list[Message] = []
        self.record = False
        self.held: dict[int, Ready] = {}  # Readies whose fsync is in progress
        self.slow_disks: set[int] = set()
        self.leaders_by_term: dict[int, int] = {}
        self.applied_global: dict[int, tuple[int, bytes]] = {}
        for i in ids + learners:
            self.add(i, bootstrap=self.conf)

    # -- membership of the test network --------------------------------------------

    def add(self, i: int, *, bootstrap: ConfState | None = None, **config: Any) -> RaftNode:
        st = MemoryStorage()
        st.save_bootstrap(bootstrap if bootstrap is not None else ConfState())
        self.storages[i] = st
        self.rngs[i] = random.Random(self.seed * 7919 + i)
        self.state[i] = []
        self.read_states[i] = []
        self.readies[i] = []
        self.nodes[i] = RaftNode(self._config(i, **config), st.load(), self.rngs[i])
        return self.nodes[i]

    def _config(self, i: int, **config: Any) -> Config:
        return Config(id=i, **{**self.config_overrides, **config})

    def restart(self, i: int, *, lose_unsynced: bool = True, **config: Any) -> RaftNode:
        """Crash node ``i`` and start it again from what its storage made durable."""
        st = self.storages[i]
        self.held.pop(i, None)
        self.slow_disks.discard(i)
        if lose_unsynced:
            st.crash()
        persisted = st.load()
        snap = persisted.snapshot
        self.state[i] = _decode_state(snap.data) if snap is not None else []
        self.nodes[i] = RaftNode(self._config(i, **config), persisted, self.rngs[i])
        return self.nodes[i]

    # -- driving -------------------------------------------------------------------

    def process(self, i: int) -> None:
        node = self.nodes[i]
        for _ in range(1000):
            if i in self.held or not node.has_ready():
                return
            rd = node.ready()
            if self.record:
                self.readies[i].append(rd)
            self.queue.extend(rd.messages)
            self.storages[i].save(rd.hard_state, rd.entries, rd.snapshot)
            if i in self.slow_disks:
                self.held[i] = rd  # the fsync finishes at release(i); the node keeps stepping
                return
            self._finish(i, rd)
        raise AssertionError(f"node {i} never ran out of Ready")

    def slow_disk(self, i: int) -> None:
        """From now on node ``i``'s next Ready stays in its fsync until ``release(i)``,
        while the node keeps stepping messages: a driver that syncs asynchronously."""
        self.slow_disks.add(i)

    def release(self, i: int) -> None:
        self.slow_disks.discard(i)
        rd = self.held.pop(i, None)
        if rd is not None:
            self._finish(i, rd)

    def _finish(self, i: int, rd: Ready) -> None:
        node = self.nodes[i]
        st = self.storages[i]
        st.sync()
        self.queue.extend(rd.persisted_messages)
        if rd.snapshot is not None:
            self.state[i] = _decode_state(rd.snapshot.data)
        durable_last = _durable_last(st)
        for e in rd.committed:
            assert e.index <= durable_last, "committed entry handed out before it was durable"
            self._apply(i, e)
        self.read_states[i].extend(rd.read_states)
        node.advance(rd)
        self._check_leader(node)

    def _apply(self, i: int, e: Entry) -> None:
        seen = self.applied_global.setdefault(e.index, (e.term, e.data))
        assert seen == (e.term, e.data), f"node {i} applied {e} but another node applied {seen} at that index"
        if e.type == EntryType.NORMAL and e.data:
            self.state[i].append((e.index, e.data))

    def _check_leader(self, node: RaftNode) -> None:
        if node.role == Role.LEADER:
            prev = self.leaders_by_term.setdefault(node.term, node.id)
            assert prev == node.id, f"two leaders in term {node.term}: {prev} and {node.id}"

    def allowed(self, m: Message) -> bool:
        if m.to not in self.nodes or m.frm in self.isolated or m.to in self.isolated:
            return False
        if frozenset((m.frm, m.to)) in self.cuts or m.type in self.drop_types:
            return False
        return self.filter is None or self.filter(m)

    def deliver_all(self) -> int:
        n = 0
        for _ in range(MAX_DELIVERIES):
            for i in list(self.nodes):
                self.process(i)
            if not self.queue:
                return n
            m = self.queue.popleft()
            if self.allowed(m):
                n += 1
                if self.record:
                    self.delivered.append(m)
                self.nodes[m.to].step(m)
        raise AssertionError("network never went quiet")

    def send(self, *msgs: Message) -> None:
        self.queue.extend(msgs)
        self.deliver_all()

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()
            self.deliver_all()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.nodes.values():
                node.tick()
            self.deliver_all()

    def campaign(self, i: int) -> None:
        self.nodes[i].campaign()
        self.deliver_all()

    def propose(self, i: int, data: bytes) -> None:
        self.nodes[i].propose(data)
        self.deliver_all()

    # -- faults --------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cuts.add(frozenset((a, b)))

    def isolate(self, i: int) -> None:
        self.isolated.add(i)

    def recover(self) -> None:
        self.cuts.clear()
        self.isolated.clear()
        self.drop_types.clear()
        self.filter = None

    # -- views ---------------------------------------------------------------------

    def leader(self) -> int:
        leaders = [n for n in self.nodes.values() if n.role == Role.LEADER]
        assert leaders, "no leader"
        return max(leaders, key=lambda n: n.term).id

    def data(self, i: int) -> list[bytes]:
        return [d for _, d in self.state[i]]

    def log_terms(self, i: int) -> list[int]:
        return [e.term for e in self.nodes[i].log.entries]

    def snapshot_data(self, i: int) -> bytes:
        return _encode_state(self.state[i])


def _encode_state(state: list[tuple[int, bytes]]) -> bytes:
    return msgpack.packb([list(x) for x in state], use_bin_type=True)


def _decode_state(data: bytes) -> list[tuple[int, bytes]]:
    return [(int(i), bytes(d)) for i, d in msgpack.unpackb(data, raw=False)] if data else []


def _durable_last(st: MemoryStorage) -> int:
    d = st.durable
    if d.entries:
        return d.entries[-1].index
    return d.snapshot.meta.index if d.snapshot is not None else 0


def bootstrap_entries(n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i) for i in range(1, n + 1)]


def compact(nw: Network, i: int) -> int:
    """Have node ``i`` snapshot its state machine at its applied index, as a driver would."""
    node = nw.nodes[i]
    snap = node.compact(node.applied_index, nw.snapshot_data(i))
    nw.storages[i].save(None, [], snap)
    nw.storages[i].sync()
    return snap.meta.index
