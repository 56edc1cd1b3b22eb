"""The one exception hierarchy of the Raft core.

Theory of operation: these are raised at the API boundary of ``RaftNode`` when the
caller asks for something the current state forbids (propose on a follower that
cannot forward, compact beyond the applied index, an invalid membership change).
A broken protocol invariant inside the core is an ``AssertionError`` instead: it
can only come from a bug here, and the simulator turns it into a replayable seed.
"""

from __future__ import annotations

from conclave.raft.types import NONE


class RaftError(Exception):
    """Base of every error the Raft core raises on purpose."""


class NotLeader(RaftError):
    """This node cannot take the request; ``leader_hint`` is the leader it knows (0 if none)."""

    def __init__(self, leader_hint: int = NONE) -> None:
        self.leader_hint = leader_hint
        super().__init__(f"not leader (leader hint: {leader_hint or 'unknown'})")


class ProposalDropped(RaftError):
    """The leader refused a proposal (too many uncommitted bytes, transfer in progress, ...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"proposal dropped: {reason}")


class ProtocolError(RaftError):
    """A peer sent a message no correct Raft node sends (the peer broke the protocol)."""


class ConfChangeError(RaftError):
    """A membership change that cannot be applied to the current configuration."""


class CompactionError(RaftError):
    """A compaction request outside the range ``(snapshot index, applied index]``."""
