"""``NodeBackend``: the domain calls of the client APIs, implemented on a ``Node``.

Theory of operation: every client protocol (etcd gRPC, the native protocol) maps its
wire messages onto these calls, so the rules live here once: validation before a request
enters the log (bad requests never get replicated), request-size and quota checks,
linearizable reads through a ReadIndex barrier, serializable reads from the local store,
lease keep-alives and TTL queries forwarded to the leader (only it tracks deadlines),
membership changes as Raft configuration changes carrying the member's attributes.

Auth (etcd v3 users, roles and permissions; rules in ``conclave.kv.auth``): every call takes the
caller's ``AuthInfo``. While the auth store is disabled nothing is resolved or checked and writes
are proposed unwrapped (the hot path of a cluster that never enabled auth is unchanged). Once it
is enabled, ``_caller`` resolves the token (``server/auth_tokens.py``; a JWT older than the store's
revision: ``revision of auth store is old``) or, without one, the client certificate's CN (never for
gateway requests) to a user, else ``user name is empty``. Reads are checked against the local
store right before they read; writes are checked before proposing and proposed as
``Checked(revision, command)``, which the machine refuses if the auth store changed meanwhile.
Which call needs what follows etcd with its fixes of 2026-03 (docs/security.md): Compact,
Defragment, Snapshot, Hash/HashKV, MoveLeader, alarm changes, membership changes and auth
management need root; Status, MemberList, alarm list, LeaseGrant and LeaseTimeToLive an
authenticated user; LeaseKeepAlive WRITE on every key of the lease; LeaseLeases lists the leases
the caller could renew. Passwords are hashed and checked with bcrypt in a worker thread, never on
the event loop, and only the hash is proposed. Failed Authenticate attempts are rate limited per
(user, source address) (``auth_tokens.AttemptLimiter``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt

from conclave.kv import auth as kvauth
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.kv.command import Checked
from conclave.machine import Member, rules
from conclave.raft.types import (
    NONE,
    ConfChangeSingle,
    ConfChangeType,
)
from conclave.server.auth_tokens import AttemptLimiter, new_simple_prefix
from conclave.server.config import member_id as compute_member_id
from conclave.server.config import parse_url, reported_db_size
from conclave.server.node import ConfChangePending, Node, PeerRpc
from conclave.server.transport import PeerUnavailable, RemoteError
from conclave.version import __version__
from conclave.wire.contract import NO_AUTH, AuthInfo, AuthTokenAhead, MemberInfo, StatusInfo, WatchDelivery

log = logging.getLogger("conclave.auth")

ETCD_API_VERSION = "3.5.0"
_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
BCRYPT_MAX_PASSWORD_BYTES = 72
AUTHENTICATE_ATTEMPTS = 3  # password checks of one Authenticate racing changes of the auth store

# Errors a forwarded RPC may come back with, by class name.
_REMOTE_ERRORS: dict[str, type[kverr.EtcdError]] = {
    cls.__name__: cls for cls in kverr.EtcdError.__subclasses__()
}


def _remote(exc: RemoteError) -> kverr.EtcdError:
    cls = _REMOTE_ERRORS.get(exc.kind)
    return cls() if cls is not None else kverr.EtcdError(exc.message)


def _header(node: Node, revision: int) -> kv.ResponseHeader:
    return kv.ResponseHeader(node.cluster_id, node.member_id, revision, node.raft_term())


class _Subscription:
    """Adapts a hub ``Watcher`` to the API's ``WatchSubscription`` contract."""

    def __init__(self, node: Node, watcher: Any, notify: Callable[[], None]) -> None:
        self._node = node
        self._w = watcher
        self._done = False
        if not watcher.canceled:
            node.watch_callbacks[watcher.id] = notify

    @property
    def synced_revision(self) -> int | None:
        w = self._w
        if not w.synced or w.buffer:
            return None
        return int(self._node.store.revision)

    def take(self) -> WatchDelivery | None:
        if self._done:
            return None
        w = self._w
        if w.buffer:
            events = tuple(w.take(1000))
            return WatchDelivery(events=events, revision=max(events[-1].kv.mod_revision, self._node.store.revision))
        if w.canceled:
            self._done = True
            self._node.watch_callbacks.pop(w.id, None)
            return WatchDelivery(canceled=True, compact_revision=w.compact_revision,
                                 revision=self._node.store.revision,
                                 cancel_reason=kverr.Compacted.message if w.compact_revision else "")
        return None

    def cancel(self) -> None:
        self._done = True
        self._node.watch_callbacks.pop(self._w.id, None)
        self._node.hub.cancel(self._w.id)


