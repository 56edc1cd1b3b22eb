"""The etcd backend of a sharded member: one ``NodeBackend`` per Raft group, requests routed by key.

Theory of operation
-------------------
``ShardedBackend(groups)`` implements the same contract as ``NodeBackend``
(``conclave.wire.contract.EtcdBackend``) over a ``MemberGroups``: it builds one ``NodeBackend`` per
group and sends each request where its keys are.

- A request whose keys all lie in one data group goes to that group's backend unchanged: same
  checks, same errors, that group's revision in the header.
- Range and DeleteRange over several groups are split at the split keys (``ShardMap.clip``), run
  in every group at once (each read linearizable in its group: NOT one snapshot across groups)
  and merged: kvs in key order (reversed for a descending key sort), a limit applied to the
  merged result (each group is asked for ``limit``; ``more`` is set when anything was left),
  counts and deleted counts summed. A sort on another target is done on the merged result when
  there is no limit and refused with one. ``revision`` (a read in the past) is refused: revisions
  are per group. The header's revision is the highest revision among the groups read.
- A Txn whose keys span groups is handed to the cross-shard coordinator (``self.coordinator``,
  ``xshard_coord``; the hook is ``_cross_shard_txn``); without one it is refused (``CrossShard``).
- A Watch over a range spanning groups registers one watcher per group and merges their
  deliveries: each group's events in order, groups interleaved; a cancellation of any (a
  compacted start revision) cancels the merged watch. Revisions (``start_revision``, the events'
  and the deliveries' header) are each group's own.
- Leases exist in every data group under the same ID: a grant is made in the first data group
  (which picks the ID when none is given) and then in the others with that ID; keep-alive,
  revoke and time-to-live go to every data group (``put --lease`` works on any key; the TTL is
  the first data group's; time-to-live lists the keys of every group).
- Status, member list, auth, alarms and the rest answer from the meta group (``__getattr__``);
  the current revision is the highest data group revision; HashKV combines every group's hash;
  defragment runs in every group; alarms are raised and listed in every group.
- Refused with a clear error while K>1 (``NotWithShards``): membership changes, auth enable,
  snapshot save (one file per group is not an etcd snapshot), a range in the past.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.machine.xshard import request_spans
from conclave.server.backend import NodeBackend
from conclave.server.groups import META_GROUP, MemberGroups
from conclave.wire.contract import NO_AUTH, AuthInfo, WatchDelivery, WatchSubscription

T = TypeVar("T")

Span = tuple[bytes, bytes]


class NotWithShards(kverr.EtcdError):
    code = "FAILED_PRECONDITION"
    message = "conclave: not supported on a cluster with more than one shard yet"


class CrossShard(kverr.EtcdError):
    code = "FAILED_PRECONDITION"
    message = "conclave: this transaction touches keys of several shards (cross-shard transactions are not enabled)"


def txn_spans(txn: kv.TxnRequest) -> list[Span]:
    """Every key span a txn may read or write (compares, both branches, nested txns): the lock
    spans ``machine.xshard`` computes, shared and exclusive together."""
    reads, writes = request_spans(txn)
    return reads + writes


class _MergedSubscription:
    """One watch over several groups: the groups' watchers, their deliveries interleaved."""

    def __init__(self, subs: list[WatchSubscription]) -> None:
        self.subs = subs
        self._next = 0
        self._done = False

    @property
    def synced_revision(self) -> int | None:
        revs = [s.synced_revision for s in self.subs]
        if any(r is None for r in revs):
            return None
        return max(r for r in revs if r is not None)

    def take(self) -> WatchDelivery | None:
        if self._done:
            return None
        for i in range(len(self.subs)):
            sub = self.subs[(self._next + i) % len(self.subs)]
            d = sub.take()
            if d is None:
                continue
            self._next = (self._next + i + 1) % len(self.subs)
            if d.canceled:
                self.cancel()
            return d
        return None

    def cancel(self) -> None:
        self._done = True
        for s in self.subs:
            s.cancel()


