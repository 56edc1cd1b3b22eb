"""The Conclave member: drives the pure Raft core, the disk and the state machine.

Theory of operation
-------------------
One asyncio task, the *raft loop*, owns the ``RaftNode``; nothing else calls it. Every input
is a typed message (``ProposeKv``, ``Propose``, ``ProposeConfChange``, ``ReadIndex``,
``Tick``, ``PeerMessages``, ``Unreachable``, ``TransferLeader``, ``InstallSnapshot``) put on
ONE inbox by a named method of the node and dispatched by one ``match`` at the top of the
loop, never while a Ready is being persisted. One turn of the loop:

1. drain the inbox. Every ``ProposeKv`` drained together becomes one log entry (batching:
   the commands that arrived while the previous batch was being fsynced enter the log
   together) and every ``ReadIndex`` drained together shares one ReadIndex round;
2. ``rd = raft.ready()``; send ``rd.messages`` (a leader replicates while it persists);
3. ``storage.save(...)`` then ONE ``fsync`` in a worker thread for the whole batch;
4. send ``rd.persisted_messages`` (votes and acks only after the fsync);
5. apply ``rd.snapshot`` and ``rd.committed`` to the state machine, in order, resolving the
   futures of the requests this member proposed (entries carry ``(member, seq)`` ids);
6. resolve ReadIndex barriers whose index is applied and leadership transfers that ended;
   ``raft.advance(rd)``.

Writes on a follower travel to the leader inside Raft (PROP forwarding) and come back as
committed entries applied locally. Linearizable reads take a ReadIndex barrier and then
read the local store; serializable reads read the local store at once.

What stops a member, and what does not. A message whose handling raises fails only the
request(s) it carries (their futures get the error, the failure is counted in
``loop_errors`` and logged at most once a minute per message kind) and the loop goes on.
The driver's own misuse of the core (``LocalProtocolError``) is handled that way too, logged
as a bug. A peer message that breaks the protocol (``RemoteProtocolError``) is dropped,
counted and rate-limit logged by ``PeerGuard``. Only a failed write or fsync (``OSError``),
corrupt storage (``CorruptionError``) and a broken invariant of the core (``AssertionError``)
stop the member, as does anything raised while persisting or applying a Ready, where going
on could serve wrong data (crash-only: stop, say why, let a supervisor restart).

Time comes from an injected ``Clock`` (``MonotonicClock`` unless given): the ticker, lease
deadlines (grant at apply, keep-alive, expiry on the leader, the slack at promotion) and the
peer guard's log rate all read it, so tests drive them on virtual time. Request timeouts
use the event loop's clock.

Auth tokens are member-local (``self.tokens``, ``server/auth_tokens.py``, on the injected clock):
every member registers the simple token of each applied Authenticate, and drops a user's tokens
when its deletion or password change applies (all of them when auth is disabled, or a snapshot
replaces the state), so a token obtained on one member works on every member.
Metrics (``server/metrics.py``, etcd's names): the loop bumps plain counters once per batch
(per Ready applied, per entry proposed, per ReadIndex round); the WAL, the snapshotter and the
transport report through hooks the node injects; gauges (leader, indexes, keys) are read from
this node when ``/metrics`` is scraped, so the hot path pays nothing for them.

Groups (``server/groups.py``): a sharded member runs one Node per Raft group, each with its
``group_id``, its own data dir and a view of the member's shared transport (the ``transport``
factory); a Node built without one owns its transport, as a one-group member always did.

Peer RPCs are a fixed, typed table (``PeerRpc``): the node serves ``cluster_info`` itself and
the lease and promotion calls through the ``PeerRpcHandlers`` the backend registers with
``serve_peer_rpcs``; an unknown or not-yet-served method is answered with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from conclave.kv import auth as kvauth
from conclave.kv import errors as kverr
from conclave.kv.command import Checked
from conclave.kv.lease import Lessor
from conclave.kv.watch import WatchHub
from conclave.machine import Member, StateMachine, entry, rules
from conclave.raft.codec import conf_state_from_tuple, conf_state_to_tuple
from conclave.raft.errors import LocalProtocolError, ProposalDropped, RaftError
from conclave.raft.errors import NotLeader as RaftNotLeader
from conclave.raft.node import RaftNode
from conclave.raft.types import (
    NONE,
    ConfChange,
    ConfChangeSingle,
    Config,
    ConfState,
    Entry,
    Message,
    MessageType,
    PersistedState,
    Ready,
    Role,
)
from conclave.server.auth_tokens import TokenConfigError, TokenProvider, provider_from_flag
from conclave.server.config import ConfigError, ServerConfig, is_tls_url, parse_url
from conclave.server.metrics import MemberMetrics
from conclave.server.peer_guard import PeerGuard, reachable_members
from conclave.server.snapshotter import Job, SnapshotError, Snapshotter, read_file
from conclave.server.transport import PeerTls, Transport
from conclave.storage.base import CorruptionError

log = logging.getLogger("conclave.node")

# Serialise snapshots in a forked child (server/snapshotter.py) instead of on the event loop.
SNAPSHOT_IN_CHILD = True
# Where this member counts its starts: each start proposes with sequence numbers of a new epoch
# (``entry.seq_base``), so the state machine's once-only table never mistakes a restarted
# member's request for one it already applied.
SEQ_EPOCH_FILE = "seq-epoch"
# Errors that stop the member when raised while the loop handles a message.
FATAL_ERRORS: tuple[type[BaseException], ...] = (AssertionError, OSError, CorruptionError)
LOOP_ERROR_LOG_INTERVAL_MS = 60_000
# Applied commands that change which tokens are valid (Node._token_effect).
_TOKEN_EFFECTS = frozenset({kvauth.AuthenticateRequest, kvauth.UserDeleteRequest,
                            kvauth.UserChangePasswordRequest, kvauth.AuthDisableRequest})  # fmt: skip
SLOW_APPLY_S = 0.1  # etcd's warnApplyDuration: an apply slower than this counts in etcd_server_slow_apply_total

__all__ = [
    "Clock", "ConfChangePending", "InstallSnapshot", "LeaderTransferTimeout", "MonotonicClock", "Node",
    "PeerMessages", "PeerRpc", "PeerRpcHandlers", "Propose", "ProposeConfChange", "ProposeKv", "ReadIndex",
    "RequestFailed", "Tick", "TransferLeader", "UnknownPeerRpc", "Unreachable", "now_ms",
]


# ---------------------------------------------------------------------------- time


class Clock(Protocol):
    """Where the member reads time and waits for it (injected; tests pass a virtual one)."""

    def now_ms(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def now_ms() -> int:
    """The monotonic clock in ms (kept for code that has no node at hand; the node reads ``clock``)."""
    return time.monotonic_ns() // 1_000_000


# ---------------------------------------------------------------------------- errors


class ConfChangePending(kverr.EtcdError):
    """The leader has a configuration change in flight: the caller waits for it, then checks again."""

    code = "UNAVAILABLE"
    message = "etcdserver: a configuration change is already pending"


class LeaderTransferTimeout(kverr.EtcdError):
    """The core gave the transfer up (the target did not take over within an election
    timeout): etcd's ErrTimeoutLeaderTransfer."""

    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, leader transfer took too long"


