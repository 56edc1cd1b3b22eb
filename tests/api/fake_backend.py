"""A single-node, in-memory EtcdBackend over the real kv Store and WatchHub (no Raft, no disk).

Every write is validated like the server does, then applied to ``conclave.kv.mvcc.Store`` at the next
index; its events are published to a ``conclave.kv.watch.WatchHub`` whose watchers are adapted to the
API's WatchSubscription contract. Reads are served from the store directly. Membership, leadership and
the maintenance calls are stubs with fixed answers. Tests flip ``leader`` to simulate a lost leader.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.kv.mvcc import Store
from conclave.kv.validation import validate_request
from conclave.kv.watch import Watcher, WatchHub
from conclave.wire.contract import NO_AUTH, AuthInfo, MemberInfo, StatusInfo, WatchDelivery

CLUSTER_ID = 0x1234_5678_9ABC_DEF0
MEMBER_ID = 0x0FED_CBA9_8765_4321
CATCH_UP_ROUNDS_MAX = 1000
TAKE_EVENTS_MAX = 1000
SNAPSHOT_CHUNK_BYTES = 16 * 1024


class FakeSubscription:
    def __init__(self, backend: FakeBackend, watcher: Watcher, notify: Callable[[], None]) -> None:
        self.backend = backend
        self.watcher = watcher
        self.done = False
        backend.notifies[watcher.id] = notify

    @property
    def synced_revision(self) -> int | None:
        w = self.watcher
        return self.backend.store.revision if w.synced and not w.buffer else None

    def take(self) -> WatchDelivery | None:
        if self.done:
            return None
        w = self.watcher
        if w.buffer:
            events = tuple(w.take(TAKE_EVENTS_MAX))
            return WatchDelivery(events=events, revision=self.backend.store.revision)
        if w.canceled:
            self.done = True
            return WatchDelivery(
                canceled=True, compact_revision=w.compact_revision, revision=self.backend.store.revision
            )
        return None

    def cancel(self) -> None:
        self.done = True
        self.backend.notifies.pop(self.watcher.id, None)
        self.backend.hub.cancel(self.watcher.id)


class FakeBackend:
    """Implements conclave.wire.contract.EtcdBackend for one in-process member."""

    def __init__(self) -> None:
        self.cluster_id = CLUSTER_ID
        self.member_id = MEMBER_ID
        self.store = Store()
        self.notifies: dict[int, Callable[[], None]] = {}
        self.hub = WatchHub(self.store, notify=self._notify)
        self.index = 0
        self.leader = True
        self.client_urls: tuple[str, ...] = ()
        self.calls: list[str] = []

    # ------------------------------------------------------------------ plumbing
    def raft_term(self) -> int:
        return 2

    def has_leader(self) -> bool:
        return self.leader

    def current_revision(self) -> int:
        return self.store.revision

    def keys(self) -> list[bytes]:
        got = self.store.range(kv.RangeRequest(key=b"\0", range_end=b"\0", keys_only=True))
        return [x.key for x in got.kvs]

    def watcher_count(self) -> int:
        return len(self.hub)

    def _notify(self, watcher: Watcher) -> None:
        notify = self.notifies.get(watcher.id)
        if notify is not None:
            notify()

    def _catch_up(self) -> None:
        for _ in range(CATCH_UP_ROUNDS_MAX):
            if not self.hub.unsynced_count:
                return
            self.hub.catch_up()

    def _apply(self, cmd: Any) -> Any:
        validate_request(cmd)
        self.index += 1
        resp = self.store.apply(cmd, self.index)
        if self.store.last_events:
            self.hub.publish(self.store.last_events)
        self._catch_up()
        return resp

    # ------------------------------------------------------------------ KV
    async def read_barrier(self) -> None:
        """The edge's batched ReadIndex barrier: one state, so nothing to wait for; counted."""
        self.calls.append("read_barrier")

    async def range(self, req: kv.RangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.RangeResponse:
        self.calls.append("range")
        validate_request(req)
        return self.store.range(req)

    async def put(self, req: kv.PutRequest, *, auth: AuthInfo = NO_AUTH) -> kv.PutResponse:
        self.calls.append("put")
        resp: kv.PutResponse = self._apply(req)
        return resp

    async def delete_range(self, req: kv.DeleteRangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.DeleteRangeResponse:
        self.calls.append("delete_range")
        resp: kv.DeleteRangeResponse = self._apply(req)
        return resp

    async def txn(self, req: kv.TxnRequest, *, auth: AuthInfo = NO_AUTH) -> kv.TxnResponse:
        self.calls.append("txn")
        resp: kv.TxnResponse = self._apply(req)
        return resp

    async def compact(self, req: kv.CompactionRequest, *, auth: AuthInfo = NO_AUTH) -> kv.CompactionResponse:
        resp: kv.CompactionResponse = self._apply(req)
        return resp

    # ------------------------------------------------------------------ Lease
    async def lease_grant(self, req: kv.LeaseGrantRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseGrantResponse:
        resp: kv.LeaseGrantResponse = self._apply(req)
        return resp

    async def lease_revoke(self, req: kv.LeaseRevokeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseRevokeResponse:
        resp: kv.LeaseRevokeResponse = self._apply(req)
        return resp

    async def lease_keep_alive(self, lease_id: int, *, auth: AuthInfo = NO_AUTH) -> int:
        return self.store.lease_ttl(lease_id)

    async def lease_time_to_live(self, req: kv.LeaseTimeToLiveRequest, *,
                                 auth: AuthInfo = NO_AUTH) -> kv.LeaseTimeToLiveResponse:
        return self.store.lease_time_to_live(req)

    async def lease_leases(self, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseLeasesResponse:
        return self.store.lease_leases()

    # ------------------------------------------------------------------ Watch
    def watch_create(self, req: kv.WatchCreateRequest, notify: Callable[[], None], *,
                     auth: AuthInfo = NO_AUTH) -> FakeSubscription:
        w = self.hub.watch(req.key, req.range_end, req.start_revision, filters=req.filters, prev_kv=req.prev_kv)
        sub = FakeSubscription(self, w, notify)
        self._catch_up()
        if w.buffer or w.canceled:
            notify()
        return sub

    # ------------------------------------------------------------------ Cluster
    async def member_list(self, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        return [MemberInfo(self.member_id, "fake", ("http://127.0.0.1:2380",), self.client_urls)]

    async def member_add(self, peer_urls: list[str], is_learner: bool, *,
                         auth: AuthInfo = NO_AUTH) -> tuple[MemberInfo, list[MemberInfo]]:
        added = MemberInfo(77, "", tuple(peer_urls), (), is_learner)
        return added, [*await self.member_list(), added]

    async def member_remove(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        raise kverr.MemberNotFound()

    async def member_update(self, member_id: int, peer_urls: list[str], *,
                            auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        raise kverr.MemberNotFound()

    async def member_promote(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]:
        raise kverr.MemberNotLearner()

    # ------------------------------------------------------------------ Maintenance
    async def status(self, *, auth: AuthInfo = NO_AUTH) -> StatusInfo:
        return StatusInfo(
            version="3.6.0",
            db_size=self.store.db_size,
            db_size_in_use=self.store.db_size_in_use,
            leader=self.member_id,
            raft_index=self.index,
            raft_term=2,
            raft_applied_index=self.index,
            revision=self.store.revision,
        )

    async def alarm(self, action: kv.AlarmAction, member_id: int, alarm: kv.AlarmType, *,
                    auth: AuthInfo = NO_AUTH) -> list[kv.AlarmMember]:
        self._apply(kv.AlarmRequest(action, member_id, alarm))
        return list(self.store.alarms())

    async def hash_kv(self, revision: int, *, auth: AuthInfo = NO_AUTH) -> kv.HashKVResponse:
        h, compact_rev, hash_rev = self.store.hash_kv(revision)
        return kv.HashKVResponse(kv.ResponseHeader(revision=self.store.revision), h, compact_rev, hash_rev)

    async def snapshot(self, *, auth: AuthInfo = NO_AUTH) -> AsyncIterator[bytes]:
        blob = self.store.snapshot()
        for start in range(0, len(blob), SNAPSHOT_CHUNK_BYTES):
            yield blob[start : start + SNAPSHOT_CHUNK_BYTES]

    async def move_leader(self, target_id: int, *, auth: AuthInfo = NO_AUTH) -> None:
        raise kverr.BadLeaderTransferee()

    async def defragment(self, *, auth: AuthInfo = NO_AUTH) -> None:
        self.store.defragment()
