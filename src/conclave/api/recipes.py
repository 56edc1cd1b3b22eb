"""Server-side concurrency recipes shared by the Lock and Election services.

Theory of operation: etcd's v3lock / v3election servers run clientv3's ``concurrency`` recipes
against their own KV and Watch APIs. These are the same recipes written against the
:class:`~conclave.wire.contract.EtcdBackend` directly: a contender puts ``<prefix><lease id in hex>``
with its lease and waits, in create-revision order, for every older key under the prefix to be
deleted (``wait_deletes``), so ownership passes in FIFO order without a thundering herd.

No business rules beyond the recipes; every wait is driven by backend watch notifications. Every
backend call carries the caller's ``auth`` (the Lock/Election RPC's credentials), so a recipe can do
only what its caller could do with KV, Lease and Watch calls.
"""

from __future__ import annotations

import asyncio

from conclave.kv import types as kv
from conclave.wire.contract import NO_AUTH, AuthInfo, EtcdBackend, WatchDelivery

SESSION_TTL_S = 60  # clientv3 concurrency.NewSession's default TTL, used when no lease is given


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def owner_key(prefix: bytes, lease: int) -> bytes:
    return prefix + f"{lease:x}".encode()


class EventFeed:
    """Deliveries of one backend watcher, awaited one at a time."""

    def __init__(self, backend: EtcdBackend, req: kv.WatchCreateRequest, auth: AuthInfo = NO_AUTH) -> None:
        self._wake = asyncio.Event()
        self._subscription = backend.watch_create(req, self._wake.set, auth=auth)

    async def next(self) -> WatchDelivery:
        while True:
            delivery = self._subscription.take()
            if delivery is not None:
                return delivery
            self._wake.clear()
            delivery = self._subscription.take()  # a notify between take() and clear() is not lost
            if delivery is not None:
                return delivery
            await self._wake.wait()

    def close(self) -> None:
        self._subscription.cancel()


async def wait_delete(backend: EtcdBackend, key: bytes, after_revision: int, auth: AuthInfo = NO_AUTH) -> None:
    """Return once ``key`` is deleted after ``after_revision`` (or its history was compacted)."""
    feed = EventFeed(backend, kv.WatchCreateRequest(key=key, start_revision=after_revision + 1), auth)
    try:
        while True:
            delivery = await feed.next()
            if delivery.canceled:
                return  # compacted: the caller re-checks with a fresh range
            if any(e.type == kv.EventType.DELETE for e in delivery.events):
                return
    finally:
        feed.close()


async def wait_deletes(backend: EtcdBackend, prefix: bytes, max_create_revision: int,
                       auth: AuthInfo = NO_AUTH) -> kv.ResponseHeader:
    """Wait until no key under ``prefix`` has a create revision <= ``max_create_revision``."""
    end = prefix_end(prefix)
    while True:
        r = await backend.range(
            kv.RangeRequest(
                key=prefix,
                range_end=end,
                limit=1,
                sort_order=kv.SortOrder.DESCEND,
                sort_target=kv.SortTarget.CREATE,
                max_create_revision=max_create_revision,
            ),
            auth=auth,
        )
        if not r.kvs:
            return r.header
        await wait_delete(backend, r.kvs[0].key, r.header.revision, auth)


async def first_created(backend: EtcdBackend, prefix: bytes, auth: AuthInfo = NO_AUTH) -> kv.RangeResponse:
    """The oldest key under ``prefix`` (etcd's WithFirstCreate)."""
    return await backend.range(
        kv.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            limit=1,
            sort_order=kv.SortOrder.ASCEND,
            sort_target=kv.SortTarget.CREATE,
        ),
        auth=auth,
    )


async def session_lease(backend: EtcdBackend, lease: int, auth: AuthInfo = NO_AUTH) -> int:
    """The lease a recipe runs under: the caller's, or (lease 0) a fresh one like NewSession grants."""
    if lease:
        return lease
    granted = await backend.lease_grant(kv.LeaseGrantRequest(ttl=SESSION_TTL_S), auth=auth)
    return granted.id


async def delete_quietly(backend: EtcdBackend, key: bytes, auth: AuthInfo = NO_AUTH) -> None:
    """Best-effort cleanup of a contender key after a failed or abandoned wait."""
    try:
        await backend.delete_range(kv.DeleteRangeRequest(key=key), auth=auth)
    except Exception:  # cleanup must not hide the original failure; the lease still expires
        return