class RequestFailed(kverr.EtcdError):
    """A request failed inside the raft loop for a reason that is not the client's (a bug)."""

    code = "INTERNAL"
    message = "conclave: the request failed inside the member's raft loop"


class UnknownPeerRpc(kverr.EtcdError):
    code = "UNIMPLEMENTED"
    message = "conclave: unknown peer rpc"


# ---------------------------------------------------------------------------- the inbox


@dataclass(frozen=True, slots=True)
class ProposeKv:
    """One encoded client command; every one drained together goes into one entry."""

    seq: int
    command: bytes


@dataclass(frozen=True, slots=True)
class Propose:
    """One framed entry carrying the requests ``seqs`` of this member."""

    data: bytes
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ProposeConfChange:
    cc: ConfChange
    seq: int


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """A linearizable read waiting for a barrier; resolved with the read index once applied."""

    future: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class Tick:
    now_ms: int


@dataclass(frozen=True, slots=True)
class PeerMessages:
    msgs: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Unreachable:
    node_id: int


@dataclass(frozen=True, slots=True)
class TransferLeader:
    target: int
    future: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Compact the log to ``index`` with the image ``data`` (a local snapshot was built)."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _KvBatch:
    """The ``ProposeKv`` of one drain, coalesced by the loop."""

    items: tuple[ProposeKv, ...]


@dataclass(frozen=True, slots=True)
class _ReadRound:
    """The ``ReadIndex`` of one drain, coalesced into one Raft read round."""

    futures: tuple[asyncio.Future[int], ...]


Inbound = (ProposeKv | Propose | ProposeConfChange | ReadIndex | Tick | PeerMessages | Unreachable
           | TransferLeader | InstallSnapshot)
_Work = Inbound | _KvBatch | _ReadRound


def _coalesce(batch: list[Inbound]) -> list[_Work]:
    """Replace the commands (and the reads) of one drain by one batch, at the first one's place."""
    kv = tuple(m for m in batch if isinstance(m, ProposeKv))
    reads = tuple(m.future for m in batch if isinstance(m, ReadIndex))
    out: list[_Work] = []
    for m in batch:
        if isinstance(m, ProposeKv):
            if kv:
                out.append(_KvBatch(kv))
                kv = ()
        elif isinstance(m, ReadIndex):
            if reads:
                out.append(_ReadRound(reads))
                reads = ()
        else:
            out.append(m)
    return out


# ---------------------------------------------------------------------------- peer RPCs


class PeerRpc(enum.StrEnum):
    """Every RPC one member may ask another; the wire carries the value."""

    CLUSTER_INFO = "cluster_info"
    KEEPALIVE = "keepalive"
    TTL = "ttl"
    PROMOTE = "promote"


class PeerRpcHandlers(Protocol):
    """What the backend serves to peers (on the leader)."""

    async def keepalive(self, lease_id: int) -> int: ...

    async def ttl(self, lease_id: int) -> int: ...

    async def promote(self, member_id: int) -> bool: ...


