"""A single-node, in-memory EtcdBackend for testing the gRPC edge (no Raft, no persistence).

Just enough of etcd's MVCC semantics for the edge's tests and for etcdctl: one global revision bumped
once per write transaction, create/mod revision and version per key, prefix ranges with sort / limit /
filters, txn with compares, compaction errors, leases owning keys, and watchers replayed from history.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from conclave.api.backend import MemberInfo, StatusInfo, WatchDelivery
from conclave.kv import errors as kverr
from conclave.kv import types as kv

CLUSTER_ID = 0x1234_5678_9ABC_DEF0
MEMBER_ID = 0x0FED_CBA9_8765_4321


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


class FakeWatcher:
    def __init__(self, store: FakeBackend, req: kv.WatchCreateRequest, notify: Callable[[], None]) -> None:
        self.store = store
        self.req = req
        self.notify = notify
        self.pending: list[kv.Event] = []
        self.cancel_delivery: WatchDelivery | None = None
        self.active = True

    def matches(self, event: kv.Event) -> kv.Event | None:
        if not in_range(event.kv.key, self.req.key, self.req.range_end):
            return None
        if event.type == kv.EventType.PUT and kv.WatchFilterType.NOPUT in self.req.filters:
            return None
        if event.type == kv.EventType.DELETE and kv.WatchFilterType.NODELETE in self.req.filters:
            return None
        return event if self.req.prev_kv else replace(event, prev_kv=None)

    def offer(self, events: list[kv.Event]) -> None:
        chosen = [m for m in (self.matches(e) for e in events) if m is not None]
        if chosen and self.active:
            self.pending.extend(chosen)
            self.notify()

    @property
    def synced_revision(self) -> int | None:
        return self.store.rev if not self.pending else None

    def take(self) -> WatchDelivery | None:
        if self.cancel_delivery is not None:
            delivery, self.cancel_delivery = self.cancel_delivery, None
            self.active = False
            return delivery
        if not self.pending:
            return None
        events, self.pending = tuple(self.pending), []
        return WatchDelivery(events=events, revision=self.store.rev)

    def cancel(self) -> None:
        self.active = False
        if self in self.store.watchers:
            self.store.watchers.remove(self)


class FakeBackend:
    """Implements conclave.api.backend.EtcdBackend over dicts."""

    def __init__(self) -> None:
        self.cluster_id = CLUSTER_ID
        self.member_id = MEMBER_ID
        self.rev = 1
        self.compact_rev = 0
        self.kvs: dict[bytes, kv.KeyValue] = {}
        self.history: list[tuple[int, list[kv.Event]]] = []
        self.leases: dict[int, int] = {}
        self.next_lease = 0x694D_0000_0000
        self.watchers: list[FakeWatcher] = []
        self.leader = True
        self.client_urls: tuple[str, ...] = ()
        self.alarms: list[kv.AlarmMember] = []
        self.calls: list[str] = []
        self._events: list[kv.Event] = []

    # ------------------------------------------------------------------ plumbing
    def raft_term(self) -> int:
        return 2

    def has_leader(self) -> bool:
        return self.leader

    def current_revision(self) -> int:
        return self.rev

    def _hdr(self) -> kv.ResponseHeader:
        return kv.ResponseHeader(revision=self.rev)

    def _commit(self) -> None:
        if not self._events:
            return
        self.rev += 1
        events, self._events = self._events, []
        self.history.append((self.rev, events))
        for w in list(self.watchers):
            w.offer(events)

    # ------------------------------------------------------------------ KV core
    def _range(self, req: kv.RangeRequest) -> kv.RangeResponse:
        if not req.key:
            raise kverr.KeyNotProvided()
        if req.revision > self.rev:
            raise kverr.FutureRevision()
        if 0 < req.revision <= self.compact_rev:
            raise kverr.Compacted()
        source = self._state_at(req.revision) if 0 < req.revision < self.rev else self.kvs
        found = [x for k, x in sorted(source.items()) if in_range(k, req.key, req.range_end)]
        count = len(found)
        found = [
            x
            for x in found
            if (not req.min_mod_revision or x.mod_revision >= req.min_mod_revision)
            and (not req.max_mod_revision or x.mod_revision <= req.max_mod_revision)
            and (not req.min_create_revision or x.create_revision >= req.min_create_revision)
            and (not req.max_create_revision or x.create_revision <= req.max_create_revision)
        ]
        field = {
            kv.SortTarget.KEY: lambda x: x.key,
            kv.SortTarget.VERSION: lambda x: x.version,
            kv.SortTarget.CREATE: lambda x: x.create_revision,
            kv.SortTarget.MOD: lambda x: x.mod_revision,
            kv.SortTarget.VALUE: lambda x: x.value,
        }[req.sort_target]
        if req.sort_order == kv.SortOrder.DESCEND:
            found.sort(key=field, reverse=True)
        elif req.sort_order == kv.SortOrder.ASCEND or req.sort_target != kv.SortTarget.KEY:
            found.sort(key=field)
        more = bool(req.limit) and len(found) > req.limit
        if req.limit:
            found = found[: req.limit]
        if req.count_only:
            found = []
        if req.keys_only:
            found = [replace(x, value=b"") for x in found]
        return kv.RangeResponse(self._hdr(), tuple(found), more, count)

    def _state_at(self, revision: int) -> dict[bytes, kv.KeyValue]:
        state: dict[bytes, kv.KeyValue] = {}
        for rev, events in self.history:
            if rev > revision:
                break
            for e in events:
                if e.type == kv.EventType.PUT:
                    state[e.kv.key] = e.kv
                else:
                    state.pop(e.kv.key, None)
        return state

    def _put(self, req: kv.PutRequest) -> kv.PutResponse:
        if not req.key:
            raise kverr.KeyNotProvided()
        if req.lease and req.lease not in self.leases:
            raise kverr.LeaseNotFound()
        prev = self.kvs.get(req.key)
        if (req.ignore_value or req.ignore_lease) and prev is None:
            raise kverr.KeyNotFound()
        value = prev.value if req.ignore_value and prev else req.value
        lease = prev.lease if req.ignore_lease and prev else req.lease
        new_rev = self.rev + 1
        new = kv.KeyValue(
            req.key, prev.create_revision if prev else new_rev, new_rev, prev.version + 1 if prev else 1, value, lease
        )
        self.kvs[req.key] = new
        self._events.append(kv.Event(kv.EventType.PUT, new, prev))
        return kv.PutResponse(self._hdr(), prev if req.prev_kv else None)

    def _delete(self, req: kv.DeleteRangeRequest) -> kv.DeleteRangeResponse:
        if not req.key:
            raise kverr.KeyNotProvided()
        doomed = [x for k, x in sorted(self.kvs.items()) if in_range(k, req.key, req.range_end)]
        for x in doomed:
            del self.kvs[x.key]
            self._events.append(kv.Event(kv.EventType.DELETE, kv.KeyValue(key=x.key, mod_revision=self.rev + 1), x))
        return kv.DeleteRangeResponse(self._hdr(), len(doomed), tuple(doomed) if req.prev_kv else ())

    def _compare(self, c: kv.Compare) -> bool:
        targets = [x for k, x in self.kvs.items() if in_range(k, c.key, c.range_end)] or (
            [kv.KeyValue(key=c.key)] if not c.range_end else []
        )
        for x in targets:
            have, want = {
                kv.CompareTarget.VERSION: (x.version, c.version),
                kv.CompareTarget.CREATE: (x.create_revision, c.create_revision),
                kv.CompareTarget.MOD: (x.mod_revision, c.mod_revision),
                kv.CompareTarget.VALUE: (x.value, c.value),
                kv.CompareTarget.LEASE: (x.lease, c.lease),
            }[c.target]
            if c.target == kv.CompareTarget.VALUE and x.key not in self.kvs:
                return False
            ok = {
                kv.CompareResult.EQUAL: have == want,
                kv.CompareResult.NOT_EQUAL: have != want,
                kv.CompareResult.GREATER: have > want,  # type: ignore[operator]
                kv.CompareResult.LESS: have < want,  # type: ignore[operator]
            }[c.result]
            if not ok:
                return False
        return True

    def _txn(self, req: kv.TxnRequest) -> kv.TxnResponse:
        succeeded = all(self._compare(c) for c in req.compare)
        responses = []
        for op in req.success if succeeded else req.failure:
            if op.request_range is not None:
                responses.append(kv.ResponseOp(response_range=self._range(op.request_range)))
            elif op.request_put is not None:
                responses.append(kv.ResponseOp(response_put=self._put(op.request_put)))
            elif op.request_delete_range is not None:
                responses.append(kv.ResponseOp(response_delete_range=self._delete(op.request_delete_range)))
            elif op.request_txn is not None:
                responses.append(kv.ResponseOp(response_txn=self._txn(op.request_txn)))
        return kv.TxnResponse(self._hdr(), succeeded, tuple(responses))

    def _finish(self, header_rev_bump: bool) -> kv.ResponseHeader:
        self._commit()
        return self._hdr()

    # ------------------------------------------------------------------ EtcdBackend
    async def range(self, req: kv.RangeRequest) -> kv.RangeResponse:
        self.calls.append("range")
        return self._range(req)

    async def put(self, req: kv.PutRequest) -> kv.PutResponse:
        self.calls.append("put")
        r = self._put(req)
        return replace(r, header=self._finish(True))

    async def delete_range(self, req: kv.DeleteRangeRequest) -> kv.DeleteRangeResponse:
        self.calls.append("delete_range")
        r = self._delete(req)
        return replace(r, header=self._finish(True))

    async def txn(self, req: kv.TxnRequest) -> kv.TxnResponse:
        self.calls.append("txn")
        r = self._txn(req)
        return replace(r, header=self._finish(True))

    async def compact(self, req: kv.CompactionRequest) -> kv.CompactionResponse:
        if req.revision <= self.compact_rev:
            raise kverr.Compacted()
        if req.revision > self.rev:
            raise kverr.FutureRevision()
        self.compact_rev = req.revision
        return kv.CompactionResponse(self._hdr())

    async def lease_grant(self, req: kv.LeaseGrantRequest) -> kv.LeaseGrantResponse:
        lease_id = req.id
        if not lease_id:
            self.next_lease += 1
            lease_id = self.next_lease
        if lease_id in self.leases:
            raise kverr.LeaseExists()
        self.leases[lease_id] = req.ttl
        return kv.LeaseGrantResponse(self._hdr(), lease_id, req.ttl)

    async def lease_revoke(self, req: kv.LeaseRevokeRequest) -> kv.LeaseRevokeResponse:
        if req.id not in self.leases:
            raise kverr.LeaseNotFound()
        del self.leases[req.id]
        for key in [k for k, x in self.kvs.items() if x.lease == req.id]:
            self._delete(kv.DeleteRangeRequest(key=key))
        self._commit()
        return kv.LeaseRevokeResponse(self._hdr())

    async def lease_keep_alive(self, lease_id: int) -> int:
        if lease_id not in self.leases:
            raise kverr.LeaseNotFound()
        return self.leases[lease_id]

    async def lease_time_to_live(self, req: kv.LeaseTimeToLiveRequest) -> kv.LeaseTimeToLiveResponse:
        if req.id not in self.leases:
            return kv.LeaseTimeToLiveResponse(self._hdr(), req.id, -1, 0, ())
        keys = tuple(k for k, x in sorted(self.kvs.items()) if x.lease == req.id) if req.keys else ()
        ttl = self.leases[req.id]
        return kv.LeaseTimeToLiveResponse(self._hdr(), req.id, ttl, ttl, keys)

    async def lease_leases(self) -> kv.LeaseLeasesResponse:
        return kv.LeaseLeasesResponse(self._hdr(), tuple(kv.LeaseStatus(i) for i in sorted(self.leases)))

    def watch_create(self, req: kv.WatchCreateRequest, notify: Callable[[], None]) -> FakeWatcher:
        w = FakeWatcher(self, req, notify)
        if req.start_revision and req.start_revision <= self.compact_rev:
            w.cancel_delivery = WatchDelivery(
                revision=self.rev, canceled=True, compact_revision=self.compact_rev, cancel_reason=""
            )
            notify()
            return w
        self.watchers.append(w)
        if req.start_revision:
            for rev, events in self.history:
                if rev >= req.start_revision:
                    w.offer(events)
        return w

    async def member_list(self) -> list[MemberInfo]:
        return [MemberInfo(self.member_id, "fake", ("http://127.0.0.1:2380",), self.client_urls)]

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> tuple[MemberInfo, list[MemberInfo]]:
        added = MemberInfo(77, "", tuple(peer_urls), (), is_learner)
        return added, [*await self.member_list(), added]

    async def member_remove(self, member_id: int) -> list[MemberInfo]:
        raise kverr.MemberNotFound()

    async def member_update(self, member_id: int, peer_urls: list[str]) -> list[MemberInfo]:
        raise kverr.MemberNotFound()

    async def member_promote(self, member_id: int) -> list[MemberInfo]:
        raise kverr.MemberNotLearner()

    async def status(self) -> StatusInfo:
        size = 4096 + sum(len(k) + len(x.value) for k, x in self.kvs.items())
        return StatusInfo(
            version="3.6.0",
            db_size=size,
            db_size_in_use=size,
            leader=self.member_id,
            raft_index=self.rev,
            raft_term=2,
            raft_applied_index=self.rev,
            revision=self.rev,
        )

    async def alarm(self, action: kv.AlarmAction, member_id: int, alarm: kv.AlarmType) -> list[kv.AlarmMember]:
        if action == kv.AlarmAction.ACTIVATE:
            self.alarms.append(kv.AlarmMember(member_id, alarm))
        elif action == kv.AlarmAction.DEACTIVATE:
            self.alarms = [a for a in self.alarms if (a.member_id, a.alarm) != (member_id, alarm)]
        return list(self.alarms)

    async def hash_kv(self, revision: int) -> kv.HashKVResponse:
        h = 0
        for k, x in sorted(self.kvs.items()):
            h = zlib.crc32(k + x.value, h)
        return kv.HashKVResponse(self._hdr(), h, self.compact_rev, self.rev)

    async def snapshot(self) -> AsyncIterator[bytes]:
        for k, x in sorted(self.kvs.items()):
            yield k + b"=" + x.value + b"\n"

    async def move_leader(self, target_id: int) -> None:
        raise kverr.BadLeaderTransferee()

    async def defragment(self) -> None:
        return None
