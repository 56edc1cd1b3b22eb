"""The v3electionpb.Election service: etcd's leader election, server-side.

Theory of operation (clientv3 ``concurrency.Election``, the recipe ``etcdctl elect`` and the Python
client's ``Election`` also run, on the same keys, so they all see one leader per name): candidates
for election N each own a key ``N/<lease in hex>`` holding their proclaimed value; the leader is the
candidate whose key has the lowest create revision. Campaign creates the key (or resumes it) and
waits until every older key is deleted; the returned LeaderKey (name, key, rev = create revision,
lease) fences later Proclaim and Resign calls, which are transactions guarded by
``create_revision(key) == rev``. Leader answers the current leader's key-value; Observe streams
every proclamation of successive leaders in order.

Layering: the gRPC edge (``grpc_server``) imports this module and registers its methods; this
module never imports the edge (``header`` and ``auth``, which reads a call's credentials, are handed
in). Every backend call carries the caller's credentials. The Election errors live here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from conclave.api import convert, pb, recipes
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.wire.contract import NO_AUTH, AuthInfo, EtcdBackend


class ElectionError(kverr.EtcdError):
    """clientv3/concurrency errors the Election service returns as plain (Unknown) gRPC errors."""

    code = "UNKNOWN"


class ElectionNoLeader(ElectionError):
    message = "election: no leader"


class ElectionNotLeader(ElectionError):
    message = "election: not leader"


class MissingLeaderKey(ElectionError):
    message = '"leader" field must be provided'


def _guarded(key: bytes, rev: int, op: kv.RequestOp) -> kv.TxnRequest:
    return kv.TxnRequest(
        compare=(
            kv.Compare(result=kv.CompareResult.EQUAL, target=kv.CompareTarget.CREATE, key=key, create_revision=rev),
        ),
        success=(op,),
    )


class ElectionService:
    """Campaign, Proclaim, Resign, Leader and Observe; ``header(revision)`` builds response headers."""

    NAME = "v3electionpb.Election"

    def __init__(self, backend: EtcdBackend, header: Callable[[int], Any],
                 auth: Callable[[Any], AuthInfo] | None = None) -> None:
        self.backend = backend
        self.header = header
        self.auth: Callable[[Any], AuthInfo] = auth if auth is not None else (lambda _context: NO_AUTH)

    async def campaign(self, request: Any, context: Any) -> Any:
        if not request.name:
            raise kverr.KeyNotProvided()
        backend = self.backend
        auth = self.auth(context)
        lease = await recipes.session_lease(backend, request.lease, auth)
        name = bytes(request.name)
        value = bytes(request.value)
        prefix = name + b"/"
        key = recipes.owner_key(prefix, lease)
        resp = await backend.txn(
            kv.TxnRequest(
                compare=(kv.Compare(result=kv.CompareResult.EQUAL, target=kv.CompareTarget.CREATE, key=key),),
                success=(kv.RequestOp(request_put=kv.PutRequest(key=key, value=value, lease=lease)),),
                failure=(kv.RequestOp(request_range=kv.RangeRequest(key=key)),),
            ),
            auth=auth,
        )
        rev = resp.header.revision
        if not resp.succeeded:
            mine = resp.responses[0].response_range
            assert mine is not None
            if not mine.kvs:
                raise ElectionNotLeader()
            rev = mine.kvs[0].create_revision
            if mine.kvs[0].value != value:
                proclaimed = await backend.txn(
                    _guarded(key, rev, kv.RequestOp(request_put=kv.PutRequest(key=key, value=value, lease=lease))),
                    auth=auth,
                )
                if not proclaimed.succeeded:
                    raise ElectionNotLeader()
        try:
            await recipes.wait_deletes(backend, prefix, rev - 1, auth)
        except BaseException:
            await recipes.delete_quietly(backend, key, auth)
            raise
        return pb.CampaignResponse(
            header=self.header(resp.header.revision),
            leader=pb.LeaderKey(name=name, key=key, rev=rev, lease=lease),
        )

    async def proclaim(self, request: Any, context: Any) -> Any:
        if not request.HasField("leader"):
            raise MissingLeaderKey()
        leader = request.leader
        r = await self.backend.txn(
            _guarded(
                leader.key,
                leader.rev,
                kv.RequestOp(request_put=kv.PutRequest(key=leader.key, value=request.value, lease=leader.lease)),
            ),
            auth=self.auth(context),
        )
        if not r.succeeded:
            raise ElectionNotLeader()
        return pb.ProclaimResponse(header=self.header(r.header.revision))

    async def resign(self, request: Any, context: Any) -> Any:
        if not request.HasField("leader"):
            raise MissingLeaderKey()
        leader = request.leader
        r = await self.backend.txn(
            _guarded(leader.key, leader.rev, kv.RequestOp(request_delete_range=kv.DeleteRangeRequest(key=leader.key))),
            auth=self.auth(context),
        )
        return pb.ResignResponse(header=self.header(r.header.revision))

    async def leader(self, request: Any, context: Any) -> Any:
        r = await recipes.first_created(self.backend, bytes(request.name) + b"/", self.auth(context))
        if not r.kvs:
            raise ElectionNoLeader()
        return pb.LeaderResponse(header=self.header(r.header.revision), kv=convert.key_value_to_pb(r.kvs[0]))

    async def observe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        backend = self.backend
        prefix = bytes(request.name) + b"/"
        auth = self.auth(context)
        while True:
            r = await recipes.first_created(backend, prefix, auth)
            revision = r.header.revision
            if r.kvs:
                leader_kv = r.kvs[0]
            else:  # no leader yet: wait for the first candidate to appear
                feed = recipes.EventFeed(
                    backend,
                    kv.WatchCreateRequest(
                        key=prefix, range_end=recipes.prefix_end(prefix), start_revision=revision + 1
                    ),
                    auth,
                )
                try:
                    found: kv.KeyValue | None = None
                    while found is None:
                        delivery = await feed.next()
                        if delivery.canceled:
                            break
                        revision = delivery.revision or revision
                        found = next((e.kv for e in delivery.events if e.type == kv.EventType.PUT), None)
                finally:
                    feed.close()
                if found is None:
                    continue  # compacted while waiting: look again
                leader_kv = found
            yield pb.LeaderResponse(header=self.header(revision), kv=convert.key_value_to_pb(leader_kv))
            feed = recipes.EventFeed(
                backend, kv.WatchCreateRequest(key=leader_kv.key, start_revision=leader_kv.mod_revision + 1), auth
            )
            try:
                deleted = False
                while not deleted:
                    delivery = await feed.next()
                    if delivery.canceled:
                        break
                    for event in delivery.events:
                        if event.type == kv.EventType.DELETE:
                            deleted = True
                            break
                        header = self.header(delivery.revision or event.kv.mod_revision)
                        yield pb.LeaderResponse(header=header, kv=convert.key_value_to_pb(event.kv))
            finally:
                feed.close()

    def methods(self, unary: Callable[[Any, str], Any], stream: Callable[[Any, str], Any]) -> dict[str, Any]:
        """The service's RPCs by method name, wrapped by the edge's ``unary``/``stream(fn, where)``."""
        return {
            "Campaign": unary(self.campaign, "Election.Campaign"),
            "Proclaim": unary(self.proclaim, "Election.Proclaim"),
            "Resign": unary(self.resign, "Election.Resign"),
            "Leader": unary(self.leader, "Election.Leader"),
            "Observe": stream(self.observe, "Election.Observe"),
        }
