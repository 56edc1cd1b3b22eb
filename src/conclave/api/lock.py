"""The v3lockpb.Lock service: etcd's distributed mutex, server-side.

Theory of operation (clientv3 ``concurrency.Mutex``, the recipe ``etcdctl lock`` and the Python
client's ``Lock`` also run, on the same keys, so all three exclude each other on one name): the lock
named N is the set of keys under ``N/``; a caller holding lease L owns key ``N/<L in hex>``. Lock
creates that key (or finds it, so locking twice with one lease is one acquisition), then waits until
every key under ``N/`` created before it is deleted. The caller owns the lock while its key exists;
Unlock deletes the key, and the lease expiring deletes it too. A Lock call abandoned by its client
deletes its key so it does not block later callers.

Layering: the gRPC edge (``grpc_server``) imports this module and registers its methods; this
module never imports the edge (``header`` and ``auth``, which reads a call's credentials, are handed in).
Every backend call carries the caller's credentials: locking needs what the recipe's KV, Lease and
Watch calls need (WRITE and READ on the lock's prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conclave.api import pb, recipes
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.wire.contract import NO_AUTH, AuthInfo, EtcdBackend


class SessionExpired(kverr.EtcdError):
    """The owner key vanished while waiting (its lease expired): clientv3's ErrSessionExpired."""

    code = "UNKNOWN"
    message = "mutex: session is expired"


class LockService:
    """The Lock and Unlock calls; ``header(revision)`` builds the response header (the edge's)."""

    NAME = "v3lockpb.Lock"

    def __init__(self, backend: EtcdBackend, header: Callable[[int], Any],
                 auth: Callable[[Any], AuthInfo] | None = None) -> None:
        self.backend = backend
        self.header = header
        self.auth: Callable[[Any], AuthInfo] = auth if auth is not None else (lambda _context: NO_AUTH)

    async def lock(self, request: Any, context: Any) -> Any:
        if not request.name:
            raise kverr.KeyNotProvided()
        backend = self.backend
        auth = self.auth(context)
        lease = await recipes.session_lease(backend, request.lease, auth)
        prefix = bytes(request.name) + b"/"
        my_key = recipes.owner_key(prefix, lease)
        end = recipes.prefix_end(prefix)
        get_owner = kv.RequestOp(
            request_range=kv.RangeRequest(
                key=prefix, range_end=end, limit=1, sort_order=kv.SortOrder.ASCEND, sort_target=kv.SortTarget.CREATE
            )
        )
        resp = await backend.txn(
            kv.TxnRequest(
                compare=(kv.Compare(result=kv.CompareResult.EQUAL, target=kv.CompareTarget.CREATE, key=my_key),),
                success=(kv.RequestOp(request_put=kv.PutRequest(key=my_key, value=b"", lease=lease)), get_owner),
                failure=(kv.RequestOp(request_range=kv.RangeRequest(key=my_key)), get_owner),
            ),
            auth=auth,
        )
        header = resp.header
        my_rev = header.revision
        if not resp.succeeded:
            mine = resp.responses[0].response_range
            assert mine is not None
            if not mine.kvs:  # deleted between the compare and now: treat like an expired session
                raise SessionExpired()
            my_rev = mine.kvs[0].create_revision
        owner = resp.responses[1].response_range
        assert owner is not None
        if owner.kvs and owner.kvs[0].create_revision != my_rev:
            try:
                header = await recipes.wait_deletes(backend, prefix, my_rev - 1, auth)
            except BaseException:
                await recipes.delete_quietly(backend, my_key, auth)
                raise
            check = await backend.range(kv.RangeRequest(key=my_key), auth=auth)
            if not check.kvs:
                raise SessionExpired()
        return pb.LockResponse(header=self.header(header.revision), key=my_key)

    async def unlock(self, request: Any, context: Any) -> Any:
        if not request.key:
            raise kverr.KeyNotProvided()
        r = await self.backend.delete_range(kv.DeleteRangeRequest(key=request.key), auth=self.auth(context))
        return pb.UnlockResponse(header=self.header(r.header.revision))

    def methods(self, unary: Callable[[Any, str], Any]) -> dict[str, Any]:
        """The service's RPCs by method name, each wrapped by the edge's ``unary(fn, where)``."""
        return {"Lock": unary(self.lock, "Lock.Lock"), "Unlock": unary(self.unlock, "Lock.Unlock")}
