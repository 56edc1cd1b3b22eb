"""Lease deadlines: the pure, per-member ``Lessor``.

Theory of operation
-------------------
Which leases exist (and which keys they own) is replicated state in the store. When they
expire is not: like etcd, only the leader (the "primary" lessor) tracks deadlines, and it
does so from explicit ``now_ms`` values its driver passes in (no clock is read here).

* ``grant(id, ttl_s, now_ms)`` is called when a LeaseGrant is applied (on every member);
  ``revoke(id)`` when a LeaseRevoke is applied.
* On the primary, a lease's deadline is ``now + ttl``; ``renew`` (a keep-alive) moves it.
  ``expired(now_ms)`` returns ids whose deadline passed, oldest first; the driver proposes
  their revocation. A returned id is not returned again for ``retry_ms`` (etcd retries an
  unconfirmed revoke after 3 s) so a slow commit does not cause a flood of proposals.
* ``promote(now_ms, extend_ms)``: this member became leader; every deadline restarts at
  ``now + extend + ttl`` (the old leader's keep-alives are unknown here, so be generous).
  ``demote()``: deadlines are dropped; a follower never expires anything.

Deadlines sit in a min-heap with lazy deletion (an entry is live only if it matches the
lease's current deadline), so ``expired`` costs O(expired * log n).

Rules for this module: no I/O, no clocks, no randomness; never touches the store.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from conclave.kv import errors

DEFAULT_RETRY_MS = 3_000


@dataclass(slots=True)
class _Lease:
    ttl_s: int
    deadline_ms: int | None = None
    expiring: bool = False  # reported by expired(); its revocation is on the way


class Lessor:
    __slots__ = ("_heap", "_leases", "_primary", "retry_ms")

    def __init__(self, *, retry_ms: int = DEFAULT_RETRY_MS) -> None:
        self._leases: dict[int, _Lease] = {}
        self._heap: list[tuple[int, int]] = []  # (deadline_ms, lease id)
        self._primary = False
        self.retry_ms = retry_ms

    @property
    def is_primary(self) -> bool:
        return self._primary

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def _set_deadline(self, lease_id: int, lease: _Lease, deadline_ms: int) -> None:
        lease.deadline_ms = deadline_ms
        heapq.heappush(self._heap, (deadline_ms, lease_id))
        if len(self._heap) > 2 * len(self._leases) + 64:
            self._heap = [(d, i) for i, x in self._leases.items() if (d := x.deadline_ms) is not None]
            heapq.heapify(self._heap)

    def grant(self, lease_id: int, ttl_s: int, now_ms: int) -> int:
        """Track a granted lease; returns its TTL in seconds."""
        lease = _Lease(ttl_s)
        self._leases[lease_id] = lease
        if self._primary:
            self._set_deadline(lease_id, lease, now_ms + ttl_s * 1000)
        return ttl_s

    def revoke(self, lease_id: int) -> None:
        """Forget a lease (its revocation was applied). Unknown ids are ignored."""
        self._leases.pop(lease_id, None)

    def renew(self, lease_id: int, now_ms: int) -> int:
        """A keep-alive: restart the lease's deadline; returns its TTL in seconds.

        Raises NotLeader on a non-primary member and LeaseNotFound for an unknown or already
        expired lease (as etcd does).
        """
        if not self._primary:
            raise errors.NotLeader()
        lease = self._leases.get(lease_id)
        if lease is None or lease.expiring or (lease.deadline_ms is not None and lease.deadline_ms <= now_ms):
            raise errors.LeaseNotFound()
        self._set_deadline(lease_id, lease, now_ms + lease.ttl_s * 1000)
        return lease.ttl_s

    def remaining(self, lease_id: int, now_ms: int) -> int:
        """Seconds left (truncated, >= 0); the full TTL on a non-primary member."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LeaseNotFound()
        if lease.deadline_ms is None:
            return lease.ttl_s
        if lease.expiring:
            return 0
        return max(0, (lease.deadline_ms - now_ms) // 1000)

    def ttl(self, lease_id: int) -> int:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LeaseNotFound()
        return lease.ttl_s

    def expired(self, now_ms: int, limit: int = 1000) -> list[int]:
        """Up to ``limit`` ids whose deadline is <= now, earliest deadline first (primary only)."""
        if not self._primary:
            return []
        found: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and len(found) < limit:
            deadline, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or lease.deadline_ms != deadline:
                continue  # stale heap entry
            found.append(lease_id)
            lease.expiring = True
            self._set_deadline(lease_id, lease, now_ms + self.retry_ms)
        return found

    def promote(self, now_ms: int, extend_ms: int) -> None:
        """This member became leader: every deadline restarts at now + extend + ttl."""
        self._primary = True
        self._heap = []
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            lease.deadline_ms = now_ms + extend_ms + lease.ttl_s * 1000
            lease.expiring = False
            self._heap.append((lease.deadline_ms, lease_id))
        heapq.heapify(self._heap)

    def demote(self) -> None:
        """This member is no longer leader: nothing expires here any more."""
        self._primary = False
        self._heap = []
        for lease in self._leases.values():
            lease.deadline_ms = None
            lease.expiring = False