_RPC_ARG_INT = frozenset({PeerRpc.KEEPALIVE, PeerRpc.TTL, PeerRpc.PROMOTE})


class _Waiters:
    """Futures of requests this member proposed, keyed by sequence number."""

    def __init__(self, first_seq: int = 1) -> None:
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._seq = itertools.count(first_seq)

    def start_at(self, first_seq: int) -> None:
        self._seq = itertools.count(first_seq)

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


def _fail_future(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


class _ReadBarrier:
    """ReadIndex rounds in flight (by context) and answered rounds waiting for apply."""

    def __init__(self) -> None:
        self.in_flight: dict[bytes, list[asyncio.Future[int]]] = {}
        self.ready: list[tuple[int, list[asyncio.Future[int]]]] = []
        self.ids = itertools.count(1)


class Node:
    """One Conclave member. Create, ``await start()``, serve, ``await stop()``."""

    def __init__(self, cfg: ServerConfig, *, storage_factory: Callable[[str], Any] | None = None,
                 clock: Clock | None = None, group_id: int = 0,
                 transport: Callable[[Node], Awaitable[Any]] | None = None) -> None:
        self.cfg = cfg
        # Several Raft groups per member (server/groups.py): this node's group, and the factory of
        # its view of the member's shared transport (None: this node owns its transport, as always).
        self.group_id = group_id
        self._transport_factory = transport
        self.member_id = cfg.member_id
        self.cluster_id = cfg.cluster_id
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._boot_members: dict[int, Member] = {}  # until the state machine exists
        self._sm: StateMachine | None = None
        self._storage_factory = storage_factory
        self.limits = rules.Limits(
            max_request_bytes=cfg.max_request_bytes, quota_backend_bytes=cfg.quota_backend_bytes,
            max_txn_ops=cfg.max_txn_ops, min_lease_ttl_s=rules.min_lease_ttl_s(cfg.election_timeout_ms),
        )
        self._inbox: list[Inbound] = []
        self._wake = asyncio.Event()
        self._in_ready = False
        self._waiters = _Waiters()
        self._reads = _ReadBarrier()
        self._transfers: list[TransferLeader] = []
        self._rpcs: dict[PeerRpc, Callable[[Any], Awaitable[Any]]] = {}
        self.loop_errors: Counter[str] = Counter()
        """Messages whose handling raised (and failed their request), by message kind."""
        self._loop_error_logged: dict[str, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._fsync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._running = False
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self._snapshot_index = 0
        self.watch_callbacks: dict[int, Callable[[], None]] = {}
        self._joined_members: list[Member] = []
        self.fatal = False
        self.peer_guard = PeerGuard(self.member_id, clock=lambda: self.clock.now_ms() / 1000)
        self._closed = False
        self._bootstrap_conf = ConfState()
        self._snapshot_child = 0  # the pid of the periodic snapshot's child until its image is installed
        self.snapshotter = Snapshotter(cfg.data_dir)
        self._background: set[asyncio.Task[Any]] = set()
        self._publishing = False
        try:
            self.tokens: TokenProvider = provider_from_flag(cfg.auth_token, cfg.auth_token_ttl, self.clock.now_ms)
        except TokenConfigError as exc:
            raise ConfigError(str(exc)) from None
        # Counters bumped once per batch; gauges read from this node at scrape time (server/metrics.py).
        self.metrics = MemberMetrics(extensive=cfg.metrics == "extensive")
        self.metrics.bind(self)
        self.snapshotter.on_finished = self.metrics.snapshot_finished

    # ------------------------------------------------------------------ the state machine

    @property
    def sm(self) -> StateMachine:
        assert self._sm is not None, "the member has not started"
        return self._sm

    @property
    def members(self) -> dict[int, Member]:
        return self._sm.members if self._sm is not None else self._boot_members

    @property
    def store(self) -> Any:
        return self.sm.store

    @property
    def lessor(self) -> Lessor:
        return self.sm.leases

    def _next_seq_epoch(self) -> int:
        """Count this start in the data dir (durably) and return its number."""
        path = Path(self.cfg.data_dir) / SEQ_EPOCH_FILE
        try:
            epoch = int(path.read_text().strip() or "0") + 1
        except FileNotFoundError:
            epoch = 1
        except ValueError:
            raise ConfigError(f"{path} is corrupt (expected a number)") from None
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(epoch))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return epoch

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

        return DiskStorage(self.cfg.data_dir, max_snapshots=self.cfg.max_snapshots, max_wals=self.cfg.max_wals,
                           observer=self.metrics.storage_observer())

    async def start(self) -> None:
        Path(self.cfg.data_dir).mkdir(parents=True, exist_ok=True)
        fresh = self._check_data_dir()
        self.peer_guard.self_id = self.member_id  # the data dir may name another id than the flags
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
                    self._boot_members[ids[name]] = Member(ids[name], name, list(urls))
                self.storage.save_bootstrap(ConfState(voters=frozenset(ids.values())))
                self.storage.sync()
            self._write_meta()
        persisted: PersistedState = self.storage.load()
        self._bootstrap_conf = persisted.conf_state
        # Authenticate entries this member's own log replays at start are old logins: their tokens
        # expired or died with the previous process and must not come back (Node._token_effect).
        self._replayed_index = persisted.entries[-1].index if persisted.entries else 0
        if persisted.snapshot is not None:
            self._sm = StateMachine.restore(persisted.snapshot.data, index=persisted.snapshot.meta.index)
            self._snapshot_index = persisted.snapshot.meta.index
        else:
            boot = self._boot_members
            if not boot and self._joined_members:
                boot = {m.id: m for m in self._joined_members}
            if not boot:
                ids = self.cfg.initial_member_ids()
                for name, urls in self.cfg.initial_cluster.items():
                    if ids[name] in persisted.conf_state.all_nodes():
                        boot[ids[name]] = Member(ids[name], name, list(urls))
            self._sm = StateMachine.bootstrap(self.cluster_id, boot.values())
        self._waiters.start_at(entry.seq_base(self._next_seq_epoch()))
        # A renamed member (same data dir, new --name) keeps its id; _on_tick publishes the new name.
        self.hub = WatchHub(self.store, notify=self._notify_watcher)
        self.auth_on = self.sm.auth.enabled
        raft_cfg = Config(
            id=self.member_id,
            election_tick=self.cfg.election_ticks,
            heartbeat_tick=1,
            pre_vote=True,
            check_quorum=True,
        )
        self.raft = RaftNode(raft_cfg, persisted, random.Random(self.member_id ^ int(time.time_ns())))
        self._last_leader = NONE
        if self._transport_factory is not None:
            self.transport: Any = await self._transport_factory(self)  # a view of the member's shared transport
        else:
            peer = parse_url(self.cfg.listen_peer_urls[0], "listen-peer-urls")
            self.transport = Transport(self.member_id, self.cluster_id, self._on_peer_messages, self._on_rpc,
                                       self._on_unreachable, tls=PeerTls.from_config(self.cfg), metrics=self.metrics)
            await self.transport.listen(peer.host, peer.port)
        self._sync_peers()
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._raft_loop(), name="raft-loop"))
        self._tasks.append(loop.create_task(self._ticker(), name="ticker"))
        self._wake.set()  # a restarted member applies what its log has committed without waiting for a tick

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
                    tls = PeerTls.from_config(self.cfg) if is_tls_url(url) else None
                    cid, wires = await fetch_cluster_info((hp.host, hp.port), 3.0, tls=tls)
                except (TimeoutError, OSError, Exception) as exc:
                    errors.append(f"{url}: {exc}")
                    continue
                self.cluster_id = int(cid)
                self._boot_members = {m.id: m for m in (Member.from_wire(w) for w in wires[0])}
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
        self._fail_pending(kverr.Stopped())
        self.snapshotter.close()
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
                self.transport.set_peer(mid, (hp.host, hp.port), secure=is_tls_url(m.peer_urls[0]))
        for mid in list(self.transport.peers()):
            if mid not in self.members:
                self.transport.remove_peer(mid)

    # ------------------------------------------------------------------ the raft loop

    def _post(self, msg: Inbound) -> None:
        self._inbox.append(msg)
        self._wake.set()

    def _on_peer_messages(self, msgs: list[Message]) -> None:
        self._post(PeerMessages(tuple(msgs)))

    def _on_unreachable(self, node_id: int) -> None:
        self._post(Unreachable(node_id))

    def idle(self) -> bool:
        """Nothing queued and nothing to persist or apply (tests on virtual time wait for it)."""
        return not self._inbox and not self._in_ready and not self.raft.has_ready()

    async def _ticker(self) -> None:
        clock, interval = self.clock, self.cfg.heartbeat_interval_ms
        nxt = clock.now_ms()
        while True:
            nxt += interval
            await clock.sleep(max(0, nxt - clock.now_ms()) / 1000)
            now = clock.now_ms()
            if now - nxt > 5 * interval:
                nxt = now  # we were starved; do not fire a burst of ticks
            self._post(Tick(now))

    def _dispatch(self, msg: _Work) -> None:
        """The one place an input reaches the core (runs inside the loop)."""
        match msg:
            case _KvBatch(items):
                self._propose_kv_batch(items)
            case Propose(data, seqs):
                self._propose_entry(data, seqs)
            case ProposeConfChange(cc, seq):
                self._propose_conf_change(cc, seq)
            case _ReadRound(futures):
                self._issue_read_index(futures)
            case Tick(now):
                self.raft.tick()
                self._on_tick(now)
            case PeerMessages(msgs):
                # Through the guard: non-members and protocol breakers are dropped, not fatal.
                members = reachable_members(self.raft.conf_state, self.members)
                for m in msgs:
                    self.peer_guard.step(self.raft, m, members)
            case Unreachable(node_id):
                self.raft.step(Message(MessageType.UNREACHABLE, to=self.member_id, frm=node_id, term=0))
            case TransferLeader():
                self._start_transfer(msg)
            case InstallSnapshot(index, data):
                # Cleared only once the log is compacted, or the next apply would fork again for
                # the same stretch of log.
                self._snapshot_child = 0
                self._install_local_snapshot(index, data)
            case _:
                raise LocalProtocolError(f"unknown inbox message {msg!r:.80}")

    def _run(self, msg: _Work) -> None:
        """Dispatch ``msg``; a failure fails its own request(s) only, unless it is fatal."""
        try:
            self._dispatch(msg)
        except FATAL_ERRORS:
            raise
        except Exception as exc:
            self._fail(msg, exc)

    def _fail(self, msg: _Work, exc: Exception) -> None:
        kind = type(msg).__name__.lstrip("_")
        self.loop_errors[kind] += 1
        now, last = self.clock.now_ms(), self._loop_error_logged.get(kind)
        if last is None or now - last >= LOOP_ERROR_LOG_INTERVAL_MS:
            self._loop_error_logged[kind] = now
            misuse = isinstance(exc, LocalProtocolError)
            what = "a bug in the driver (it misused the Raft core)" if misuse else "an error"
            log.error("%s failed inside the raft loop with %s; its request fails, the member goes on "
                      "(%d such failures so far)", kind, what, self.loop_errors[kind], exc_info=exc)
        err = exc if isinstance(exc, kverr.EtcdError) else RequestFailed(f"{type(exc).__name__}: {exc}")
        match msg:
            case _KvBatch(items):
                for item in items:
                    self._waiters.resolve(item.seq, error=err)
            case Propose(_, seqs):
                for seq in seqs:
                    self._waiters.resolve(seq, error=err)
            case ProposeConfChange(_, seq):
                self._waiters.resolve(seq, error=err)
            case _ReadRound(futures):
                for f in futures:
                    _fail_future(f, err)
            case TransferLeader(_, future):
                _fail_future(future, err)
                self._transfers = [t for t in self._transfers if t is not msg]
            case _:
                pass  # nobody waits on it: counted and logged

    def _fail_pending(self, error: BaseException) -> None:
        self._waiters.fail_all(error)
        for t in self._transfers:
            _fail_future(t.future, error)
        self._transfers.clear()

    def _on_tick(self, now: int) -> None:
        """Periodic duties: catch up slow watchers; on the leader, expire leases; publish self."""
        if self.hub.unsynced_count:
            self.hub.catch_up()
        self._check_transfers()
        if self.raft.leader_id == NONE or not self._running:
            return
        if self.lessor.is_primary and self.raft.role == Role.LEADER:
            for lid in self.lessor.expired(now):
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
        data = entry.encode_lease_expiry(lease_id)
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
            await self.propose_member_attrs(
                Member(self.member_id, self.cfg.name, list(self.cfg.initial_advertise_peer_urls),
                       list(self.cfg.advertise_client_urls), list(self.cfg.listen_native_urls)))
        finally:
            self._publishing = False

    async def _raft_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._inbox = self._inbox, []
                for msg in _coalesce(batch):
                    self._run(msg)
                self._check_transfers()
                while self.raft.has_ready():
                    rd = self.raft.ready()
                    self._in_ready = True
                    try:
                        await self._handle_ready(rd, loop)
                    finally:
                        self._in_ready = False
                    if self._inbox:
                        self._wake.set()
                        break
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # An assertion in the core, a failed fsync, corrupt storage, a state machine bug:
            # continuing could serve wrong data. Crash-only: stop, say why, exit non-zero.
            log.critical("fatal error in the raft loop; stopping this member", exc_info=exc)
            self.stop_reason = f"fatal: {type(exc).__name__}: {exc}"
            self.fatal = True
            self._running = False
            self._fail_pending(kverr.Stopped())
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
        if rd.snapshot is not None and rd.snapshot.meta.index > self.sm.applied_index:
            self._restore_snapshot(rd.snapshot.data, rd.snapshot.meta.index)
            self._snapshot_index = rd.snapshot.meta.index
            self._sync_peers()
        if rd.committed:
            t0 = time.perf_counter()
            self._apply(rd.committed)
            if time.perf_counter() - t0 > SLOW_APPLY_S:
                self.metrics.slow_apply_total += 1
        for rs in rd.read_states:
            waiters = self._reads.in_flight.pop(rs.context, None)
            if waiters:
                self._reads.ready.append((rs.index, waiters))
        self.raft.advance(rd)
        self._release_reads()
        self._check_transfers()
        self._maybe_snapshot()

    def _on_soft_state(self, leader: int, role: Role) -> None:
        if leader != self._last_leader:
            old, self._last_leader = self._last_leader, leader
            if leader != NONE:
                self.metrics.leader_changes_total += 1
            log.info("leader is now %x (was %x), term %d", leader, old, self.raft.term)
            # Reads waiting on the old leader's ReadIndex will never be answered.
            for futs in self._reads.in_flight.values():
                self.metrics.read_indexes_failed_total += len(futs)
                for f in futs:
                    _fail_future(f, kverr.LeaderChanged())
            self._reads.in_flight.clear()
        if role == Role.LEADER and not self.lessor.is_primary:
            # No lease may expire because of a failover: restart every deadline with slack.
            self.lessor.promote(self.clock.now_ms(), self.cfg.election_timeout_ms)
        elif role != Role.LEADER and self.lessor.is_primary:
            self.lessor.demote()

    # ------------------------------------------------------------------ apply

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        now = self.clock.now_ms()
        count = self.metrics.count_applied
        for e in entries:
            out = self.sm.apply(e, now)
            if out.results:
                count(out.results)
            self.auth_on = self.sm.auth.enabled
            if out.events:
                self.hub.publish(out.events)
            for r in out.results:
                if r.origin == self.member_id:
                    self._waiters.resolve(r.seq, r.response, r.error)
                if r.command.__class__ in _TOKEN_EFFECTS and r.error is None:
                    self._token_effect(r.command, r.response, e.index)
            if out.members_changed:
                self._sync_peers()
            if self.member_id in out.removed:
                self.stop_reason = "this member was removed from the cluster"
                log.warning("%s; stopping", self.stop_reason)
                asyncio.get_running_loop().call_later(0.5, self.stopped.set)

    def _token_effect(self, cmd: Any, response: Any, index: int) -> None:
        """Keep this member's tokens in step with an applied auth command (entry ``index``)."""
        if isinstance(cmd, Checked):
            cmd = cmd.command
        if isinstance(cmd, kvauth.AuthenticateRequest):
            if isinstance(response, kvauth.AuthenticateResponse) and response.token and index > self._replayed_index:
                self.tokens.register(response.token, response.name or cmd.name)
        elif isinstance(cmd, kvauth.UserDeleteRequest | kvauth.UserChangePasswordRequest):
            self.tokens.invalidate_user(cmd.name)
        elif isinstance(cmd, kvauth.AuthDisableRequest):
            self.tokens.invalidate_all()

    def _notify_watcher(self, watcher: Any) -> None:
        cb = self.watch_callbacks.get(watcher.id)
        if cb is not None:
            cb()

    # ------------------------------------------------------------------ snapshots

    def _restore_snapshot(self, data: bytes, index: int) -> None:
        self._sm = StateMachine.restore(data, index=index)
        self.auth_on = self._sm.auth.enabled
        self.hub.replace_store(self.sm.store)
        # The entries the image replaces may have deleted users or changed passwords.
        self.tokens.invalidate_all()
        log.info("state restored from a snapshot at index %d (this member's auth tokens were dropped)", index)
        if self.raft.role == Role.LEADER:
            # Deadlines are member-local: a leader restarts every one with slack.
            self.sm.leases.promote(self.clock.now_ms(), self.cfg.election_timeout_ms)

    def _maybe_snapshot(self) -> None:
        # Members apply the same entries, so with one threshold all would serialise their store and
        # fsync a large file at the same moment, and commits would wait on the slowest. Each member
        # waits a little longer than the count, by an amount fixed by its id, so at most one member
        # of a healthy cluster is busy snapshotting at a time.
        stagger = (self.member_id % 997) * self.cfg.snapshot_count // 2000
        if self._snapshot_child or self.sm.applied_index - self._snapshot_index < self.cfg.snapshot_count + stagger:
            return
        if not (SNAPSHOT_IN_CHILD and hasattr(os, "fork")):
            self._install_local_snapshot(self.sm.applied_index, self.sm.snapshot())
        elif self.snapshotter.may_start():  # not while a backup child runs, nor in a failure's backoff
            self._snapshot_in_child(self.sm.applied_index)

    def _snapshot_in_child(self, index: int) -> None:
        """Serialise the store in a forked child (``conclave.server.snapshotter``) while this member serves.

        The child sees the state exactly as applied up to ``index``, writes the image to a file and
        exits; the parent picks it up and compacts Raft's log to ``index``. A child that fails or
        misses its deadline is killed and the snapshot retried later; the member never waits for it.
        """
        sm = self.sm

        def write(f: Any) -> None:  # runs in the child, on its copy of the state
            f.write(sm.snapshot())

        try:
            job = self.snapshotter.start(write, what="snapshot", db_bytes=sm.store.db_size)
        except SnapshotError as exc:  # fork failed: keep serving, try again after the backoff
            log.warning("%s; this member keeps serving and retries the snapshot later", exc)
            return
        self._snapshot_child = job.pid
        self._spawn(self._collect_snapshot(job, index))

    async def _collect_snapshot(self, job: Job, index: int) -> None:
        try:
            path = await job.wait()
            try:
                data = await read_file(path)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
        except SnapshotError as exc:
            self._snapshot_child = 0
            if self._running:  # not the kill of a member that is stopping
                log.warning("%s; this member keeps serving and retries the snapshot in %.1f s", exc,
                            max(0.0, self.snapshotter.not_before - time.monotonic()))
            return
        except BaseException:
            self._snapshot_child = 0
            raise
        self._post(InstallSnapshot(index, data))

    def _install_local_snapshot(self, index: int, data: bytes) -> None:
        """Compact the log to ``index`` with the state image ``data`` (runs inside the loop).

        Cheap: the image is kept as is and the storage writes the file in its fsync thread.
        """
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
        return self.sm.applied_index

    def has_leader(self) -> bool:
        return self.raft.leader_id != NONE

    def is_leader(self) -> bool:
        return self.raft.role == Role.LEADER

    def raft_term(self) -> int:
        return self.raft.term

    def pending_proposals(self) -> int:
        """Requests this member proposed that are not applied yet (etcd_server_proposals_pending)."""
        return len(self._waiters._futures)

    def now_ms(self) -> int:
        """This member's clock (lease deadlines are kept on it)."""
        return self.clock.now_ms()

    async def propose_kv(self, cmd: Any) -> Any:
        from conclave.kv.command import encode_command

        seq, fut = self._waiters.register()
        encoded = encode_command(cmd, seq)
        try:
            rules.check_size(len(encoded) + entry.FRAME_OVERHEAD, self.limits)
        except kverr.EtcdError:
            self._waiters.drop(seq)
            raise
        self._refuse_unless_ready(seq)
        # Every command that arrives while the loop is busy (typically: during an fsync) goes
        # into the same log entry: the loop coalesces the ProposeKv of one drain.
        self._post(ProposeKv(seq, encoded))
        return await self._await_applied(seq, fut)

    async def propose_member_attrs(self, member: Member) -> None:
        """Replicate a member's attributes (name, URLs); returns once applied here."""
        seq, fut = self._waiters.register()
        await self._propose(seq, fut, entry.encode_member_attrs(self.member_id, seq, member))

    async def propose_conf_change(self, changes: Sequence[ConfChangeSingle], members: Sequence[Member]) -> None:
        """A Raft configuration change carrying the attributes of the members it adds.

        Raises ``ConfChangePending`` while the leader has another change in flight (the
        caller waits and checks again), NoLeader, Timeout, or an EtcdError for a refusal.
        """
        if self.raft.leader_id == NONE:
            raise kverr.NoLeader()
        seq, fut = self._waiters.register()
        ctx = entry.encode_conf_context(self.member_id, seq, list(members))
        self._refuse_unless_ready(seq)
        self._post(ProposeConfChange(ConfChange(changes=tuple(changes), context=ctx), seq))
        await self._await_applied(seq, fut)

    async def transfer_leadership(self, target: int) -> None:
        """Move leadership to ``target`` (on the leader); returns once ``target`` leads.

        Raises NotLeader, BadLeaderTransferee, LeaderChanged (another member took over),
        LeaderTransferTimeout (the core gave the transfer up) or Timeout; never hangs.
        """
        if not self._running:
            raise kverr.Stopped()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        msg = TransferLeader(target, fut)
        self._post(msg)
        try:
            await asyncio.wait_for(fut, self.cfg.request_timeout_s)
        except TimeoutError:
            raise kverr.Timeout() from None
        finally:
            self._transfers = [t for t in self._transfers if t is not msg]

    def _propose_kv_batch(self, items: tuple[ProposeKv, ...]) -> None:
        for start, end in entry.split_batches([it.command for it in items]):
            chunk = items[start:end]
            data = entry.frame_encoded(self.member_id, [it.command for it in chunk])
            self.metrics.entry_commands.observe(end - start)
            # One entry at a time: a failure fails the requests of that entry only.
            self._run(Propose(data, tuple(it.seq for it in chunk)))

    def _refuse_unless_ready(self, seq: int) -> None:
        """Fail fast (and forget the waiter) when no proposal can succeed now."""
        if not self._running:
            self._waiters.drop(seq)
            self.metrics.proposals_failed_total += 1
            raise kverr.Stopped()
        if self.raft.leader_id == NONE:
            self._waiters.drop(seq)
            self.metrics.proposals_failed_total += 1
            raise kverr.NoLeader()

    def _propose_entry(self, data: bytes, seqs: Sequence[int]) -> None:
        """Hand one entry to Raft (inside the loop); a refusal fails every request it carries."""
        try:
            self.raft.propose(data)
        except RaftNotLeader:
            self.metrics.proposals_failed_total += len(seqs)
            for seq in seqs:
                self._waiters.resolve(seq, error=kverr.NoLeader())
        except ProposalDropped:
            self.metrics.proposals_failed_total += len(seqs)
            for seq in seqs:
                self._waiters.resolve(seq, error=kverr.TooManyRequests())

    def _propose_conf_change(self, cc: ConfChange, seq: int) -> None:
        try:
            self.raft.propose_conf_change(cc)
        except RaftNotLeader:
            self._waiters.resolve(seq, error=kverr.NoLeader())
        except ProposalDropped as exc:
            pending = "already pending" in exc.reason
            err = ConfChangePending() if pending else kverr.EtcdError(f"etcdserver: {exc}")
            self._waiters.resolve(seq, error=err)
        except LocalProtocolError:
            raise  # a bug here, not a refusal: the loop fails the request and reports it
        except RaftError as exc:
            self._waiters.resolve(seq, error=kverr.EtcdError(f"etcdserver: {exc}"))

    def _start_transfer(self, msg: TransferLeader) -> None:
        if msg.future.done():
            return  # the caller gave up already
        if self.raft.role != Role.LEADER:
            msg.future.set_exception(kverr.NotLeader())
            return
        try:
            self.raft.transfer_leadership(msg.target)
        except RaftNotLeader:
            msg.future.set_exception(kverr.NotLeader())
            return
        except LocalProtocolError:
            raise
        except RaftError:  # not a voter (any more): removed, or a learner
            msg.future.set_exception(kverr.BadLeaderTransferee())
            return
        self._transfers.append(msg)

    def _check_transfers(self) -> None:
        """End the leadership transfers that succeeded, lost a race, or that the core gave up."""
        if not self._transfers:
            return
        leader, keep = self.raft.leader_id, []
        for t in self._transfers:
            if t.future.done():
                continue
            if leader == t.target:
                t.future.set_result(None)
            elif leader not in (NONE, self.member_id):
                t.future.set_exception(kverr.LeaderChanged())
            elif self.raft.role == Role.LEADER and self.raft.lead_transferee == NONE:
                # Still leading and no transfer in progress: the core gave it up (the target did
                # not take over within an election timeout, or it left the configuration). A
                # transfer replaced by another one waits: its target may still win the race.
                t.future.set_exception(LeaderTransferTimeout())
            else:
                keep.append(t)
        self._transfers = keep

    async def _await_applied(self, seq: int, fut: asyncio.Future[Any]) -> Any:
        try:
            return await asyncio.wait_for(fut, self.cfg.request_timeout_s)
        except TimeoutError:
            self._waiters.drop(seq)
            self.metrics.proposals_failed_total += 1
            raise kverr.Timeout() from None

    async def _propose(self, seq: int, fut: asyncio.Future[Any], data: bytes) -> Any:
        self._refuse_unless_ready(seq)
        self._post(Propose(data, (seq,)))
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
            self._post(ReadIndex(fut))
            try:
                await asyncio.wait_for(fut, max(0.001, deadline - loop.time()))
                return
            except TimeoutError:
                raise kverr.Timeout() from None
            except (kverr.LeaderChanged, kverr.NoLeader):
                if not self._running or loop.time() >= deadline:
                    raise
                await asyncio.sleep(self.cfg.heartbeat_interval_ms / 1000)

    def _issue_read_index(self, futures: tuple[asyncio.Future[int], ...]) -> None:
        batch = [f for f in futures if not f.done()]
        if not batch:
            return
        ctx = next(self._reads.ids).to_bytes(8, "big")
        try:
            self.raft.read_index(ctx)
        except RaftNotLeader:
            self.metrics.read_indexes_failed_total += len(batch)
            for f in batch:
                _fail_future(f, kverr.NoLeader())
            return
        self.metrics.read_index_batch.observe(len(batch))
        self._reads.in_flight[ctx] = batch

    def _release_reads(self) -> None:
        if not self._reads.ready:
            return
        keep = []
        for index, futs in self._reads.ready:
            if index <= self.sm.applied_index:
                for f in futs:
                    if not f.done():
                        f.set_result(index)
            else:
                keep.append((index, futs))
        self._reads.ready = keep

    # ------------------------------------------------------------------ peer RPCs

    def serve_peer_rpcs(self, handlers: PeerRpcHandlers) -> None:
        """Register the handlers of the RPCs peers send to this member (once, by the backend)."""
        self._rpcs = {PeerRpc.KEEPALIVE: handlers.keepalive, PeerRpc.TTL: handlers.ttl,
                      PeerRpc.PROMOTE: handlers.promote}

    def cluster_info(self) -> list[Any]:
        """The cluster id, the members and the founding configuration (what a joiner needs)."""
        members = [m.to_wire() for m in self.members.values()]
        return [self.cluster_id, [members, conf_state_to_tuple(self._bootstrap_conf)]]

    async def call_peer(self, member_id: int, rpc: PeerRpc, args: Any, timeout: float | None = None) -> Any:
        """Ask member ``member_id`` to run ``rpc``; raises RemoteError, PeerUnavailable, TimeoutError."""
        t = self.cfg.request_timeout_s if timeout is None else timeout
        return await self.transport.call(member_id, rpc.value, args, timeout=t)

    async def _on_rpc(self, method: str, args: Any) -> Any:
        """A peer's RPC: looked up in the table; an unknown one is an error for the caller."""
        try:
            rpc = PeerRpc(method)
        except ValueError:
            raise UnknownPeerRpc(f"{method!r:.60}") from None
        if rpc is PeerRpc.CLUSTER_INFO:
            return self.cluster_info()
        handler = self._rpcs.get(rpc)
        if handler is None:
            raise UnknownPeerRpc(f"{rpc.value} is not served by this member")
        if rpc in _RPC_ARG_INT and type(args) is not int:
            raise kverr.EtcdError(f"conclave: peer rpc {rpc.value} takes an integer, got {type(args).__name__}")
        return await handler(args)