class ShardedBackend:
    """The etcd contract over a member's groups (see the module docstring)."""

    def __init__(self, groups: MemberGroups) -> None:
        self.groups = groups
        self.backends: dict[int, NodeBackend] = {gid: NodeBackend(groups.node(gid)) for gid in groups.group_ids()}
        self.meta = self.backends[META_GROUP]
        self.member_id = self.meta.member_id
        self.node = self.meta.node  # what the api reads beside the contract (the member's identity, metrics)
        # The cross-shard coordinator (server/xshard_coord.py; start_cross_shard wires it):
        #   await coordinator.txn(req: kv.TxnRequest, auth: AuthInfo) -> kv.TxnResponse
        self.coordinator: Any = None
        self.recovery: Any = None  # xshard_coord.Recovery: what a plain request that meets a lock calls
        self.sweeper: Any = None

    def start_cross_shard(self, data_dir: str, timeouts: Any = None) -> None:
        """Wire the coordinator, the recovery and the sweeper (server/xshard_coord.py) over the data
        groups: one ``NodeGroupPort`` per group, transaction ids from ``txn_seq_base(data_dir)``."""
        from conclave.server import xshard_coord as xc

        t = timeouts if timeouts is not None else xc.Timeouts()
        ports = {g: xc.NodeGroupPort(lambda g=g: self.groups.node(g)) for g in self.groups.data_group_ids()}
        self.recovery = xc.Recovery(ports, t)
        self.coordinator = xc.Coordinator(self.member_id, ports, self.groups.shard_map,
                                          seq_base=xc.txn_seq_base(data_dir), timeouts=t, recovery=self.recovery)
        self.sweeper = xc.Sweeper(ports, self.recovery, t)
        self.sweeper.start()

    async def close(self) -> None:
        """Stop the sweeper and the coordinator's and recoveries' background work (before the groups stop)."""
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.coordinator is not None:
            await self.coordinator.close()
        if self.recovery is not None:
            await self.recovery.close()

    async def _on(self, gid: int, call: Callable[[NodeBackend], Awaitable[T]]) -> T:
        """``call(group gid's backend)`` through ``_unlocked``."""
        return await self._unlocked(gid, lambda: call(self._data(gid)))

    async def _range_in(self, gid: int, req: kv.RangeRequest, auth: AuthInfo) -> kv.RangeResponse:
        return await self._unlocked(gid, lambda: self._data(gid).range(req, auth=auth))

    async def _delete_in(self, gid: int, req: kv.DeleteRangeRequest, auth: AuthInfo) -> kv.DeleteRangeResponse:
        return await self._unlocked(gid, lambda: self._data(gid).delete_range(req, auth=auth))

    async def _unlocked(self, gid: int, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` on group ``gid``; a plain request that meets a cross-shard transaction's lock
        (``Locked``) recovers or waits for that transaction and tries again, bounded by the lock
        wait (then "request timed out"): reads never see a decided but unresolved intent's old value."""
        if self.recovery is None:
            return await fn()
        out: T = await self.recovery.run_with_lock_wait(fn, where=gid)
        return out

    def __getattr__(self, name: str) -> Any:  # the rest of the contract: the meta group's answer
        return getattr(self.meta, name)

    # ------------------------------------------------------------------ routing

    @property
    def cluster_id(self) -> int:
        return self.meta.cluster_id

    def raft_term(self) -> int:
        return self.meta.raft_term()

    def has_leader(self) -> bool:
        return all(b.has_leader() for b in self.backends.values())

    def current_revision(self) -> int:
        return max(self.backends[g].current_revision() for g in self.groups.data_group_ids())

    def _data(self, gid: int) -> NodeBackend:
        return self.backends[gid]

    def _clip(self, key: bytes, range_end: bytes) -> list[tuple[int, Span]]:
        return self.groups.shard_map.clip((key, range_end))

    def _header(self, revisions: list[int]) -> kv.ResponseHeader:
        return kv.ResponseHeader(self.cluster_id, self.member_id, max(revisions, default=0), self.raft_term())

    async def read_barrier(self) -> None:
        await asyncio.gather(*(b.read_barrier() for b in self.backends.values()))

    # ------------------------------------------------------------------ KV

    async def range(self, req: kv.RangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.RangeResponse:
        parts = self._clip(req.key, req.range_end)
        if len(parts) == 1:
            g = parts[0][0]
            return await self._unlocked(g, lambda: self._data(g).range(req, auth=auth))
        if req.revision:
            raise NotWithShards("a range over several shards at a past revision (revisions are per shard)")
        by_key = req.sort_order == kv.SortOrder.NONE or req.sort_target == kv.SortTarget.KEY
        if req.limit and not by_key:
            raise NotWithShards("a limited range over several shards sorted by another target than the key")
        resps = await asyncio.gather(*(
            self._range_in(g, dataclasses.replace(req, key=k, range_end=e), auth) for g, (k, e) in parts))
        kvs = [x for r in resps for x in r.kvs]  # the groups are in key order, each sorted by key
        if req.sort_order == kv.SortOrder.DESCEND and by_key:  # each group's part is descending already
            kvs = [x for r in reversed(resps) for x in r.kvs]
        elif not by_key:
            field = {kv.SortTarget.VERSION: "version", kv.SortTarget.CREATE: "create_revision",
                     kv.SortTarget.MOD: "mod_revision", kv.SortTarget.VALUE: "value"}[req.sort_target]  # fmt: skip
            kvs.sort(key=lambda x: getattr(x, field), reverse=req.sort_order == kv.SortOrder.DESCEND)
        more = any(r.more for r in resps)
        if req.limit and len(kvs) > req.limit:
            kvs, more = kvs[: req.limit], True
        return kv.RangeResponse(self._header([r.header.revision for r in resps]), tuple(kvs), more,
                                sum(r.count for r in resps))  # fmt: skip

    async def put(self, req: kv.PutRequest, *, auth: AuthInfo = NO_AUTH) -> kv.PutResponse:
        g = self.groups.group_of(req.key)
        return await self._unlocked(g, lambda: self._data(g).put(req, auth=auth))

    async def delete_range(self, req: kv.DeleteRangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.DeleteRangeResponse:
        parts = self._clip(req.key, req.range_end)
        if len(parts) == 1:
            g = parts[0][0]
            return await self._unlocked(g, lambda: self._data(g).delete_range(req, auth=auth))
        resps = await asyncio.gather(*(
            self._delete_in(g, dataclasses.replace(req, key=k, range_end=e), auth) for g, (k, e) in parts))
        return kv.DeleteRangeResponse(self._header([r.header.revision for r in resps]),
                                      sum(r.deleted for r in resps), tuple(x for r in resps for x in r.prev_kvs))

    def txn_groups(self, req: kv.TxnRequest) -> list[int]:
        """The data groups a txn touches, in order (the first data group for an empty txn)."""
        gids: set[int] = set()
        for key, end in txn_spans(req):
            gids.update(g for g, _ in self._clip(key, end))
        return sorted(gids) or [self.groups.data_group_ids()[0]]

    async def txn(self, req: kv.TxnRequest, *, auth: AuthInfo = NO_AUTH) -> kv.TxnResponse:
        gids = self.txn_groups(req)
        if len(gids) == 1:
            g = gids[0]
            return await self._unlocked(g, lambda: self._data(g).txn(req, auth=auth))
        return await self._cross_shard_txn(req, gids, auth)

    async def _cross_shard_txn(self, req: kv.TxnRequest, gids: list[int], auth: AuthInfo) -> kv.TxnResponse:
        # ---- THE HOOK of the cross-shard coordinator (server/xshard_coord.py) ----
        if self.coordinator is None:
            raise CrossShard(f"groups {','.join(map(str, gids))}")
        resp: kv.TxnResponse = await self.coordinator.txn(req, auth)
        return resp

    async def compact(self, req: kv.CompactionRequest, *, auth: AuthInfo = NO_AUTH) -> kv.CompactionResponse:
        """Compacts every data group whose revision reached ``req.revision`` (revisions are per group)."""
        targets = [g for g in self.groups.data_group_ids() if self._data(g).current_revision() >= req.revision]
        if not targets:
            raise kverr.FutureRevision()
        resps = await asyncio.gather(*(self._data(g).compact(req, auth=auth) for g in targets))
        return kv.CompactionResponse(self._header([r.header.revision for r in resps]))

    # ------------------------------------------------------------------ leases: in every data group

    async def _every(self, call: Callable[[NodeBackend], Any]) -> list[Any]:
        """``call`` on every data group; LeaseNotFound only when no group knows the lease."""
        out = await asyncio.gather(*(self._on(g, call) for g in self.groups.data_group_ids()),
                                   return_exceptions=True)  # fmt: skip
        found = [r for r in out if not isinstance(r, BaseException)]
        errs = [r for r in out if isinstance(r, BaseException)]
        if found and all(isinstance(e, kverr.LeaseNotFound) for e in errs):
            return found
        raise errs[0]

    async def lease_grant(self, req: kv.LeaseGrantRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseGrantResponse:
        first, *rest = self.groups.data_group_ids()
        resp = await self._data(first).lease_grant(req, auth=auth)
        if resp.error:
            return resp
        same = dataclasses.replace(req, id=resp.id)
        await asyncio.gather(*(self._data(g).lease_grant(same, auth=auth) for g in rest))
        return resp

    async def lease_revoke(self, req: kv.LeaseRevokeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseRevokeResponse:
        resps = await self._every(lambda b: b.lease_revoke(req, auth=auth))
        return kv.LeaseRevokeResponse(self._header([r.header.revision for r in resps]))

    async def lease_keep_alive(self, lease_id: int, *, auth: AuthInfo = NO_AUTH) -> int:
        ttls = await self._every(lambda b: b.lease_keep_alive(lease_id, auth=auth))
        return int(ttls[0])

    async def lease_time_to_live(self, req: kv.LeaseTimeToLiveRequest, *,
                                 auth: AuthInfo = NO_AUTH) -> kv.LeaseTimeToLiveResponse:
        resps = await asyncio.gather(*(self._data(g).lease_time_to_live(req, auth=auth)
                                       for g in self.groups.data_group_ids()))  # fmt: skip
        first = resps[0]
        return dataclasses.replace(first, keys=tuple(sorted(k for r in resps for k in r.keys)))

    async def lease_leases(self, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseLeasesResponse:
        return await self._data(self.groups.data_group_ids()[0]).lease_leases(auth=auth)

    # ------------------------------------------------------------------ watch

    def watch_create(self, req: kv.WatchCreateRequest, notify: Callable[[], None], *,
                     auth: AuthInfo = NO_AUTH) -> WatchSubscription:
        parts = self._clip(req.key, req.range_end)
        if len(parts) == 1:
            return self._data(parts[0][0]).watch_create(req, notify, auth=auth)
        subs: list[WatchSubscription] = []
        try:
            for g, (k, e) in parts:
                subs.append(self._data(g).watch_create(dataclasses.replace(req, key=k, range_end=e), notify,
                                                       auth=auth))  # fmt: skip
        except BaseException:
            for s in subs:
                s.cancel()
            raise
        return _MergedSubscription(subs)

    # ------------------------------------------------------------------ maintenance

    async def hash_kv(self, revision: int, *, auth: AuthInfo = NO_AUTH) -> kv.HashKVResponse:
        if revision:
            raise NotWithShards("HashKV at a revision (revisions are per shard); ask for revision 0")
        resps = [await self.backends[g].hash_kv(0, auth=auth) for g in self.groups.group_ids()]
        combined = zlib.crc32(b"".join(r.hash.to_bytes(8, "big") for r in resps))
        return kv.HashKVResponse(self._header([r.header.revision for r in resps]), combined,
                                 max(r.compact_revision for r in resps), max(r.hash_revision for r in resps))

    async def alarm(self, action: kv.AlarmAction, member_id: int, alarm: kv.AlarmType, *,
                    auth: AuthInfo = NO_AUTH) -> list[kv.AlarmMember]:
        out = await asyncio.gather(*(b.alarm(action, member_id, alarm, auth=auth) for b in self.backends.values()))
        seen: dict[tuple[int, int], kv.AlarmMember] = {}
        for lst in out:
            for a in lst:
                seen.setdefault((a.member_id, int(a.alarm)), a)
        return list(seen.values())

    async def defragment(self, *, auth: AuthInfo = NO_AUTH) -> None:
        for b in self.backends.values():
            await b.defragment(auth=auth)

    def snapshot(self, *, auth: AuthInfo = NO_AUTH) -> AsyncIterator[bytes]:
        raise NotWithShards("snapshot save (each shard has its own log; back up the data dirs instead)")

    # ------------------------------------------------------------------ refused while K > 1

    async def member_add(self, peer_urls: list[str], is_learner: bool, *, auth: AuthInfo = NO_AUTH) -> Any:
        raise NotWithShards("member add")

    async def member_remove(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> Any:
        raise NotWithShards("member remove")

    async def member_update(self, member_id: int, peer_urls: list[str], *, auth: AuthInfo = NO_AUTH) -> Any:
        raise NotWithShards("member update")

    async def member_promote(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> Any:
        raise NotWithShards("member promote")

    async def auth_enable(self, *, auth: AuthInfo = NO_AUTH) -> int:
        raise NotWithShards("auth enable")

    # ------------------------------------------------------------------ conclave shards

    async def shard_table(self) -> list[dict[str, Any]]:
        """One row per group as this member sees it (``conclave shards``); the split is the meta group's."""
        rows = []
        table = self.groups.read_table()
        for gid in self.groups.group_ids():
            node = self.groups.node(gid)
            if gid == META_GROUP:
                start, end, role = b"", b"", "meta"
            else:
                start, end = self.groups.range_of(gid)
                role = "data"
            rows.append({
                "group": gid, "role": role, "start": start.decode(errors="backslashreplace"),
                "end": end.decode(errors="backslashreplace"), "leader": node.leader_id(),
                "keys": len(node.store),
                "revision": int(node.store.revision), "raft_index": int(node.applied_index),
                "raft_term": int(node.raft_term()),
            })  # fmt: skip
        return [{"member": self.member_id, "split_table": None if table is None else
                 [k.decode(errors="backslashreplace") for k in table], "groups": rows}]  # fmt: skip
