"""Coordination recipes built on :class:`~conclave.client.aio.CoreClient`: compare-and-set, leases, watches.

Theory of operation: every recipe is a key layout plus transactions whose compares make the
decision atomic in the replicated log.

* ``Lock`` / ``Election``: etcd's own concurrency recipe, the one ``etcdctl lock``/``elect``, the
  v3lock / v3election services (``conclave.api.lock``/``election``) and etcd's Go client
  (``concurrency.Mutex``/``Election``) run, with its key layout, so all of them exclude each other
  on one name. The lock or election named N is the set of keys under ``N/``; a contender owns
  ``N/<session lease id in lowercase hex, unpadded>``, created with its lease in a transaction
  guarded by ``create_revision == 0`` (so a retry finds its own key). The contender whose key has
  the smallest create revision holds it; every other one waits for the deletion of the key with the
  largest create revision below its own (its predecessor, not the holder: no thundering herd), then
  looks again. The create revision is the fencing token: revisions only grow, so it is strictly
  larger for every later holder.
* ``Counter``: read (value, mod revision), then put the new value only if the mod revision did not
  move (compare-and-set loop) = linearizable increment-and-get.
* ``claim_unique``: create-if-absent (compare create_revision == 0); the :class:`Claim` answered is
  truthy only when the claim is the caller's.
* ``Queue``: items are keys ordered by create revision; a consumer takes the oldest by deleting it
  under a compare of its mod revision, so exactly one consumer succeeds.
* ``Broadcast``: appending bumps a head key's version and writes the message under that sequence
  number in one transaction conditional on the version, so sequence numbers are dense and their
  order is the log's; subscribers read then watch and see one sequence with no gap.
* ``Barrier`` / ``DoubleBarrier``: etcd's recipes (a key to wait on; N participants enter and leave).

Layering: recipes import the core client; the core never imports recipes. :class:`AsyncClient`
(the class users construct) is the core client plus one factory per recipe, defined here.

Writes that may have been applied before an error (``OutcomeUnknown``) are retried only where the
transaction is idempotent by construction (lock keys are named by lease, claims compare owners).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from conclave.client.aio import CoreClient, Session
from conclave.client.errors import (
    LockTimeout,
    NotElected,
    ProtocolError,
    QueueEmpty,
    SessionExpired,
)
from conclave.client.types import (
    Claim,
    KeyLike,
    create_revision,
    delete_op,
    get_op,
    mod_revision,
    prefix_end,
    put_op,
    to_bytes,
    value,
    version,
)
from conclave.kv import types as kv

ROOT = b"conclave/"  # every recipe but Lock and Election (whose layout is etcd's) lives under it


def contender_prefix(name: KeyLike) -> bytes:
    """The prefix of lock or election ``name``'s contender keys: ``<name>/``, as etcd's concurrency."""
    return to_bytes(name) + b"/"


def contender_key(prefix: bytes, lease_id: int) -> bytes:
    """A contender's key: the prefix and its lease id in lowercase hex, unpadded (Go's ``%x``)."""
    return prefix + b"%x" % lease_id


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - asyncio.get_running_loop().time())


async def _wait_for_event(client: CoreClient, key: bytes, from_revision: int, deadline: float | None,
                          kind: kv.EventType | None = None, prefix: bool = False) -> None:
    """Return at the first event (of ``kind``) on ``key`` at or after ``from_revision``."""
    watch = client.watch(key, prefix=prefix, start_revision=from_revision)
    try:
        while True:
            left = _left(deadline)
            if left is not None and left <= 0:
                raise TimeoutError
            ev = await watch.next(left)
            if ev is None:
                raise TimeoutError
            if kind is None or ev.type == kind:
                return
    finally:
        watch.close()


async def _create_own_key(client: CoreClient, key: bytes, val: bytes, lease_id: int) -> tuple[int, bytes]:
    """Create ``key`` with ``val`` and the session lease if absent; (its create revision, its value)."""
    r = await client.transaction([create_revision(key) == 0], [put_op(key, val, lease=lease_id)], [get_op(key)],
                                 idempotent=True)
    if r.succeeded:
        return r.header.revision, val
    kvs = r.responses[0].response_range.kvs if r.responses[0].response_range else ()
    if not kvs:
        raise SessionExpired("the contender key vanished while it was being created")
    return kvs[0].create_revision, kvs[0].value


async def _wait_predecessors(client: CoreClient, prefix: bytes, my_rev: int, deadline: float | None) -> None:
    """Wait until no key under ``prefix`` has a create revision below ``my_rev``."""
    while True:
        r = await client.range(prefix, prefix_end(prefix), limit=1, max_create_revision=my_rev - 1,
                               sort_target=kv.SortTarget.CREATE, sort_order=kv.SortOrder.DESCEND)
        if not r.kvs:
            return
        try:
            await _wait_for_event(client, r.kvs[0].key, r.header.revision + 1, deadline, kv.EventType.DELETE)
        except TimeoutError:
            raise LockTimeout(f"{prefix.decode(errors='replace')}: not acquired in time") from None


class Lock:
    """Distributed mutual exclusion with a fencing token; ``async with client.lock("name") as held:``.

    ``fencing_token`` (the lock key's create revision) is strictly larger for every later holder:
    hand it to the resource you protect and let it refuse tokens older than the newest it has seen.
    The lock is held through a session lease: if this process dies, it is released after ``ttl``.
    """

    _sync_wrap = True

    def __init__(self, client: CoreClient, name: KeyLike, ttl: int = 10, *, timeout: float | None = None) -> None:
        self.client = client
        self.name = to_bytes(name)
        self.prefix = contender_prefix(self.name)
        self.ttl = ttl
        self.timeout = timeout
        self.session: Session | None = None
        self.key = b""
        self.fencing_token = 0

    async def acquire(self, timeout: float | None = None) -> Lock:
        deadline = _deadline(self.timeout if timeout is None else timeout)
        self.session = await self.client.session(self.ttl)
        try:
            self.key = contender_key(self.prefix, self.session.lease_id)
            my_rev, _ = await _create_own_key(self.client, self.key, b"", self.session.lease_id)
            await _wait_predecessors(self.client, self.prefix, my_rev, deadline)
            mine = await self.client.get_kv(self.key)
            if mine is None or mine.create_revision != my_rev:
                raise SessionExpired("the lock's session expired while waiting")
            self.fencing_token = my_rev
            return self
        except BaseException:
            await self._abandon()
            raise

    async def _abandon(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await asyncio.shield(session.close())

    async def release(self) -> None:
        if self.session is not None and self.key:
            try:
                await self.client.transaction([create_revision(self.key) == self.fencing_token],
                                              [delete_op(self.key)], idempotent=True)
            finally:
                await self._abandon()
        self.fencing_token = 0

    async def is_held(self) -> bool:
        """True while the lock key still exists with our token (the session may have expired)."""
        if not self.key or not self.fencing_token:
            return False
        mine = await self.client.get_kv(self.key)
        return mine is not None and mine.create_revision == self.fencing_token

    async def __aenter__(self) -> Lock:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class Election:
    """Leader election: ``campaign(value)`` waits to become leader; ``proclaim``, ``resign``,
    ``leader()`` (the current leader's record or None) and ``observe()`` (each new leader)."""

    _sync_wrap = True

    def __init__(self, client: CoreClient, name: KeyLike, ttl: int = 10) -> None:
        self.client = client
        self.name = to_bytes(name)
        self.prefix = contender_prefix(self.name)
        self.ttl = ttl
        self.session: Session | None = None
        self.key = b""
        self.revision = 0

    async def campaign(self, val: KeyLike, timeout: float | None = None) -> int:
        """Become leader with ``val``; returns the leadership's revision (also a fencing token)."""
        deadline = _deadline(timeout)
        if self.session is None or not self.session.alive:
            self.session = await self.client.session(self.ttl)
        self.key = contender_key(self.prefix, self.session.lease_id)
        wanted = to_bytes(val)
        try:
            my_rev, current = await _create_own_key(self.client, self.key, wanted, self.session.lease_id)
            if current != wanted:  # resumed a campaign of this session under another value: as etcd, update it
                r = await self.client.transaction([create_revision(self.key) == my_rev],
                                                  [put_op(self.key, wanted, lease=self.session.lease_id)],
                                                  idempotent=True)
                if not r.succeeded:
                    raise SessionExpired("the election's session expired while campaigning")
            await _wait_predecessors(self.client, self.prefix, my_rev, deadline)
            mine = await self.client.get_kv(self.key)
            if mine is None or mine.create_revision != my_rev:
                raise SessionExpired("the election's session expired while campaigning")
        except BaseException:
            await asyncio.shield(self.resign())
            raise
        self.revision = my_rev
        return my_rev

    async def proclaim(self, val: KeyLike) -> None:
        """Publish a new value while leader (raises NotElected otherwise)."""
        if not self.revision or self.session is None:
            raise NotElected("proclaim: not the leader")
        r = await self.client.transaction([create_revision(self.key) == self.revision],
                                          [put_op(self.key, val, lease=self.session.lease_id)], idempotent=True)
        if not r.succeeded:
            raise NotElected("proclaim: leadership lost")

    async def resign(self) -> None:
        if self.key:
            if self.revision:
                await self.client.transaction([create_revision(self.key) == self.revision], [delete_op(self.key)],
                                              idempotent=True)
            else:
                await self.client.delete(self.key)
        self.revision = 0
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def leader(self) -> kv.KeyValue | None:
        r = await self.client.range(self.prefix, prefix_end(self.prefix), limit=1,
                                    sort_target=kv.SortTarget.CREATE, sort_order=kv.SortOrder.ASCEND)
        return r.kvs[0] if r.kvs else None

    async def is_leader(self) -> bool:
        current = await self.leader()
        return current is not None and bool(self.revision) and current.create_revision == self.revision

    async def observe(self) -> AsyncIterator[kv.KeyValue | None]:
        """Yield the leader record each time it changes (None while there is none)."""
        last: tuple[bytes, int] | None = (b"", -1)
        while True:
            r = await self.client.range(self.prefix, prefix_end(self.prefix), limit=1,
                                        sort_target=kv.SortTarget.CREATE, sort_order=kv.SortOrder.ASCEND)
            current = r.kvs[0] if r.kvs else None
            ident = (current.key, current.mod_revision) if current else None
            if ident != last:
                last = ident
                yield current
            await _wait_for_event(self.client, self.prefix, r.header.revision + 1, None, prefix=True)


class Counter:
    """A linearizable counter: ``increment(delta)`` returns the new value (compare-and-set loop)."""

    _sync_wrap = True
    PREFIX = ROOT + b"counter/"

    def __init__(self, client: CoreClient, name: KeyLike) -> None:
        self.client = client
        self.key = self.PREFIX + to_bytes(name)

    async def get(self) -> int:
        raw = await self.client.get(self.key)
        return int(raw) if raw else 0

    async def increment(self, delta: int = 1) -> int:
        current = await self.client.get_kv(self.key)
        while True:
            old = int(current.value) if current is not None else 0
            guard = (mod_revision(self.key) == current.mod_revision) if current is not None else \
                (create_revision(self.key) == 0)
            new = old + delta
            r = await self.client.transaction([guard], [put_op(self.key, str(new))], [get_op(self.key)])
            if r.succeeded:
                return new
            rr = r.responses[0].response_range
            current = rr.kvs[0] if rr is not None and rr.kvs else None

    async def decrement(self, delta: int = 1) -> int:
        return await self.increment(-delta)


def _unique_key(namespace: KeyLike, val: KeyLike) -> bytes:
    return ROOT + b"unique/" + to_bytes(namespace) + b"/" + to_bytes(val)


async def claim_unique(client: CoreClient, namespace: KeyLike, val: KeyLike, owner: KeyLike, *,
                       lease: int = 0, timeout: float | None = None) -> Claim:
    """Create-if-absent: the first owner to claim ``val`` in ``namespace`` keeps it.

    ``lease`` (a lease id) makes the claim temporary. The answer is truthy only when ``owner`` holds
    the value (``if await claim_unique(...):`` is safe); a refused claim is falsy and names the
    holder. Claiming again with the same owner answers ``claimed=True`` (a retry after a lost
    answer is safe).
    """
    key = _unique_key(namespace, val)
    who = to_bytes(owner)
    r = await client.transaction([create_revision(key) == 0], [put_op(key, who, lease=lease)], [get_op(key)],
                                 timeout=timeout, idempotent=True)
    if r.succeeded:
        return Claim(True, who, r.header.revision, lease)
    rr = r.responses[0].response_range
    if rr is None or not rr.kvs:  # deleted between compare and read cannot happen in one txn
        raise ProtocolError("claim_unique: failure branch returned no record")
    held = rr.kvs[0]
    return Claim(held.value == who, held.value, held.create_revision, held.lease)


async def release_unique(client: CoreClient, namespace: KeyLike, val: KeyLike, owner: KeyLike, *,
                         timeout: float | None = None) -> bool:
    """Give ``val`` up if ``owner`` holds it; True when it was released."""
    key = _unique_key(namespace, val)
    r = await client.transaction([value(key) == to_bytes(owner)], [delete_op(key)], timeout=timeout)
    return r.succeeded


class Barrier:
    """``hold()`` raises the barrier, ``release()`` lowers it, ``wait()`` blocks while it is up."""

    _sync_wrap = True
    PREFIX = ROOT + b"barrier/"

    def __init__(self, client: CoreClient, name: KeyLike) -> None:
        self.client = client
        self.key = self.PREFIX + to_bytes(name)

    async def hold(self) -> None:
        await self.client.put(self.key, b"")

    async def release(self) -> None:
        await self.client.delete(self.key)

    async def wait(self, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        r = await self.client.range(self.key)
        if not r.kvs:
            return
        await _wait_for_event(self.client, self.key, r.header.revision + 1, deadline, kv.EventType.DELETE)


class DoubleBarrier:
    """``count`` participants: ``enter()`` returns once all have entered, ``leave()`` once all left."""

    _sync_wrap = True
    PREFIX = ROOT + b"double-barrier/"

    def __init__(self, client: CoreClient, name: KeyLike, count: int, ttl: int = 10) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self.client = client
        self.prefix = self.PREFIX + to_bytes(name) + b"/"
        self.waiters = self.prefix + b"waiters/"
        self.ready = self.prefix + b"ready"
        self.count = count
        self.ttl = ttl
        self.session: Session | None = None
        self.key = b""

    async def enter(self, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        self.session = await self.client.session(self.ttl)
        self.key = self.waiters + b"%016x" % self.session.lease_id
        await self.client.put(self.key, b"", lease=self.session.lease_id)
        r = await self.client.range(self.waiters, prefix_end(self.waiters), count_only=True)
        if r.count >= self.count:
            await self.client.put(self.ready, b"")
            return
        ready = await self.client.range(self.ready)
        if ready.kvs:
            return
        await _wait_for_event(self.client, self.ready, ready.header.revision + 1, deadline, kv.EventType.PUT)

    async def leave(self, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        if self.key:
            await self.client.delete(self.key)
        while True:
            r = await self.client.range(self.waiters, prefix_end(self.waiters), count_only=True)
            if r.count == 0:
                await self.client.delete(self.ready)
                break
            await _wait_for_event(self.client, self.waiters, r.header.revision + 1, deadline,
                                  kv.EventType.DELETE, prefix=True)
        if self.session is not None:
            await self.session.close()
            self.session = None


class Queue:
    """A FIFO queue (order = order of ``put``); every item is taken by exactly one ``get``."""

    _sync_wrap = True
    PREFIX = ROOT + b"queue/"

    def __init__(self, client: CoreClient, name: KeyLike) -> None:
        self.client = client
        self.prefix = self.PREFIX + to_bytes(name) + b"/"

    async def put(self, item: KeyLike) -> int:
        """Enqueue ``item``; returns its revision (its place in the order)."""
        r = await self.client.put(self.prefix + uuid.uuid4().hex.encode(), item)
        return r.header.revision

    async def get(self, timeout: float | None = None) -> bytes:
        """Take the oldest item, waiting up to ``timeout`` seconds (forever if None) for one."""
        deadline = _deadline(timeout)
        while True:
            r = await self.client.range(self.prefix, prefix_end(self.prefix), limit=1,
                                        sort_target=kv.SortTarget.CREATE, sort_order=kv.SortOrder.ASCEND)
            if r.kvs:
                head = r.kvs[0]
                t = await self.client.transaction([mod_revision(head.key) == head.mod_revision],
                                                  [delete_op(head.key)])
                if t.succeeded:
                    return head.value
                continue  # another consumer took it
            try:
                await _wait_for_event(self.client, self.prefix, r.header.revision + 1, deadline,
                                      kv.EventType.PUT, prefix=True)
            except TimeoutError:
                raise QueueEmpty(f"queue {self.prefix.decode(errors='replace')}: empty") from None

    async def size(self) -> int:
        r = await self.client.range(self.prefix, prefix_end(self.prefix), count_only=True)
        return r.count


class Broadcast:
    """Total order broadcast: ``append(message)`` returns its sequence number (0, 1, 2, ...);
    ``subscribe(from_seq)`` yields ``(seq, message)`` for every message from ``from_seq`` on, in the
    same order for every subscriber, resuming without gaps across reconnects."""

    _sync_wrap = True
    PREFIX = ROOT + b"broadcast/"
    PAGE = 512

    def __init__(self, client: CoreClient, name: KeyLike) -> None:
        self.client = client
        self.prefix = self.PREFIX + to_bytes(name) + b"/"
        self.head = self.prefix + b"head"
        self.messages = self.prefix + b"m/"

    def _key(self, seq: int) -> bytes:
        return self.messages + b"%020d" % seq

    async def append(self, message: KeyLike) -> int:
        msg = to_bytes(message)
        current = await self.client.get_kv(self.head)
        seq = current.version if current is not None else 0
        while True:
            r = await self.client.transaction([version(self.head) == seq],
                                              [put_op(self.head, b""), put_op(self._key(seq), msg)],
                                              [get_op(self.head)])
            if r.succeeded:
                return seq
            rr = r.responses[0].response_range
            seq = rr.kvs[0].version if rr is not None and rr.kvs else 0

    async def length(self) -> int:
        current = await self.client.get_kv(self.head)
        return current.version if current is not None else 0

    async def subscribe(self, from_seq: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        expected = from_seq
        end = prefix_end(self.messages)
        start = self._key(from_seq)
        at_revision = 0
        while True:  # what is already there, page by page at one revision
            r = await self.client.range(start, end, limit=self.PAGE, revision=at_revision)
            at_revision = at_revision or r.header.revision
            for item in r.kvs:
                seq = int(item.key[len(self.messages):])
                if seq != expected:
                    raise ProtocolError(f"broadcast: expected message {expected}, found {seq}")
                yield seq, item.value
                expected += 1
            if not r.more or not r.kvs:
                break
            start = r.kvs[-1].key + b"\0"
        watch = self.client.watch(self.messages, prefix=True, start_revision=at_revision + 1, no_delete=True)
        try:
            while True:
                ev = await watch.next()
                if ev is None:
                    return
                seq = int(ev.kv.key[len(self.messages):])
                if seq < expected:
                    continue
                if seq != expected:
                    raise ProtocolError(f"broadcast: expected message {expected}, got {seq}")
                yield seq, ev.kv.value
                expected += 1
        finally:
            watch.close()


class AsyncClient(CoreClient):
    """The asyncio Conclave client: ``AsyncClient(endpoints=[...])``; ``async with`` or ``await client.close()``.

    The core client's primitives plus one factory per recipe (``lock``, ``election``, ``counter``,
    ``queue``, ``broadcast``, ``barrier``, ``double_barrier``, ``claim_unique``, ``release_unique``).
    """

    def lock(self, name: KeyLike, ttl: int = 10, *, timeout: float | None = None) -> Lock:
        """A :class:`Lock` on ``name`` (etcd's layout: ``etcdctl lock name`` excludes it); ``async with``."""
        return Lock(self, name, ttl, timeout=timeout)

    def election(self, name: KeyLike, ttl: int = 10) -> Election:
        """An :class:`Election` on ``name`` (etcd's layout: ``etcdctl elect name`` takes part in it)."""
        return Election(self, name, ttl)

    def counter(self, name: KeyLike) -> Counter:
        return Counter(self, name)

    def queue(self, name: KeyLike) -> Queue:
        return Queue(self, name)

    def broadcast(self, name: KeyLike) -> Broadcast:
        return Broadcast(self, name)

    def barrier(self, name: KeyLike) -> Barrier:
        return Barrier(self, name)

    def double_barrier(self, name: KeyLike, count: int, ttl: int = 10) -> DoubleBarrier:
        return DoubleBarrier(self, name, count, ttl)

    async def claim_unique(self, namespace: KeyLike, value: KeyLike, owner: KeyLike, *,
                           lease: int = 0, timeout: float | None = None) -> Claim:
        """Claim ``value`` in ``namespace`` for ``owner`` if nobody holds it; the answer is truthy iff it is ours."""
        return await claim_unique(self, namespace, value, owner, lease=lease, timeout=timeout)

    async def release_unique(self, namespace: KeyLike, value: KeyLike, owner: KeyLike, *,
                             timeout: float | None = None) -> bool:
        return await release_unique(self, namespace, value, owner, timeout=timeout)


__all__ = [
    "AsyncClient", "Barrier", "Broadcast", "Counter", "DoubleBarrier", "Election", "Lock", "Queue", "claim_unique",
    "release_unique",
]


