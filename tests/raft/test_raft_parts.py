"""Unit tests of the building blocks: RaftLog, Progress/Inflights, quorum, confchange."""

import pytest

from conclave.raft import quorum
from conclave.raft.confchange import apply_conf_change, enters_joint
from conclave.raft.errors import ConfChangeError
from conclave.raft.log import RaftLog
from conclave.raft.progress import Inflights, Progress, ProgressState
from conclave.raft.quorum import VoteResult
from conclave.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    Snapshot,
    SnapshotMeta,
)


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


# -- RaftLog -----------------------------------------------------------------------

def test_log_term_lookup_and_bounds() -> None:
    snap = Snapshot(SnapshotMeta(3, 2, ConfState(voters=frozenset({1}))))
    log = RaftLog(snap, ents(2, 3, start=4), committed=4)
    assert (log.first_index(), log.last_index(), log.last_term()) == (4, 5, 3)
    assert log.term(3) == 2 and log.term(4) == 2 and log.term(5) == 3
    assert log.term(2) is None and log.term(6) is None
    assert log.persisted == 5 and not log.has_unstable()


def test_log_append_truncates_and_moves_durability_cursors_back() -> None:
    log = RaftLog(None, ents(1, 1, 2), committed=1)
    assert log.persisted == 3
    log.append(ents(3, 3, start=3))
    assert [e.term for e in log.entries] == [1, 1, 3, 3]
    assert log.persisted == 2 and log.unstable == 3
    assert log.take_unstable() == tuple(ents(3, 3, start=3))
    log.stable_to(ents(3, 3, start=3))
    assert log.persisted == 4


def test_log_refuses_to_truncate_committed_entries() -> None:
    log = RaftLog(None, ents(1, 1, 2), committed=2)
    with pytest.raises(AssertionError):
        log.append(ents(3, start=2))


def test_stable_to_ignores_entries_replaced_while_in_flight() -> None:
    log = RaftLog(None, [], committed=0)
    log.append(ents(1, 1, 1))
    handed = log.take_unstable()
    log.append(ents(2, start=2))  # truncated at 2 before the driver's fsync returned
    log.stable_to(handed)
    assert log.persisted == 1
    assert log.take_unstable() == (Entry(2, 2),)


def test_maybe_append_consistency_check_and_commit() -> None:
    log = RaftLog(None, ents(1, 1, 1), committed=0)
    assert log.maybe_append(3, 2, 3, ents(2, start=4)) is None  # prev term mismatch
    assert log.maybe_append(3, 1, 10, ents(2, 2, start=4)) == 5
    assert log.committed == 5
    # A duplicate (already present) append changes nothing but is still acknowledged.
    assert log.maybe_append(3, 1, 10, ents(2, start=4)) == 4
    assert log.last_index() == 5


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = RaftLog(None, ents(1, 1, 2, 2, 2, 5, 5), committed=0)
    assert log.find_conflict_by_term(7, 4) == (5, 2)
    assert log.find_conflict_by_term(7, 1) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)
    assert log.find_conflict_by_term(100, 9) == (7, 5)


def test_up_to_date_rule() -> None:
    log = RaftLog(None, ents(1, 2, 2), committed=0)
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2) and not log.is_up_to_date(10, 1)


def test_slice_respects_max_bytes_but_returns_at_least_one() -> None:
    log = RaftLog(None, [Entry(1, i, data=b"x" * 10) for i in range(1, 6)], committed=0)
    assert len(log.slice(1, 5, max_bytes=25)) == 2
    assert len(log.slice(1, 5, max_bytes=1)) == 1
    assert len(log.slice(1, 5)) == 5


def test_compact_and_restore() -> None:
    log = RaftLog(None, ents(1, 1, 2, 2), committed=3)
    log.compact(Snapshot(SnapshotMeta(2, 1, ConfState())))
    assert log.first_index() == 3 and log.term(2) == 1 and log.term(1) is None
    log.restore(Snapshot(SnapshotMeta(10, 4, ConfState())))
    assert log.last_index() == 10 and log.committed == 10 and log.pending_snapshot is not None


# -- Progress / Inflights ----------------------------------------------------------

def test_inflights_window_is_bounded() -> None:
    inf = Inflights(3)
    for i in (2, 4, 6):
        inf.add(i)
    assert inf.full()
    with pytest.raises(AssertionError):
        inf.add(8)
    inf.free_le(4)
    assert inf.count() == 1 and not inf.full()


