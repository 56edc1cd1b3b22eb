"""Applying a ``ConfChange`` to a ``ConfState``: simple changes, entering and leaving joint.

Theory of operation: a *simple* change alters the voter set by at most one node, so
any majority of the old set intersects any majority of the new one and no joint
phase is needed. Anything bigger goes through joint consensus (Raft thesis §4.3):
``voters_outgoing`` keeps the old voters, ``voters`` becomes the new set, and every
decision needs both majorities until the leave-joint change (an empty ``changes``
tuple) is applied. A voter demoted to learner while joint waits in
``learners_next`` and becomes a learner on leaving.

This module is pure set arithmetic. It validates and raises ``ConfChangeError``; it
never decides *when* a change applies (that is the node's job: at apply time).
"""

from __future__ import annotations

from dataclasses import dataclass

from conclave.raft.errors import ConfChangeError
from conclave.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
)


@dataclass(slots=True)
class _Draft:
    voters: set[int]
    learners: set[int]
    outgoing: set[int]
    learners_next: set[int]

    @classmethod
    def of(cls, cs: ConfState) -> _Draft:
        return cls(set(cs.voters), set(cs.learners), set(cs.voters_outgoing), set(cs.learners_next))

    def apply(self, change: ConfChangeSingle) -> None:
        node = change.node_id
        if node <= 0:
            raise ConfChangeError(f"invalid node id {node}")
        if change.type == ConfChangeType.ADD_VOTER:
            self.voters.add(node)
            self.learners.discard(node)
            self.learners_next.discard(node)
        elif change.type == ConfChangeType.ADD_LEARNER:
            if node in self.learners:
                return
            self.voters.discard(node)
            self.learners_next.discard(node)
            # A voter of the outgoing config must keep voting there until we leave.
            if node in self.outgoing:
                self.learners_next.add(node)
            else:
                self.learners.add(node)
        elif change.type == ConfChangeType.REMOVE_NODE:
            self.voters.discard(node)
            self.learners.discard(node)
            self.learners_next.discard(node)
        else:  # pragma: no cover - IntEnum exhausted
            raise ConfChangeError(f"unknown change type {change.type!r}")

    def freeze(self, auto_leave: bool) -> ConfState:
        cs = ConfState(
            frozenset(self.voters),
            frozenset(self.learners),
            frozenset(self.outgoing),
            frozenset(self.learners_next),
            auto_leave,
        )
        check_conf_state(cs)
        return cs


def check_conf_state(cs: ConfState) -> None:
    """Raise ``ConfChangeError`` if ``cs`` breaks a structural invariant."""
    if cs.voters & cs.learners:
        raise ConfChangeError(f"nodes {sorted(cs.voters & cs.learners)} are both voter and learner")
    if cs.voters_outgoing & cs.learners:
        raise ConfChangeError(f"nodes {sorted(cs.voters_outgoing & cs.learners)} are outgoing voters and learners")
    if not cs.learners_next <= cs.voters_outgoing:
        raise ConfChangeError("learners_next must be outgoing voters")
    if not cs.joint and (cs.learners_next or cs.auto_leave):
        raise ConfChangeError("learners_next/auto_leave set outside a joint config")


def enters_joint(cc: ConfChange) -> bool:
    """Whether ``cc`` needs joint consensus (etcd's ConfChangeV2.EnterJoint)."""
    return bool(cc.changes) and (cc.transition != ConfChangeTransition.AUTO or len(cc.changes) > 1)


def leaves_joint(cc: ConfChange) -> bool:
    return not cc.changes


def apply_conf_change(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration that results from applying ``cc`` to ``cs`` (or ConfChangeError)."""
    if leaves_joint(cc):
        return leave_joint(cs)
    if enters_joint(cc):
        auto = cc.transition in (ConfChangeTransition.AUTO, ConfChangeTransition.JOINT_IMPLICIT)
        return enter_joint(cs, cc.changes, auto_leave=auto)
    return simple(cs, cc.changes)


def simple(cs: ConfState, changes: tuple[ConfChangeSingle, ...]) -> ConfState:
    if cs.joint:
        raise ConfChangeError("can't apply a simple config change in a joint config")
    if not cs.voters:
        # Only a node that was never told the founding configuration (a joiner without a
        # bootstrap ConfState replaying the log from index 1) gets here. Applying the
        # change would give it a made-up config, e.g. "voters = {me}", and a split brain.
        raise ConfChangeError("can't change an empty configuration (node has no bootstrap configuration)")
    draft = _Draft.of(cs)
    for ch in changes:
        draft.apply(ch)
    if len(draft.voters ^ set(cs.voters)) > 1:
        raise ConfChangeError("more than one voter changed without entering joint config")
    if not draft.voters:
        raise ConfChangeError("removed all voters")
    return draft.freeze(auto_leave=False)


def enter_joint(cs: ConfState, changes: tuple[ConfChangeSingle, ...], *, auto_leave: bool) -> ConfState:
    if cs.joint:
        raise ConfChangeError("config is already joint")
    if not cs.voters:
        raise ConfChangeError("can't make a zero-voter config joint")
    draft = _Draft.of(cs)
    draft.outgoing = set(cs.voters)
    for ch in changes:
        draft.apply(ch)
    if not draft.voters:
        raise ConfChangeError("removed all voters")
    return draft.freeze(auto_leave=auto_leave)


def leave_joint(cs: ConfState) -> ConfState:
    if not cs.joint:
        raise ConfChangeError("can't leave a non-joint config")
    learners = set(cs.learners) | set(cs.learners_next)
    out = ConfState(frozenset(cs.voters), frozenset(learners), frozenset(), frozenset(), False)
    check_conf_state(out)
    return out