class _PeerRpcs:
    """The backend's side of the peer RPC table (``conclave.server.node.PeerRpcHandlers``)."""

    def __init__(self, backend: NodeBackend) -> None:
        self._backend = backend

    async def keepalive(self, lease_id: int) -> int:
        return await self._backend._local_keepalive(lease_id)

    async def ttl(self, lease_id: int) -> int:
        return await self._backend._local_ttl(lease_id)

    async def promote(self, member_id: int) -> bool:
        return await self._backend._local_promote(member_id)


class NodeBackend:
    """Implements ``conclave.wire.contract.EtcdBackend`` (and the native protocol's calls)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.member_id = node.member_id
        node.serve_peer_rpcs(_PeerRpcs(self))
        self.attempts = AttemptLimiter(node.now_ms)
        self._bcrypt_pool: ThreadPoolExecutor | None = None
        self._dummy_hash: bytes | None = None

    @property
    def cluster_id(self) -> int:  # type: ignore[override]
        return self.node.cluster_id

    def raft_term(self) -> int:
        return self.node.raft_term()

    def has_leader(self) -> bool:
        return self.node.has_leader()

    def current_revision(self) -> int:
        return int(self.node.store.revision)

    def _check_not_learner(self) -> None:
        me = self.node.members.get(self.node.member_id)
        if me is not None and me.is_learner:
            raise kverr.NotSupportedForLearner()

    async def _write(self, req: Any, auth: AuthInfo = NO_AUTH) -> Any:
        self._check_not_learner()
        req = self.node.sm.validate(req, self.node.limits)
        if self.node.auth_on:  # checked before proposing, refused at apply if the auth store moved on
            st = self.node.sm.auth
            if isinstance(req, kv.LeaseGrantRequest) and not auth.token and not auth.cert_cn:
                user, revision = "", int(st.revision)  # etcd: LeaseGrant has no auth check
            else:
                user, revision = self._caller(auth)
            st.check(user, req, self.node.store.lease_keys)
            req = Checked(revision, req, user)  # with the user: the machine re-checks the lease keys
        resp = await self.node.propose_kv(req)
        await self._enforce_quota()
        return resp

    # ------------------------------------------------------------------ auth: who is calling

    def auth_enabled(self) -> bool:
        return self.node.auth_on

    def _caller(self, auth: AuthInfo) -> tuple[str, int]:
        """The user a request speaks for and the auth revision its check holds at (auth is enabled)."""
        st = self.node.sm.auth
        if auth.token:
            try:
                info = self.node.tokens.info(auth.token)
            except kverr.InvalidAuthToken:
                _, dot, index = auth.token.rpartition(".")
                if dot and index.isdigit() and int(index) > self.node.applied_index and not self.node.tokens.signed:
                    raise AuthTokenAhead() from None  # logged in elsewhere, not applied here yet
                raise
            if info.revision is None:  # simple tokens follow the store
                return info.user, int(st.revision)
            if info.revision < st.revision:  # a JWT issued before the last auth change
                raise kverr.AuthOldRevision()
            return info.user, info.revision
        if auth.cert_cn and not auth.gateway:  # etcd: the CN of a verified client certificate
            return auth.cert_cn, int(st.revision)
        raise kverr.UserEmpty()

    def _require_user(self, auth: AuthInfo) -> str | None:
        """An authenticated caller (any user) while auth is on; its name, None while auth is off."""
        if not self.node.sm.auth.enabled:
            return None
        return self._caller(auth)[0]

    def _require_admin(self, auth: AuthInfo) -> int:
        """Root while auth is on; the auth revision to wrap a proposal with (0: auth off, unwrapped)."""
        st = self.node.sm.auth
        if not st.enabled:
            return 0
        user, revision = self._caller(auth)
        st.check_admin(user)
        return revision

    async def _propose_checked(self, cmd: Any, revision: int) -> Any:
        self._check_not_learner()
        return await self.node.propose_kv(Checked(revision, cmd) if revision else cmd)

    async def _enforce_quota(self) -> None:
        store = self.node.store
        over = rules.over_quota(store, self.node.limits) and self.node.is_leader()
        if over and not any(a.alarm == kv.AlarmType.NOSPACE for a in store.alarms()):
            alarm = kv.AlarmRequest(kv.AlarmAction.ACTIVATE, self.node.member_id, kv.AlarmType.NOSPACE)
            for _ in range(3):  # the member's own proposal: checked at the current auth revision
                revision = self.node.sm.auth.revision
                try:
                    await self.node.propose_kv(Checked(revision, alarm) if revision else alarm)
                except kverr.AuthOldRevision:
                    continue
                except kverr.EtcdError:
                    pass
                break

    # ------------------------------------------------------------------ KV

    async def read_barrier(self) -> None:
        """One ReadIndex barrier (the edge takes one per batch of linearizable reads)."""
        await self.node.read_barrier()

    async def range(self, req: kv.RangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.RangeResponse:
        rules.validate(req, self.node.limits)
        if not req.serializable:
            await self.node.read_barrier()
        if self.node.auth_on:  # after the barrier, right before reading (as etcd's doSerialize)
            self.node.sm.auth.check(self._caller(auth)[0], req, self.node.store.lease_keys)
        # A key under a cross-shard transaction's intent is not read: its value may be decided but not
        # yet resolved here (Locked; a sharded member's backend recovers or waits, then reads again).
        self.node.sm.xshard.check_plain(req, self.node.store)
        resp: kv.RangeResponse = self.node.store.range(req)
        self.node.metrics.mvcc_range_total += 1
        return resp

    async def put(self, req: kv.PutRequest, *, auth: AuthInfo = NO_AUTH) -> kv.PutResponse:
        resp: kv.PutResponse = await self._write(req, auth)
        return resp

    async def delete_range(self, req: kv.DeleteRangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.DeleteRangeResponse:
        resp: kv.DeleteRangeResponse = await self._write(req, auth)
        return resp

    async def txn(self, req: kv.TxnRequest, *, auth: AuthInfo = NO_AUTH) -> kv.TxnResponse:
        resp: kv.TxnResponse = await self._write(req, auth)
        return resp

    async def compact(self, req: kv.CompactionRequest, *, auth: AuthInfo = NO_AUTH) -> kv.CompactionResponse:
        resp: kv.CompactionResponse = await self._write(req, auth)
        return resp

    # ------------------------------------------------------------------ leases

    async def lease_grant(self, req: kv.LeaseGrantRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseGrantResponse:
        resp: kv.LeaseGrantResponse = await self._write(req, auth)  # the TTL bounds: rules.validate
        return resp

    async def lease_revoke(self, req: kv.LeaseRevokeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseRevokeResponse:
        resp: kv.LeaseRevokeResponse = await self._write(req, auth)
        return resp

    async def _at_leader(self, rpc: PeerRpc, args: Any, local: Callable[[Any], Any]) -> Any:
        node = self.node
        deadline = asyncio.get_running_loop().time() + node.cfg.request_timeout_s
        while True:
            leader = node.leader_id()
            if leader == node.member_id and node.lessor.is_primary:
                return await local(args)
            if leader not in (NONE, node.member_id):
                try:
                    return await node.call_peer(leader, rpc, args)
                except RemoteError as exc:
                    err = _remote(exc)
                    if not isinstance(err, kverr.NotLeader):
                        raise err from None
                except (TimeoutError, PeerUnavailable):
                    pass
            if asyncio.get_running_loop().time() > deadline:
                raise kverr.NoLeader() if leader == NONE else kverr.Timeout()
            await asyncio.sleep(node.cfg.heartbeat_interval_ms / 1000)

    async def _applied_here(self, lease_id: int) -> None:
        """On the leader, make sure an unknown lease is not one committed but not yet applied here.

        A grant is acknowledged by the member that proposed it once that member applied it; the
        leader may still be waiting on an fsync before applying the same entry, and a newly
        elected leader may not have applied its predecessor's entries yet. Like etcd's
        waitAppliedIndex, wait (on the miss path only) until everything committed is applied.
        """
        node = self.node
        if not node.lessor.is_primary:
            raise kverr.NotLeader()
        if lease_id not in node.lessor:
            await node.read_barrier()
            if not node.lessor.is_primary:
                raise kverr.NotLeader()

    async def _local_keepalive(self, lease_id: int) -> int:
        node = self.node
        await self._applied_here(lease_id)
        if lease_id not in node.lessor:
            raise kverr.LeaseNotFound()
        ttl: int = node.lessor.renew(lease_id, node.now_ms())
        node.metrics.lease_renewed_total += 1
        return ttl

    async def _local_ttl(self, lease_id: int) -> int:
        node = self.node
        await self._applied_here(lease_id)
        if lease_id not in node.lessor:
            return -1
        remaining: int = node.lessor.remaining(lease_id, node.now_ms())
        return remaining

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        try:
            return list(self.node.store.lease_keys(lease_id))
        except kverr.LeaseNotFound:
            return []

    def _may_renew(self, user: str, lease_id: int) -> bool:
        try:
            self.node.sm.auth.check_lease_renew(user, self._lease_keys(lease_id))
        except kverr.PermissionDenied:
            return False
        return True

    async def lease_keep_alive(self, lease_id: int, *, auth: AuthInfo = NO_AUTH) -> int:
        if self.node.auth_on:  # the 2026-03 fix: root, or WRITE on every key attached to the lease
            self.node.sm.auth.check_lease_renew(self._caller(auth)[0], self._lease_keys(lease_id))
        ttl: int = await self._at_leader(PeerRpc.KEEPALIVE, lease_id, self._local_keepalive)
        return ttl

    async def lease_time_to_live(self, req: kv.LeaseTimeToLiveRequest, *,
                                 auth: AuthInfo = NO_AUTH) -> kv.LeaseTimeToLiveResponse:
        await self.node.read_barrier()
        user = self._require_user(auth)
        if user is not None and req.keys:  # listing the keys needs READ on each of them
            st = self.node.sm.auth
            for key in self._lease_keys(req.id):
                st.check_read_range(user, key, b"")
        store = self.node.store
        # etcd answers an unknown (expired or revoked) lease with TTL -1, not an error.
        gone = kv.LeaseTimeToLiveResponse(_header(self.node, store.revision), req.id, -1, 0, ())
        if req.id not in store.lease_ids():
            return gone
        remaining: int = await self._at_leader(PeerRpc.TTL, req.id, self._local_ttl)
        if remaining < 0:
            return gone
        keys = tuple(sorted(store.lease_keys(req.id))) if req.keys else ()
        return kv.LeaseTimeToLiveResponse(
            _header(self.node, store.revision), req.id, remaining, store.lease_ttl(req.id), keys
        )

    async def lease_leases(self, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseLeasesResponse:
        await self.node.read_barrier()
        user = self._require_user(auth)
        resp: kv.LeaseLeasesResponse = self.node.store.lease_leases()
        if user is not None and not self.node.sm.auth.is_admin(user):  # only the leases it could renew
            resp = kv.LeaseLeasesResponse(resp.header, tuple(s for s in resp.leases if self._may_renew(user, s.id)))
        return resp

    # ------------------------------------------------------------------ watch

    def watch_create(self, req: kv.WatchCreateRequest, notify: Callable[[], None], *,
                     auth: AuthInfo = NO_AUTH) -> _Subscription:
        if self.node.auth_on:  # checked at create time: a later grant or revoke does not touch the watcher
            self.node.sm.auth.check_read_range(self._caller(auth)[0], req.key, req.range_end)
        w = self.node.hub.watch(
            req.key, req.range_end, req.start_revision, filters=req.filters, prev_kv=req.prev_kv,
        )
        sub = _Subscription(self.node, w, notify)
        if w.buffer or w.canceled or not w.synced:
            asyncio.get_running_loop().call_soon(notify)
            if not w.synced and not w.canceled:
                self.node.hub.catch_up()
        return sub

    # ------------------------------------------------------------------ cluster

    def _member_infos(self) -> list[MemberInfo]:
        return [
            MemberInfo(m.id, m.name, tuple(m.peer_urls), tuple(m.client_urls), m.is_learner)
            for m in sorted(self.node.members.values(), key=lambda m: m.id)
        ]

    async def member_list(self, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        self._require_user(auth)
        return self._member_infos()

    def member_native_urls(self) -> dict[int, list[str]]:
        """Each member's native-protocol URLs (as they published them), by member id."""
        return {m.id: list(m.native_urls) for m in self.node.members.values()}

    async def _conf_change(self, changes: list[ConfChangeSingle], members: list[Member]) -> None:
        await self.node.propose_conf_change(changes, members)

    async def _after_pending(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """Run a membership change; one that races another waits for it and is checked again, as etcd
        checks a change against the membership the previous one left (a second learner gets "too
        many learner members", a second removal "member not found")."""
        deadline = asyncio.get_running_loop().time() + self.node.cfg.request_timeout_s
        while True:
            try:
                return await attempt()
            except ConfChangePending:
                if asyncio.get_running_loop().time() > deadline:
                    raise kverr.Timeout() from None
                await asyncio.sleep(self.node.cfg.heartbeat_interval_ms / 1000)

    async def member_add(self, peer_urls: list[str], is_learner: bool, *,
                         auth: AuthInfo = NO_AUTH) -> tuple[MemberInfo, list[MemberInfo]]:
        self._require_admin(auth)
        result: tuple[MemberInfo, list[MemberInfo]] = await self._after_pending(
            lambda: self._member_add_once(peer_urls, is_learner))
        return result

    async def _member_add_once(self, peer_urls: list[str], is_learner: bool) -> tuple[MemberInfo, list[MemberInfo]]:
        try:
            urls = [u if "://" in u else "http://" + u for u in peer_urls]
            for u in urls:
                parse_url(u, "peer-urls")
        except ValueError:
            raise kverr.MemberBadURLs() from None
        if not urls:
            raise kverr.MemberBadURLs()
        for m in self.node.members.values():
            if set(m.peer_urls) & set(urls):
                raise kverr.PeerURLExist()
        if is_learner:
            learners = sum(1 for m in self.node.members.values() if m.is_learner)
            if learners >= self.node.cfg.max_learners:
                raise kverr.TooManyLearners()
        mid = compute_member_id(urls, self.node.cfg.initial_cluster_token)
        if mid in self.node.members:
            raise kverr.MemberExist()
        member = Member(mid, "", urls, [], [], is_learner)
        kind = ConfChangeType.ADD_LEARNER if is_learner else ConfChangeType.ADD_VOTER
        await self._conf_change([ConfChangeSingle(kind, mid)], [member])
        info = MemberInfo(mid, "", tuple(urls), (), is_learner)
        return info, self._member_infos()

    async def member_remove(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        self._require_admin(auth)

        async def attempt() -> None:
            if member_id not in self.node.members:
                raise kverr.MemberNotFound()
            await self._conf_change([ConfChangeSingle(ConfChangeType.REMOVE_NODE, member_id)], [])

        await self._after_pending(attempt)
        return self._member_infos()

    async def member_update(self, member_id: int, peer_urls: list[str], *,
                            auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        self._require_admin(auth)
        m = self.node.members.get(member_id)
        if m is None:
            raise kverr.MemberNotFound()
        urls = [u if "://" in u else "http://" + u for u in peer_urls]
        try:
            for u in urls:
                parse_url(u, "peer-urls")
        except ValueError:
            raise kverr.MemberBadURLs() from None
        await self.node.propose_member_attrs(Member(m.id, m.name, urls, m.client_urls, m.native_urls, m.is_learner))
        return self._member_infos()

    async def _local_promote(self, member_id: int) -> bool:
        node = self.node
        if not node.is_leader():
            raise kverr.NotLeader()
        m = node.members.get(member_id)
        if m is None:
            raise kverr.MemberNotFound()
        if not m.is_learner:
            raise kverr.MemberNotLearner()
        progress = node.raft.status().progress.get(member_id) if hasattr(node.raft.status(), "progress") else None
        match = getattr(progress, "match", 0) if progress is not None else 0
        if match < node.raft.commit_index * 0.9:
            raise kverr.LearnerNotReady()
        await self._after_pending(
            lambda: self._conf_change([ConfChangeSingle(ConfChangeType.ADD_VOTER, member_id)], [m]))
        return True

    async def member_promote(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        self._require_admin(auth)
        m = self.node.members.get(member_id)
        if m is None:
            raise kverr.MemberNotFound()
        if not m.is_learner:
            raise kverr.MemberNotLearner()
        await self._at_leader_plain(PeerRpc.PROMOTE, member_id, self._local_promote)
        return self._member_infos()

    async def _at_leader_plain(self, rpc: PeerRpc, args: Any, local: Callable[[Any], Any]) -> Any:
        node = self.node
        leader = node.leader_id()
        if leader == NONE:
            raise kverr.NoLeader()
        if leader == node.member_id:
            return await local(args)
        try:
            return await node.call_peer(leader, rpc, args)
        except RemoteError as exc:
            raise _remote(exc) from None
        except (TimeoutError, PeerUnavailable):
            raise kverr.Timeout() from None

    # ------------------------------------------------------------------ maintenance

    async def status(self, *, auth: AuthInfo = NO_AUTH) -> StatusInfo:
        self._require_user(auth)
        node = self.node
        me = node.members.get(node.member_id)
        errors = tuple(
            f"memberID:{a.member_id} alarm:{a.alarm.name}" for a in node.store.alarms()
        )
        db_size, db_size_in_use = reported_db_size(node.store.db_size, node.store.db_size_in_use)
        return StatusInfo(
            version=ETCD_API_VERSION,
            db_size=db_size,
            db_size_in_use=db_size_in_use,
            leader=node.raft.leader_id,
            raft_index=node.raft.commit_index,
            raft_term=node.raft.term,
            raft_applied_index=node.applied_index,
            is_learner=bool(me and me.is_learner),
            errors=errors,
            db_size_quota=node.cfg.quota_backend_bytes,
            storage_version=__version__,
            revision=node.store.revision,
        )

    async def alarm(self, action: kv.AlarmAction, member_id: int, alarm: kv.AlarmType, *,
                    auth: AuthInfo = NO_AUTH) -> list[kv.AlarmMember]:
        if action == kv.AlarmAction.GET:
            self._require_user(auth)
            await self.node.read_barrier()
            return list(self.node.store.alarms())
        revision = self._require_admin(auth)
        req = kv.AlarmRequest(action, member_id, alarm)
        resp = await self.node.propose_kv(Checked(revision, req) if revision else req)
        return list(resp.alarms)

    async def hash_kv(self, revision: int, *, auth: AuthInfo = NO_AUTH) -> kv.HashKVResponse:
        self._require_admin(auth)
        if 0 < revision <= self.node.store.compact_revision:
            raise kverr.Compacted()  # as etcd: the compacted revision itself is gone too
        h, compact, hash_rev = self.node.store.hash_kv(revision)
        return kv.HashKVResponse(_header(self.node, self.node.store.revision), h, compact, hash_rev)

    def snapshot(self, *, auth: AuthInfo = NO_AUTH) -> AsyncIterator[bytes]:
        """The backup file (``server/backup.py`` format), written by a forked child off the loop.

        The child serialises the state at the moment the first chunk is asked for (after any
        snapshot child already running); the stream's ``size`` is set with the first chunk.
        """
        from typing import BinaryIO

        from conclave.server.snapshotter import FileStream, Job, write_backup

        self._require_admin(auth)
        node = self.node

        async def start() -> Job:
            def write(f: BinaryIO) -> None:  # runs in the child, on its copy of the state
                write_backup(f, node.sm.snapshot(), node.applied_index, node.raft.term)

            return await node.snapshotter.start_when_idle(write, what="backup", db_bytes=lambda: node.store.db_size)

        return FileStream(start, 32 * 1024)  # etcd's chunk size

    async def move_leader(self, target_id: int, *, auth: AuthInfo = NO_AUTH) -> None:
        """etcd's MoveLeader: returns once the target leads; an error if leadership went
        elsewhere meanwhile (LeaderChanged) or the transfer did not happen in time."""
        self._require_admin(auth)
        node = self.node
        if not node.is_leader():
            raise kverr.NotLeader()
        if target_id == node.member_id:
            return  # etcd: moving leadership to the leader is a no-op ("transferred from X to X")
        m = node.members.get(target_id)
        if m is None or m.is_learner:
            raise kverr.BadLeaderTransferee()
        await node.transfer_leadership(target_id)

    async def defragment(self, *, auth: AuthInfo = NO_AUTH) -> None:
        self._require_admin(auth)
        self.node.store.defragment()
        # The store lives in memory: what etcd's defragmentation gives back to the file system is, here,
        # the garbage compaction left for the cycle collector. A full collection now (it blocks this
        # member for its length, as etcd's defrag blocks the member) returns it without waiting for
        # CPython's next generation-2 pass; objects frozen at start-up are not scanned.
        gc.collect()

    # ------------------------------------------------------------------ the Auth service

    def _header_revision(self) -> int:
        return int(self.node.store.revision)

    async def _bcrypt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a bcrypt call in a worker thread (bcrypt releases the GIL): the loop never waits on it."""
        if self._bcrypt_pool is None:
            self._bcrypt_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")
        return await asyncio.get_running_loop().run_in_executor(self._bcrypt_pool, fn, *args)

    async def _hash_password(self, password: str, hashed: str) -> bytes:
        if hashed:  # etcd 3.5+: the client hashed it (AuthUserAddRequest.hashedPassword)
            raw = hashed.encode()
            if not raw.startswith(_BCRYPT_PREFIXES):
                raise kverr.EtcdError("etcdserver: hashed password is not a bcrypt hash")
            return raw
        raw_pw = password.encode()
        if len(raw_pw) > BCRYPT_MAX_PASSWORD_BYTES:  # bcrypt reads 72 bytes; Go's bcrypt (etcd) refuses more too
            raise kverr.EtcdError("bcrypt: password length exceeds 72 bytes")
        cost = self.node.cfg.bcrypt_cost
        hashed_pw: bytes = await self._bcrypt(lambda: bcrypt.hashpw(raw_pw, bcrypt.gensalt(cost)))
        return hashed_pw

    async def _verify_password(self, password: str, stored: bytes | None) -> bool:
        raw = password.encode()
        if len(raw) > BCRYPT_MAX_PASSWORD_BYTES:  # no stored hash can match it (user add refuses those)
            raw, stored = raw[:BCRYPT_MAX_PASSWORD_BYTES], None
        if stored is None:  # unknown user or no password: spend the same time, then fail
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash_password("conclave-dummy", "")
            await self._bcrypt(bcrypt.checkpw, raw, self._dummy_hash)
            return False
        try:
            ok: bool = await self._bcrypt(bcrypt.checkpw, raw, stored)
        except ValueError:  # a stored hash bcrypt cannot read
            return False
        return ok

    async def authenticate(self, name: str, password: str, *, auth: AuthInfo = NO_AUTH) -> tuple[str, int]:
        """Check the password (off the loop) against this member's store, then propose the token.

        Every member registers the simple token ``<prefix>.<raft index>`` when the entry applies
        (``Node._apply``); a JWT is signed here after the apply, at the revision it applied at."""
        st = self.node.sm.auth
        if not st.enabled:
            raise kverr.AuthNotEnabled()
        self._check_not_learner()
        tokens = self.node.tokens
        if tokens.signed and not tokens.can_sign:
            log.warning("Authenticate refused: this member has a jwt pub-key but no priv-key to sign with")
            raise kverr.AuthFailed()
        source = auth.source
        if self.attempts.locked(name, source):
            raise kverr.AuthFailed()  # the same answer as a wrong password, and no bcrypt work
        for attempt in range(AUTHENTICATE_ATTEMPTS):
            st = self.node.sm.auth
            revision = int(st.revision)  # the password is checked against the store at this revision
            user = st.users.get(name)
            stored = user.password_hash if user is not None and not user.no_password else None
            if not await self._verify_password(password, stored):
                locked_ms = self.attempts.failed(name, source)
                where = source or "an unknown address"
                if locked_ms:  # one line per lock, not per guess
                    log.warning("%d failed logins as %r from %s: further attempts refused for %.0f s",
                                self.attempts.failures(name, source), name, where, locked_ms / 1000)
                else:
                    log.info("authentication failed for user %r from %s", name, where)
                raise kverr.AuthFailed()
            self.attempts.succeeded(name, source)
            prefix = "" if tokens.signed else new_simple_prefix()
            try:
                # Checked: a password changed (or the user deleted) meanwhile makes the apply refuse it.
                resp = await self.node.propose_kv(
                    Checked(revision, kvauth.AuthenticateRequest(name=name, token=prefix)))
            except kverr.AuthOldRevision:
                if attempt + 1 == AUTHENTICATE_ATTEMPTS:
                    raise
                continue  # the auth store changed while checking: check the password again (as etcd)
            break
        token = tokens.sign(name, resp.auth_revision) if tokens.signed else resp.token
        return token, self._header_revision()

    async def auth_enable(self, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)  # enabling an enabled store needs root (a no-op then)
        await self._propose_checked(kvauth.AuthEnableRequest(), revision)
        return self._header_revision()

    async def auth_disable(self, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.AuthDisableRequest(), revision)
        return self._header_revision()

    async def auth_status(self, *, auth: AuthInfo = NO_AUTH) -> tuple[bool, int, int]:
        self._require_admin(auth)
        await self.node.read_barrier()
        s = self.node.sm.auth.status()
        return bool(s.enabled), int(s.auth_revision), self._header_revision()

    async def user_add(self, name: str, password: str, no_password: bool, hashed_password: str = "", *,
                       auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        if not name:
            raise kverr.UserEmpty()
        if name in self.node.sm.auth.users:  # refuse before paying for bcrypt (apply checks again)
            raise kverr.UserAlreadyExist()
        password_hash = b"" if no_password else await self._hash_password(password, hashed_password)
        await self._propose_checked(kvauth.UserAddRequest(name, password_hash, no_password), revision)
        return self._header_revision()

    async def user_get(self, name: str, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]:
        await self.node.read_barrier()
        st = self.node.sm.auth
        if st.enabled:  # root, or the user itself
            st.check_user_get(self._caller(auth)[0], name)
        return tuple(st.user_get(name).roles), self._header_revision()

    async def user_list(self, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]:
        self._require_admin(auth)
        await self.node.read_barrier()
        return tuple(self.node.sm.auth.user_list().users), self._header_revision()

    async def user_delete(self, name: str, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.UserDeleteRequest(name), revision)
        return self._header_revision()

    async def user_change_password(self, name: str, password: str, hashed_password: str = "", *,
                                   auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        if name not in self.node.sm.auth.users:  # refuse before paying for bcrypt (apply checks again)
            raise kverr.UserNotFound()
        password_hash = await self._hash_password(password, hashed_password)
        await self._propose_checked(kvauth.UserChangePasswordRequest(name, password_hash), revision)
        return self._header_revision()

    async def user_grant_role(self, user: str, role: str, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.UserGrantRoleRequest(user, role), revision)
        return self._header_revision()

    async def user_revoke_role(self, name: str, role: str, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.UserRevokeRoleRequest(name, role), revision)
        return self._header_revision()

    async def role_add(self, name: str, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.RoleAddRequest(name), revision)
        return self._header_revision()

    async def role_get(self, role: str, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[kvauth.Permission, ...], int]:
        await self.node.read_barrier()
        st = self.node.sm.auth
        if st.enabled:  # root, or a user holding the role
            st.check_role_get(self._caller(auth)[0], role)
        return tuple(st.role_get(role).perm), self._header_revision()

    async def role_list(self, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]:
        self._require_admin(auth)
        await self.node.read_barrier()
        return tuple(self.node.sm.auth.role_list().roles), self._header_revision()

    async def role_delete(self, role: str, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.RoleDeleteRequest(role), revision)
        return self._header_revision()

    async def role_grant_permission(self, name: str, perm: kvauth.Permission, *, auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.RoleGrantPermissionRequest(name, perm), revision)
        return self._header_revision()

    async def role_revoke_permission(self, role: str, key: bytes, range_end: bytes, *,
                                     auth: AuthInfo = NO_AUTH) -> int:
        revision = self._require_admin(auth)
        await self._propose_checked(kvauth.RoleRevokePermissionRequest(role, key, range_end), revision)
        return self._header_revision()




__all__ = ["NodeBackend"]