def test_progress_probe_decrement_and_stale_rejections() -> None:
    pr = Progress(match=0, next=10, inflights=Inflights(4))
    assert not pr.maybe_decr_to(5, 2)  # stale: not the append we wait on
    assert pr.maybe_decr_to(9, 3) and pr.next == 4
    pr.sent_entries(6)
    assert pr.is_paused()
    assert pr.maybe_update(6) and not pr.is_paused()
    pr.become_replicate()
    assert pr.state == ProgressState.REPLICATE and pr.next == 7
    assert not pr.maybe_decr_to(5, 0)  # replicate: rejection at or below match is stale
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


# -- quorum ------------------------------------------------------------------------

def test_majority_committed_index() -> None:
    cs = ConfState(voters=frozenset({1, 2, 3}))
    assert quorum.committed_index(cs, {1: 5, 2: 3, 3: 1}) == 3
    assert quorum.committed_index(cs, {1: 5}) == 0
    even = ConfState(voters=frozenset({1, 2, 3, 4}))
    assert quorum.committed_index(even, {1: 9, 2: 7, 3: 5, 4: 1}) == 5


def test_joint_quorum_needs_both_majorities() -> None:
    cs = ConfState(voters=frozenset({4, 5, 6}), voters_outgoing=frozenset({1, 2, 3}))
    assert quorum.committed_index(cs, {1: 9, 2: 9, 3: 9, 4: 9}) == 0
    assert quorum.committed_index(cs, {1: 9, 2: 9, 4: 7, 5: 8}) == 7
    assert quorum.vote_result(cs, {1: True, 2: True}) == VoteResult.PENDING
    assert quorum.vote_result(cs, {1: True, 2: True, 4: True, 5: True}) == VoteResult.WON
    assert quorum.vote_result(cs, {1: True, 2: True, 4: False, 5: False}) == VoteResult.LOST


def test_learners_never_count() -> None:
    cs = ConfState(voters=frozenset({1}), learners=frozenset({2, 3}))
    assert quorum.vote_result(cs, {2: True, 3: True}) == VoteResult.PENDING
    assert quorum.committed_index(cs, {1: 1, 2: 9, 3: 9}) == 1


# -- confchange --------------------------------------------------------------------

def _cc(
    *changes: tuple[ConfChangeType, int], transition: ConfChangeTransition = ConfChangeTransition.AUTO
) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(t, n) for t, n in changes), transition)


AV, RM, AL = ConfChangeType.ADD_VOTER, ConfChangeType.REMOVE_NODE, ConfChangeType.ADD_LEARNER


def test_simple_change_adds_learner_then_promotes() -> None:
    cs = ConfState(voters=frozenset({1, 2, 3}))
    cs = apply_conf_change(cs, _cc((AL, 4)))
    assert cs.learners == {4} and not cs.joint
    cs = apply_conf_change(cs, _cc((AV, 4)))
    assert cs.voters == {1, 2, 3, 4} and not cs.learners


def test_two_voter_changes_enter_joint_and_leave() -> None:
    cs = ConfState(voters=frozenset({1, 2, 3}))
    cc = _cc((AV, 4), (RM, 1))
    assert enters_joint(cc)
    joint = apply_conf_change(cs, cc)
    assert joint.voters == {2, 3, 4} and joint.voters_outgoing == {1, 2, 3} and joint.auto_leave
    with pytest.raises(ConfChangeError):
        apply_conf_change(joint, _cc((AV, 5)))  # no simple change while joint
    out = apply_conf_change(joint, ConfChange())
    assert out == ConfState(voters=frozenset({2, 3, 4}))


def test_demoting_a_voter_while_joint_waits_in_learners_next() -> None:
    cs = ConfState(voters=frozenset({1, 2, 3}))
    joint = apply_conf_change(cs, _cc((AL, 3), transition=ConfChangeTransition.JOINT_EXPLICIT))
    assert joint.learners_next == {3} and 3 in joint.voters_outgoing and not joint.auto_leave
    out = apply_conf_change(joint, ConfChange())
    assert out.voters == {1, 2} and out.learners == {3}


@pytest.mark.parametrize(
    ("start", "cc"),
    [
        (ConfState(voters=frozenset({1})), _cc((RM, 1))),
        (ConfState(voters=frozenset({1, 2})), ConfChange()),  # leave while not joint
        (ConfState(voters=frozenset({1, 2})), _cc((AV, 0))),
        (ConfState(), _cc((AV, 1), (AV, 2))),  # a zero-voter config cannot go joint
    ],
)
def test_invalid_changes_are_rejected(start: ConfState, cc: ConfChange) -> None:
    with pytest.raises(ConfChangeError):
        apply_conf_change(start, cc)
