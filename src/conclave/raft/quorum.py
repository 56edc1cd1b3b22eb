"""Majority and joint quorums: the committed index and the outcome of a vote.

Theory of operation: a decision of a simple configuration needs a majority of its
voters; while joint (``ConfState.voters_outgoing`` non-empty) it needs a majority of
the incoming voters AND a majority of the outgoing voters. Learners never count.
This module is arithmetic over sets and maps only; it never sees messages or logs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import IntEnum

from conclave.raft.types import ConfState

_UNBOUNDED = 1 << 63
"""The committed index of an empty half of a joint quorum: it never restricts the other half."""


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority_committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The highest index acknowledged by a majority of ``voters``."""
    if not voters:
        return _UNBOUNDED
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[len(acked) // 2]


def majority_vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON  # an empty half of a joint config agrees with anything
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    need = len(voters) // 2 + 1
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def committed_index(conf: ConfState, match: Mapping[int, int]) -> int:
    """Committed index under ``conf``: the minimum over both halves while joint."""
    idx = min(
        majority_committed_index(conf.voters, match),
        majority_committed_index(conf.voters_outgoing, match),
    )
    return 0 if idx == _UNBOUNDED else idx


def vote_result(conf: ConfState, votes: Mapping[int, bool]) -> VoteResult:
    """Outcome of an election (or of a quorum check) under ``conf``."""
    incoming = majority_vote_result(conf.voters, votes)
    outgoing = majority_vote_result(conf.voters_outgoing, votes)
    if incoming == VoteResult.LOST or outgoing == VoteResult.LOST:
        return VoteResult.LOST
    if incoming == VoteResult.WON and outgoing == VoteResult.WON:
        return VoteResult.WON
    return VoteResult.PENDING
