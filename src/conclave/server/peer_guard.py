"""The peer guard: what stands between the peer port and the Raft core.

Theory of operation
-------------------
The peer port takes frames from anyone who knows the cluster id (it is in every client
response header), so every decoded Raft message is distrusted. ``PeerGuard.step`` is the
one way the driver hands a peer's message to the core:

1. ``admit``: drop a message that is not addressed to this member, that claims to come
   from an id outside the membership, or that is of a local-only type (SNAP_STATUS and
   UNREACHABLE are reports the driver makes to its own core, never a peer's). The
   membership is what the caller passes in: the current configuration's voters,
   learners and both halves of a joint configuration, plus the driver's member table
   (a member being added is in the table before its configuration entry applies, and a
   joiner that is still replaying the log knows the members only from the table).
2. ``raft.step``: a ``RemoteProtocolError`` from the core means the message broke the
   protocol; the core raised it before changing any state, so dropping it is safe.

A dropped message is counted (by reason, and per peer) and logged at most once per peer
per ``log_interval`` seconds, with the number suppressed since the last line, so a
flooding peer cannot flood the log. The clock is injected so the rate limit is testable
on virtual time. etcd drops such messages too; only a failed fsync, corrupt storage or a
broken invariant of the core should stop a member.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from conclave.raft.errors import RemoteProtocolError
from conclave.raft.node import RaftNode
from conclave.raft.types import NONE, ConfState, Message, MessageType

log = logging.getLogger("conclave.peer")

LOCAL_ONLY = frozenset({MessageType.SNAP_STATUS, MessageType.UNREACHABLE})
"""Message types the driver steps into its own core; from the wire they are forged."""

LOG_INTERVAL_S = 60.0

TRACKED_PEERS_MAX = 1024
"""Distinct sender ids the guard keeps state for; forged ids beyond it share one bucket
(key -1), so a flood of made-up ids cannot grow the guard's memory."""


def reachable_members(conf: ConfState, member_table: Collection[int] = ()) -> frozenset[int]:
    """Ids a peer message may come from: every node of ``conf`` (voters, learners, both
    halves of a joint configuration) and every id in the driver's member table."""
    return conf.all_nodes() | frozenset(member_table)


@dataclass(slots=True)
class PeerGuard:
    self_id: int
    clock: Callable[[], float] = time.monotonic
    log_interval: float = LOG_INTERVAL_S
    logger: logging.Logger = log
    dropped: Counter[str] = field(default_factory=Counter)
    """Dropped messages by reason: ``to``, ``non_member``, ``local_only``, ``protocol``."""
    dropped_by_peer: Counter[int] = field(default_factory=Counter)
    _last_log: dict[int, float] = field(default_factory=dict)
    _suppressed: Counter[int] = field(default_factory=Counter)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def admit(self, m: Message, members: Collection[int]) -> bool:
        """Whether ``m`` may reach the core; a refusal is counted and (rate-limited) logged."""
        if m.to != self.self_id:
            self._drop(m, "to", f"addressed to member {m.to:x}")
        elif m.frm == NONE or m.frm == self.self_id or m.frm not in members:
            self._drop(m, "non_member", f"from {m.frm:x}, which is not a member")
        elif m.type in LOCAL_ONLY:
            self._drop(m, "local_only", f"of local-only type {m.type.name}")
        else:
            return True
        return False

    def step(self, raft: RaftNode, m: Message, members: Collection[int]) -> bool:
        """Step ``m`` into ``raft`` if admitted; True if the core took it."""
        if not self.admit(m, members):
            return False
        try:
            raft.step(m)
        except RemoteProtocolError as exc:
            self._drop(m, "protocol", f"that breaks the protocol: {exc}")
            return False
        return True

    def _drop(self, m: Message, reason: str, why: str) -> None:
        key = m.frm if m.frm in self._last_log or len(self._last_log) < TRACKED_PEERS_MAX else -1
        self.dropped[reason] += 1
        self.dropped_by_peer[key] += 1
        now = self.clock()
        last = self._last_log.get(key)
        if last is not None and now - last < self.log_interval:
            self._suppressed[key] += 1
            return
        self._last_log[key] = now
        more = self._suppressed.pop(key, 0)
        tail = f" ({more} more dropped from this peer since the last report)" if more else ""
        self.logger.warning("dropped a %s message (term %d) %s%s", m.type.name, m.term, why, tail)
