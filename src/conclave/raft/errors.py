"""The one exception hierarchy of the Raft core.

Theory of operation: everything the core raises on purpose is a ``RaftError``. Two kinds
of broken rule are told apart, as h11 does: ``LocalProtocolError`` and
``RemoteProtocolError`` are siblings directly under ``RaftError`` (neither catches the other),
because a driver must treat them oppositely:

- ``RemoteProtocolError``: a peer sent a message no correct Raft node sends (an entry of
  term 0, a SNAP without a snapshot, an ack beyond our log). It is raised where the rule
  is checked, before the message changes any state, so the driver drops the message,
  counts it and carries on: one bad peer must not stop a member.
- ``LocalProtocolError``: the caller misused the core (``ready`` twice, ``advance`` with
  a foreign Ready, a message addressed to another node, an invalid Config). That is a
  bug in the driver: the request that caused it fails, and is reported as a bug.

Other ``RaftError`` subclasses are ordinary refusals of a request (``NotLeader``,
``ProposalDropped``, ...). A broken invariant inside the core is an ``AssertionError``:
it can only come from a bug here, and the simulator turns it into a replayable seed; a
driver must stop rather than go on with a core in an unknown state. (``server/node.py``
applies these three rules; ``server/peer_guard.py`` drops remote ones.)
"""

from __future__ import annotations

from conclave.raft.types import NONE


class RaftError(Exception):
    """Base of every error the Raft core raises on purpose."""


class LocalProtocolError(RaftError):
    """The caller (the driver) misused the core: a bug on this side."""


class RemoteProtocolError(RaftError):
    """A peer sent a message no correct Raft node sends; the message was not applied."""


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


class ConfChangeError(RaftError):
    """A membership change that cannot be applied to the current configuration."""


class CompactionError(RaftError):
    """A compaction request outside the range ``(snapshot index, applied index]``."""
