"""The Conclave member: drives the pure Raft core, the disk and the state machine.

Theory of operation
-------------------
One asyncio task, the *raft loop*, owns the ``RaftNode``. Everything that changes it
(ticks, peer messages, proposals, read requests) is queued as an operation and run at
the top of the loop, never while a Ready is being persisted. One turn of the loop:

1. run the queued operations (this is where batching happens: every proposal that
   arrived while the previous batch was being fsynced enters the log together);
2. ``rd = raft.ready()``; send ``rd.messages`` (a leader replicates while it persists);
3. ``storage.save(...)`` then ONE ``fsync`` in a worker thread for the whole batch;
4. send ``rd.persisted_messages`` (votes and acks only after the fsync);
5. apply ``rd.snapshot`` and ``rd.committed`` to the MVCC store, in order, resolving the
   futures of the requests this member proposed (entries carry ``(member, seq)`` ids);
6. resolve ReadIndex barriers whose index is applied; ``raft.advance(rd)``.

Writes on a follower travel to the leader inside Raft (PROP forwarding) and come back as
committed entries applied locally. Linearizable reads take a ReadIndex barrier (batched:
every read that arrives while one barrier is in flight shares the next) and then read the
local store; serializable reads read the local store at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from conclave.kv import errors as kverr
from conclave.kv.lease import Lessor
from conclave.kv.types import LeaseGrantRequest, LeaseRevokeRequest
from conclave.kv.watch import WatchHub
from conclave.raft.codec import conf_state_from_tuple, decode_conf_change
from conclave.raft.errors import NotLeader as RaftNotLeader
from conclave.raft.errors import ProposalDropped
from conclave.raft.node import RaftNode
from conclave.raft.types import (
    NONE,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    PersistedState,
    Ready,
    Role,
)
from conclave.server.config import ConfigError, ServerConfig, parse_url
from conclave.server.peer_guard import PeerGuard, reachable_members
from conclave.server.transport import Transport

log = logging.getLogger("conclave.node")

# Entry payload tags: the first byte says which state machine an entry is for.
TAG_KV = b"K"
TAG_BATCH = b"B"  # many key-value commands in one entry: one log entry, one append, one ack
TAG_MEMBER = b"M"
# The store sees index ``raft_index * BATCH_SLOTS + position in the batch``: strictly growing and
# the same on every replica, which is all it needs (apply order, lease ids).
BATCH_SLOTS = 1 << 12
BATCH_BYTES_MAX = 512 * 1024
# Serialise snapshots in a forked child (copy-on-write) instead of on the event loop.
SNAPSHOT_IN_CHILD = True


@dataclass(slots=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str] = field(default_factory=list)
    native_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.peer_urls, self.client_urls, self.native_urls, self.is_learner]

    @classmethod
    def from_wire(cls, w: Any) -> Member:
        mid, name, peers, clients, natives, learner = w
        return cls(int(mid), str(name), list(peers), list(clients), list(natives), bool(learner))


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class _Waiters:
    """Futures of requests this member proposed, keyed by sequence number."""

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._seq = itertools.count(1)

    def register(self) -> tuple[int, asyncio.Future[Any]]:
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[seq] = fut
        return seq, fut

    def resolve(self, seq: int, result: Any = None, error: BaseException | None = None) -> None:
        fut = self._futures.pop(seq, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def drop(self, seq: int) -> None:
        self._futures.pop(seq, None)

    def fail_all(self, error: BaseException) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(error)
        self._futures.clear()


class _ReadBarrier:
    """ReadIndex batching: one raft read_index call serves every read queued before it."""

    def __init__(self) -> None:
        self.queued: list[asyncio.Future[int]] = []
        self.in_flight: dict[bytes, list[asyncio.Future[int]]] = {}
        self.ready: list[tuple[int, list[asyncio.Future[int]]]] = []
        self.ids = itertools.count(1)


class Node:
    """One Conclave member. Create, ``await start()``, serve, ``await stop()``."""

    def __init__(self, cfg: ServerConfig, *, storage_factory: Callable[[str], Any] | None = None) -> None:
        self.cfg = cfg
        self.member_id = cfg.member_id
        self.cluster_id = cfg.cluster_id
        self.members: dict[int, Member] = {}
        self._storage_factory = storage_factory
        self._ops: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._waiters = _Waiters()
        self._reads = _ReadBarrier()
        self._tasks: list[asyncio.Task[Any]] = []
        self._fsync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._running = False
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self._applied = 0
        self._snapshot_index = 0
        self.watch_callbacks: dict[int, Callable[[], None]] = {}
        self._joined_members: list[Member] = []
        self.fatal = False
        self.peer_guard = PeerGuard(self.member_id)
        self._closed = False
        self._kv_batch: list[tuple[int, bytes]] = []
        self._bootstrap_conf = ConfState()
        self._snapshot_child = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._publishing = False

    # ------------------------------------------------------------------ start/stop

    def _meta_path(self) -> Path:
        return Path(self.cfg.data_dir) / "member.json"

    def _check_data_dir(self) -> bool:
        """Returns True when the data dir is new; otherwise the data dir says who this member is."""
        from conclave.server import datadir

        ident = datadir.recover(self.cfg)  # the data dir wins over the bootstrap flags, as in etcd
        if ident is None:
            return True
        self.member_id, self.cluster_id = ident.member_id, ident.cluster_id
        self._joined_members = [Member.from_wire(w) for w in ident.members]
        return False

    def _write_meta(self) -> None:
        path = self._meta_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "name": self.cfg.name, "member_id": self.member_id, "cluster_id": self.cluster_id,
            "token": self.cfg.initial_cluster_token, "initial_cluster": self.cfg.initial_cluster,
            # A member that joined an existing cluster never sees the bootstrap configuration in
            # its log: remember whom it learned about when it joined.
            "members": [m.to_wire() for m in self.members.values()]
            if self.cfg.initial_cluster_state == "existing" else [],
        }))
        os.replace(tmp, path)

    def _open_storage(self) -> Any:
        if self._storage_factory is not None:
            return self._storage_factory(self.cfg.data_dir)
        from conclave.storage.wal import DiskStorage

        return DiskStorage(self.cfg.data_dir, max_snapshots=self.cfg.max_snapshots, max_wals=self.cfg.max_wals)

    async def start(self) -> None:
        from conclave.kv.mvcc import Store

        Path(self.cfg.data_dir).mkdir(parents=True, exist_ok=True)
        fresh = self._check_data_dir()
        self.storage = self._open_storage()
        if fresh and self.cfg.initial_cluster_state == "existing":
            await self._join_existing()
        if fresh and self.cfg.initial_cluster_state == "existing":
            self.storage.save_bootstrap(self._bootstrap_conf)
            self.storage.sync()
        if fresh:
            if self.cfg.initial_cluster_state == "new":
                ids = self.cfg.initial_member_ids()
                for name, urls in self.cfg.initial_cluster.items():
                    self.members[ids[name]] = Member(ids[name], name, list(urls))
                self.storage.save_bootstrap(ConfState(voters=frozenset(ids.values())))
                self.storage.sync()
            self._write_meta()
        persisted: PersistedState = self.storage.load()
        self._bootstrap_conf = persisted.conf_state
        if persisted.snapshot is not None:
            self._restore_snapshot(persisted.snapshot.data)
            self._snapshot_index = persisted.snapshot.meta.index
            self._applied = persisted.snapshot.meta.index
        else:
            self.store = Store()
            self._reset_lessor()
            if not self.members and self._joined_members:
                self.members = {m.id: m for m in self._joined_members}
            if not self.members:
                ids = self.cfg.initial_member_ids()
                for name, urls in self.cfg.initial_cluster.items():
                    if ids[name] in persisted.conf_state.all_nodes():
                        self.members[ids[name]] = Member(ids[name], name, list(urls))
        # A renamed member (same data dir, new --name) keeps its id; _on_tick publishes the new name.
        self.hub = WatchHub(self.store, notify=self._notify_watcher)
        raft_cfg = Config(
            id=self.member_id,
            election_tick=self.cfg.election_ticks,
            heartbeat_tick=1,
            pre_vote=True,
            check_quorum=True,
        )
        self.raft = RaftNode(raft_cfg, persisted, random.Random(self.member_id ^ int(time.time_ns())))
        self._last_leader = NONE
        peer = parse_url(self.cfg.listen_peer_urls[0], "listen-peer-urls")
        self.transport = Transport(self.member_id, self.cluster_id, self._on_peer_messages, self._on_rpc,
                                   self._on_unreachable)
        await self.transport.listen(peer.host, peer.port)
        self._sync_peers()
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._raft_loop(), name="raft-loop"))
        self._tasks.append(loop.create_task(self._ticker(), name="ticker"))

    async def _join_existing(self) -> None:
        """Learn the cluster id and members from a running member listed in --initial-cluster."""
        from conclave.server.transport import fetch_cluster_info

        errors = []
        for name, urls in self.cfg.initial_cluster.items():
            if name == self.cfg.name:
                continue
            for url in urls:
                hp = parse_url(url, "initial-cluster")
                try:
                    cid, wires = await fetch_cluster_info((hp.host, hp.port), 3.0)
                except (TimeoutError, OSError, Exception) as exc:
                    errors.append(f"{url}: {exc}")
                    continue
                self.cluster_id = int(cid)
                self.members = {m.id: m for m in (Member.from_wire(w) for w in wires[0])}
                # The configuration the cluster was founded with: the joiner replays the leader's
                # log from its start, and configuration changes apply on top of it.
                self._bootstrap_conf = conf_state_from_tuple(wires[1])
                if self.member_id not in self.members:
                    raise ConfigError(
                        f"member {self.cfg.name} ({self.member_id:x}) is not in the cluster yet: add it first "
                        f"with `etcdctl member add {self.cfg.name} --peer-urls="
                        f"{','.join(self.cfg.initial_advertise_peer_urls)}`"
                    )
                return
        raise ConfigError("cannot join: no member of --initial-cluster answered (" + "; ".join(errors) + ")")

    async def stop(self) -> None:
        if self._closed or not self._tasks:
            return
        self._closed = True
        self._running = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._waiters.fail_all(kverr.Stopped())
        await self.transport.close()
        if not self.fatal:
            await asyncio.get_running_loop().run_in_executor(self._fsync_pool, self.storage.sync)
        with contextlib.suppress(Exception):
            self.storage.close()
        self._fsync_pool.shutdown(wait=True)
        self.stopped.set()

    # ------------------------------------------------------------------ membership

    def _sync_peers(self) -> None:
        for mid, m in self.members.items():
            if mid != self.member_id and m.peer_urls:
                hp = parse_url(m.peer_urls[0], "peer-urls")
                self.transport.set_peer(mid, (hp.host, hp.port))
        for mid in list(self.transport.peers()):
            if mid not in self.members:
                self.transport.remove_peer(mid)

    # ------------------------------------------------------------------ the raft loop

    def _submit(self, op: Callable[[], None]) -> None:
        self._ops.append(op)
        self._wake.set()

    def _on_peer_messages(self, msgs: list[Message]) -> None:
        def op() -> None:
            # Through the guard: non-members and protocol breakers are dropped, not fatal.
            members = reachable_members(self.raft.conf_state, self.members)
            for m in msgs:
                self.peer_guard.step(self.raft, m, members)

        self._submit(op)

    def _on_unreachable(self, node_id: int) -> None:
        self._submit(lambda: self.raft.step(
            Message(MessageType.UNREACHABLE, to=self.member_id, frm=node_id, term=0)))

    async def _ticker(self) -> None:
        interval = self.cfg.heartbeat_interval_ms / 1000
        nxt = time.monotonic()
        while True:
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if time.monotonic() - nxt > 5 * interval:
                nxt = time.monotonic()  # we were starved; do not fire a burst of ticks
            self._submit(self._tick)

    def _tick(self) -> None:
        self.raft.tick()
        self._on_tick()

    def _on_tick(self) -> None:
        """Periodic duties: catch up slow watchers; on the leader, expire leases; publish self."""
        if self.hub.unsynced_count:
            self.hub.catch_up()
        if self.raft.leader_id == NONE or not self._running:
            return
        if self.lessor.is_primary and self.raft.role == Role.LEADER:
            for lid in self.lessor.expired(now_ms()):
                self._propose_expiry(lid)
        me = self.members.get(self.member_id)
        if me is not None and not self._publishing and (
            me.client_urls != self.cfg.advertise_client_urls or me.native_urls != self.cfg.listen_native_urls
            or me.name != self.cfg.name
        ):
            self._publishing = True
            self._spawn(self._publish_self())

    def _propose_expiry(self, lease_id: int) -> None:
        """Propose the revocation of an expired lease, on this leader's own log only.

        Never forwarded: a leader that was paused (SIGSTOP, a long GC) wakes up believing every
        deadline passed while a new leader kept the leases alive. Appended here, its revoke is
        in a stale term and can never commit; forwarded, it would be committed by the new leader.
        If this member still leads when the lessor retries, the next attempt goes through.
        """
        from conclave.kv.command import encode_command

        data = TAG_KV + self.member_id.to_bytes(8, "big") + encode_command(LeaseRevokeRequest(id=lease_id), 0)
        if self.raft.role == Role.LEADER:
            with contextlib.suppress(RaftNotLeader, ProposalDropped):
                self.raft.propose(data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("background proposal failed: %s", task.exception())

    async def _publish_self(self) -> None:
        """Replicate this member's name and client URLs so MemberList can advertise them."""
        try:
            me = Member(self.member_id, self.cfg.name, list(self.cfg.initial_advertise_peer_urls),
                        list(self.cfg.advertise_client_urls), list(self.cfg.listen_native_urls))
            seq, fut = self._waiters.register()
            data = TAG_MEMBER + msgpack.packb([self.member_id, seq, me.to_wire()], use_bin_type=True)
            await self._propose(seq, fut, data)
        finally:
            self._publishing = False

    async def _raft_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                ops, self._ops = self._ops, []
                for op in ops:
                    op()
                while self.raft.has_ready():
                    rd = self.raft.ready()
                    await self._handle_ready(rd, loop)
                    if self._ops:
                        self._wake.set()
                        break
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # An assertion in the core, a failed fsync, a state machine bug: continuing could
            # serve wrong data. Crash-only: stop, say why, exit non-zero, let a supervisor restart.
            log.critical("fatal error in the raft loop; stopping this member", exc_info=exc)
            self.stop_reason = f"fatal: {type(exc).__name__}: {exc}"
            self.fatal = True
            self._running = False
            self._waiters.fail_all(kverr.Stopped())
            self.stopped.set()

    async def _handle_ready(self, rd: Ready, loop: asyncio.AbstractEventLoop) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader, rd.soft_state.role)
        if rd.messages:
            self.transport.send(rd.messages)
        if rd.must_sync():
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            await loop.run_in_executor(self._fsync_pool, self.storage.sync)
        if rd.persisted_messages:
            self.transport.send(rd.persisted_messages)
        if rd.snapshot is not None and rd.snapshot.meta.index > self._applied:
            self._restore_snapshot(rd.snapshot.data)
            self._applied = rd.snapshot.meta.index
            self._snapshot_index = rd.snapshot.meta.index
            self._sync_peers()
        if rd.committed:
            self._apply(rd.committed)
        for rs in rd.read_states:
            waiters = self._reads.in_flight.pop(rs.context, None)
            if waiters:
                self._reads.ready.append((rs.index, waiters))
        self.raft.advance(rd)
        self._release_reads()
        self._maybe_snapshot()

    def _on_soft_state(self, leader: int, role: Role) -> None:
        if leader != self._last_leader:
            old, self._last_leader = self._last_leader, leader
            log.info("leader is now %x (was %x), term %d", leader, old, self.raft.term)
            # Reads waiting on the old leader's ReadIndex will never be answered.
            for futs in self._reads.in_flight.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(kverr.LeaderChanged())
            self._reads.in_flight.clear()
        if role == Role.LEADER and not self.lessor.is_primary:
            # No lease may expire because of a failover: restart every deadline with slack.
            self.lessor.promote(now_ms(), self.cfg.election_timeout_ms)
        elif role != Role.LEADER and self.lessor.is_primary:
            self.lessor.demote()

    # ------------------------------------------------------------------ apply

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            if e.index <= self._applied:
                continue
            self._applied = e.index
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(e)
                continue
            if not e.data:
                continue
            tag, body = e.data[:1], e.data[1:]
            if tag == TAG_KV:
                self._apply_kv(int.from_bytes(body[:8], "big"), body[8:], e.index * BATCH_SLOTS)
            elif tag == TAG_BATCH:
                origin = int.from_bytes(body[:8], "big")
                for i, one in enumerate(msgpack.unpackb(body[8:], raw=False)):
                    self._apply_kv(origin, one, e.index * BATCH_SLOTS + i)
            elif tag == TAG_MEMBER:
                origin, seq, attrs = msgpack.unpackb(body, raw=False)
                m = Member.from_wire(attrs)
                known = self.members.get(m.id)
                if known is not None:
                    known.name, known.client_urls, known.native_urls = m.name, m.client_urls, m.native_urls
                    if m.peer_urls and m.peer_urls != known.peer_urls:
                        known.peer_urls = m.peer_urls
                        self._sync_peers()
                if origin == self.member_id:
                    self._waiters.resolve(seq, None)

    def _apply_kv(self, origin: int, encoded: bytes, store_index: int) -> None:
        from conclave.kv.command import decode_command

        seq, cmd = decode_command(encoded)
        try:
            result: Any = self.store.apply(cmd, store_index)
            error: BaseException | None = None
        except kverr.EtcdError as exc:
            result, error = None, exc
        if self.store.last_events:
            self.hub.publish(self.store.last_events)
        if error is None:
            self._after_apply(cmd, result)
        if origin == self.member_id:
            self._waiters.resolve(seq, result, error)

    def _apply_conf_change(self, e: Entry) -> None:
        cc = decode_conf_change(e.data)
        info: dict[int, Member] = {}
        origin, seq = 0, 0
        if cc.context:
            origin, seq, wires = msgpack.unpackb(cc.context, raw=False)
            for w in wires:
                m = Member.from_wire(w)
                info[m.id] = m
        for ch in cc.changes:
            if ch.type == ConfChangeType.REMOVE_NODE:
                self.members.pop(ch.node_id, None)
                if ch.node_id == self.member_id:
                    self.stop_reason = "this member was removed from the cluster"
                    log.warning("%s; stopping", self.stop_reason)
                    asyncio.get_running_loop().call_later(0.5, self.stopped.set)
            else:
                m = info.get(ch.node_id) or self.members.get(ch.node_id) or Member(ch.node_id, "", [])
                m.is_learner = ch.type == ConfChangeType.ADD_LEARNER
                self.members[ch.node_id] = m
        self._sync_peers()
        if origin == self.member_id:
            self._waiters.resolve(seq, None)

    def _after_apply(self, cmd: Any, result: Any) -> None:
        """Member-local bookkeeping that follows an applied command (not replicated state)."""
        if isinstance(cmd, LeaseGrantRequest):
            self.lessor.grant(result.id, result.ttl, now_ms())
        elif isinstance(cmd, LeaseRevokeRequest) and cmd.id in self.lessor:
            self.lessor.revoke(cmd.id)

    def _reset_lessor(self) -> None:
        self.lessor = Lessor()
        now = now_ms()
        for lid in self.store.lease_ids():
            self.lessor.grant(lid, self.store.lease_ttl(lid), now)
        if getattr(self, "raft", None) is not None and self.raft.role == Role.LEADER:
            self.lessor.promote(now, self.cfg.election_timeout_ms)

    def _notify_watcher(self, watcher: Any) -> None:
        cb = self.watch_callbacks.get(watcher.id)
        if cb is not None:
            cb()

    # ------------------------------------------------------------------ snapshots

    def _snapshot_bytes(self) -> bytes:
        return msgpack.packb({
            "kv": self.store.snapshot(),
            "members": [m.to_wire() for m in self.members.values()],
            "cluster_id": self.cluster_id,
        }, use_bin_type=True)

    def _restore_snapshot(self, data: bytes) -> None:
        from conclave.kv.mvcc import Store

        snap = msgpack.unpackb(data, raw=False)
        self.store = Store.restore(snap["kv"])
        if hasattr(self, "hub"):
            self.hub.replace_store(self.store)
        self._reset_lessor()
        self.members = {m.id: m for m in (Member.from_wire(w) for w in snap["members"])}
        self.cluster_id = int(snap["cluster_id"])

    def _maybe_snapshot(self) -> None:
        # Members apply the same entries, so with one threshold all would serialise their store and
        # fsync a large file at the same moment, and commits would wait on the slowest. Each member
        # waits a little longer than the count, by an amount fixed by its id, so at most one member
        # of a healthy cluster is busy snapshotting at a time.
        stagger = (self.member_id % 997) * self.cfg.snapshot_count // 2000
        if self._snapshot_child or self._applied - self._snapshot_index < self.cfg.snapshot_count + stagger:
            return
        if SNAPSHOT_IN_CHILD and hasattr(os, "fork"):
            self._snapshot_in_child(self._applied)
            return
        self._install_local_snapshot(self._applied, self._snapshot_bytes())

    def _snapshot_in_child(self, index: int) -> None:
        """Serialise the store in a forked child (copy-on-write) while this member keeps serving.

        Serialising a large store on the event loop held it for hundreds of milliseconds (O(state)
        each time). The child sees the state exactly as applied up to ``index``, writes the image
        to a file and exits; the parent picks it up and compacts Raft's log to ``index``.
        """
        path = Path(self.cfg.data_dir) / f"snapshot-{index}.building"
        pid = os.fork()
        if pid == 0:  # the child: no event loop, no logging, no locks; just bytes to a file
            code = 1
            try:
                with open(path, "wb") as f:
                    f.write(self._snapshot_bytes())
                code = 0
            finally:
                os._exit(code)
        self._snapshot_child = pid
        self._spawn(self._collect_snapshot(pid, path, index))

    async def _collect_snapshot(self, pid: int, path: Path, index: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
            if status != 0:
                log.warning("snapshot child %d failed (status %d); will retry", pid, status)
                self._snapshot_child = 0
                return
            data = await loop.run_in_executor(None, path.read_bytes)
        except BaseException:
            self._snapshot_child = 0
            raise
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

        def install() -> None:
            # Cleared only once the log is compacted, or the next apply would fork again for the
            # same stretch of log.
            self._snapshot_child = 0
            self._install_local_snapshot(index, data)

        self._submit(install)

    def _install_local_snapshot(self, index: int, data: bytes) -> None:
        """Compact the log to ``index`` with the state image ``data`` (runs inside the loop)."""
        if index <= self._snapshot_index:
            return  # a newer snapshot (e.g. from the leader) was installed meanwhile
        t0 = time.perf_counter()
        snap = self.raft.compact(index, data)
        self.storage.save(None, [], snap)
        self._snapshot_index = index
        log.info("snapshot at index %d (%d bytes, %.0f ms on the loop)", snap.meta.index, len(snap.data),
                 1000 * (time.perf_counter() - t0))

    # ------------------------------------------------------------------ requests

    def leader_id(self) -> int:
        return self.raft.leader_id

    @property
    def applied_index(self) -> int:
        return self._applied

    def has_leader(self) -> bool:
        return self.raft.leader_id != NONE

    def raft_term(self) -> int:
        return self.raft.term

    async def propose_kv(self, cmd: Any) -> Any:
        from conclave.kv.command import encode_command

        seq, fut = self._waiters.register()
        encoded = encode_command(cmd, seq)
        if len(encoded) + 9 > self.cfg.max_request_bytes:
            self._waiters.drop(seq)
            raise kverr.RequestTooLarge()
        self._refuse_unless_ready(seq)
        # Every command that arrives while the loop is busy (typically: during an fsync) goes
        # into the same log entry.
        self._kv_batch.append((seq, encoded))
        if len(self._kv_batch) == 1:
            self._submit(self._flush_kv_batch)
        return await self._await_applied(seq, fut)

    def _flush_kv_batch(self) -> None:
        batch, self._kv_batch = self._kv_batch, []
        origin = self.member_id.to_bytes(8, "big")
        start = 0
        while start < len(batch):
            end, size = start, 0
            while end < len(batch) and end - start < BATCH_SLOTS and (end == start or size < BATCH_BYTES_MAX):
                size += len(batch[end][1])
                end += 1
            chunk = batch[start:end]
            start = end
            if len(chunk) == 1:
                data = TAG_KV + origin + chunk[0][1]
            else:
                data = TAG_BATCH + origin + msgpack.packb([enc for _, enc in chunk], use_bin_type=True)
            self._propose_entry(data, [seq for seq, _ in chunk])

    def _refuse_unless_ready(self, seq: int) -> None:
        """Fail fast (and forget the waiter) when no proposal can succeed now."""
        if not self._running:
            self._waiters.drop(seq)
            raise kverr.Stopped()
        if self.raft.leader_id == NONE:
            self._waiters.drop(seq)
            raise kverr.NoLeader()

    def _propose_entry(self, data: bytes, seqs: list[int]) -> None:
        """Hand one entry to Raft (inside the loop); a refusal fails every request it carries."""
        try:
            self.raft.propose(data)
        except RaftNotLeader:
            for seq in seqs:
                self._waiters.resolve(seq, error=kverr.NoLeader())
        except ProposalDropped:
            for seq in seqs:
                self._waiters.resolve(seq, error=kverr.TooManyRequests())

    async def _await_applied(self, seq: int, fut: asyncio.Future[Any]) -> Any:
        try:
            return await asyncio.wait_for(fut, self.cfg.request_timeout_s)
        except TimeoutError:
            self._waiters.drop(seq)
            raise kverr.Timeout() from None

    async def _propose(self, seq: int, fut: asyncio.Future[Any], data: bytes) -> Any:
        self._refuse_unless_ready(seq)
        self._submit(lambda: self._propose_entry(data, [seq]))
        return await self._await_applied(seq, fut)

    async def read_barrier(self) -> None:
        """Wait until this member may serve a linearizable read (ReadIndex, batched).

        A round lost to a leader change is retried with the new leader until the request
        timeout, as etcd does; with no leader at all the read fails fast.
        """
        if not self._running:
            raise kverr.Stopped()
        if self.raft.leader_id == NONE:
            raise kverr.NoLeader()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.request_timeout_s
        while True:
            fut: asyncio.Future[int] = loop.create_future()
            first = not self._reads.queued
            self._reads.queued.append(fut)
            if first:
                self._submit(self._issue_read_index)
            try:
                await asyncio.wait_for(fut, max(0.001, deadline - loop.time()))
                return
            except TimeoutError:
                raise kverr.Timeout() from None
            except (kverr.LeaderChanged, kverr.NoLeader):
                if not self._running or loop.time() >= deadline:
                    raise
                await asyncio.sleep(self.cfg.heartbeat_interval_ms / 1000)

    def _issue_read_index(self) -> None:
        batch, self._reads.queued = self._reads.queued, []
        if not batch:
            return
        ctx = next(self._reads.ids).to_bytes(8, "big")
        try:
            self.raft.read_index(ctx)
        except RaftNotLeader:
            for f in batch:
                if not f.done():
                    f.set_exception(kverr.NoLeader())
            return
        self._reads.in_flight[ctx] = batch

    def _release_reads(self) -> None:
        if not self._reads.ready:
            return
        keep = []
        for index, futs in self._reads.ready:
            if index <= self._applied:
                for f in futs:
                    if not f.done():
                        f.set_result(index)
            else:
                keep.append((index, futs))
        self._reads.ready = keep

    async def _on_rpc(self, method: str, args: Any) -> Any:
        handler = getattr(self, "_rpc_" + method, None)
        if handler is None:
            raise kverr.EtcdError(f"unknown peer rpc {method!r}")
        return await handler(args)
