"""Membership: learners, promotion, joint consensus, removal of the leader; leadership transfer."""

import pytest
from raftnet import Network, compact

from conclave.raft.errors import ConfChangeError, NotLeader, ProposalDropped
from conclave.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    EntryType,
    MessageType,
    Role,
)

M = MessageType
AV, RM, AL = ConfChangeType.ADD_VOTER, ConfChangeType.REMOVE_NODE, ConfChangeType.ADD_LEARNER


def cc(
    *changes: tuple[ConfChangeType, int], transition: ConfChangeTransition = ConfChangeTransition.AUTO
) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(t, n) for t, n in changes), transition)


def change(nw: Network, leader: int, c: ConfChange) -> None:
    nw.nodes[leader].propose_conf_change(c)
    nw.deliver_all()


# A joining node is bootstrapped with the founding configuration (the one the log
# starts from) so that replaying the log from index 1 reproduces the membership; once
# the leader has compacted, a joiner gets a snapshot instead.


def test_add_learner_gets_the_log_but_never_counts_then_promotion() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"before")
    nw.add(4, bootstrap=nw.conf)
    change(nw, 1, cc((AL, 4)))
    assert nw.nodes[1].conf_state.learners == {4}
    nw.tick_all(2)
    assert nw.data(4) == [b"before"] and nw.nodes[4].conf_state.learners == {4}
    # A learner's ack never makes a majority.
    nw.isolate(2)
    nw.isolate(3)
    nw.propose(1, b"unsafe")
    assert nw.nodes[4].last_index == nw.nodes[1].last_index
    assert b"unsafe" not in nw.data(1)
    nw.recover()
    nw.tick_all(2)
    change(nw, 1, cc((AV, 4)))
    assert all(nw.nodes[i].conf_state.voters == {1, 2, 3, 4} for i in nw.nodes)
    # Now 4 counts: with 2 and 3 gone, 1 and 4 are not a majority of 4, but 1, 2, 4 are.
    nw.isolate(3)
    nw.propose(1, b"with-4")
    assert b"with-4" in nw.data(1)


def test_conf_state_changes_at_apply_time() -> None:
    nw = Network()
    nw.campaign(1)
    nw.add(4, bootstrap=nw.conf)
    nw.drop_types.add(M.APP_RESP)  # nothing commits
    nw.nodes[1].propose_conf_change(cc((AL, 4)))
    nw.deliver_all()
    assert nw.nodes[1].conf_state.learners == frozenset()
    nw.drop_types.clear()
    nw.tick_all(2)
    assert nw.nodes[1].conf_state.learners == {4}


def test_only_one_pending_conf_change() -> None:
    nw = Network()
    nw.campaign(1)
    nw.isolate(2)
    nw.isolate(3)
    nw.nodes[1].propose_conf_change(cc((AL, 4)))
    with pytest.raises(ProposalDropped, match="pending"):
        nw.nodes[1].propose_conf_change(cc((AL, 5)))


def test_invalid_conf_change_is_a_clear_error() -> None:
    nw = Network()
    nw.campaign(1)
    with pytest.raises(ConfChangeError):
        nw.nodes[1].propose_conf_change(ConfChange())  # leave joint while not joint
    with pytest.raises(ConfChangeError, match="invalid node id"):
        nw.nodes[1].propose_conf_change(cc((AV, 0)))
    nw.propose(1, b"still-fine")
    assert nw.data(2) == [b"still-fine"]


def test_joint_consensus_replaces_a_majority_and_leaves_automatically() -> None:
    nw = Network(ids=(1, 2, 3))
    nw.campaign(1)
    for i in (4, 5):
        nw.add(i, bootstrap=nw.conf)
    nw.record = True
    change(nw, 1, cc((AV, 4), (AV, 5), (RM, 2), (RM, 3)))
    nw.tick_all(3)
    final = ConfState(voters=frozenset({1, 4, 5}))
    for i in (1, 4, 5):
        assert nw.nodes[i].conf_state == final
    # Two conf change entries were applied everywhere: the enter-joint one and the
    # leave-joint one the leader proposed by itself.
    for i in (1, 4, 5):
        confs = [e for rd in nw.readies[i] for e in rd.committed if e.type == EntryType.CONF_CHANGE]
        assert len(confs) == 2
    nw.propose(1, b"new-config")
    assert nw.data(5)[-1] == b"new-config"


def test_joint_config_cannot_produce_two_majorities() -> None:
    nw = Network(ids=(1, 2, 3))
    nw.campaign(1)
    for i in (4, 5):
        nw.add(i, bootstrap=nw.conf)
    change(nw, 1, cc((AV, 4), (AV, 5), (RM, 2), (RM, 3), transition=ConfChangeTransition.JOINT_EXPLICIT))
    nw.tick_all(2)
    joint = nw.nodes[1].conf_state
    assert joint.voters == {1, 4, 5} and joint.voters_outgoing == {1, 2, 3}
    # {1, 4, 5} is a majority of the new config only: it cannot commit alone.
    nw.isolate(2)
    nw.isolate(3)
    nw.propose(1, b"needs-both")
    assert b"needs-both" not in nw.data(1)
    # {2, 3} is a majority of the old config only: it cannot elect anyone.
    nw.recover()
    for i in (1, 4, 5):
        nw.isolate(i)
    nw.tick_all(60)
    assert all(nw.nodes[i].role != Role.LEADER for i in (2, 3))
    nw.recover()
    nw.tick_all(60)
    leader = nw.leader()
    change(nw, leader, ConfChange())  # explicit leave
    nw.tick_all(3)
    assert nw.nodes[leader].conf_state == ConfState(voters=frozenset({1, 4, 5}))
    assert b"needs-both" in nw.data(4)


def test_removed_leader_steps_down_and_the_rest_elect() -> None:
    nw = Network()
    nw.campaign(1)
    change(nw, 1, cc((RM, 1)))
    assert nw.nodes[1].role == Role.FOLLOWER
    assert nw.nodes[2].conf_state.voters == {2, 3}
    nw.isolate(1)
    nw.tick_all(40)
    assert nw.leader() in (2, 3)


def test_removed_leader_stays_when_step_down_disabled() -> None:
    nw = Network(step_down_on_removal=False)
    nw.campaign(1)
    change(nw, 1, cc((RM, 1)))
    assert nw.nodes[1].role == Role.LEADER
    with pytest.raises(ProposalDropped, match="removed"):
        nw.nodes[1].propose(b"x")


def test_leadership_transfer_to_an_up_to_date_follower() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"x")
    nw.nodes[1].transfer_leadership(3)
    nw.deliver_all()
    assert nw.nodes[3].role == Role.LEADER and nw.nodes[3].term == 2
    assert nw.nodes[1].role == Role.FOLLOWER and nw.nodes[1].leader_id == 3


def test_leadership_transfer_catches_the_target_up_first() -> None:
    nw = Network()
    nw.campaign(1)
    nw.isolate(3)
    for i in range(5):
        nw.propose(1, b"%d" % i)
    nw.recover()
    nw.record = True
    nw.nodes[1].transfer_leadership(3)
    nw.deliver_all()
    kinds = [m.type for m in nw.delivered if m.to == 3 and m.type in (M.APP, M.TIMEOUT_NOW)]
    assert kinds[0] == M.APP and kinds[-1] == M.TIMEOUT_NOW
    assert nw.nodes[3].role == Role.LEADER
    assert len(nw.data(3)) == 5


def test_transfer_drops_proposals_and_aborts_after_an_election_timeout() -> None:
    nw = Network()
    nw.campaign(1)
    nw.isolate(3)
    nw.nodes[1].transfer_leadership(3)
    nw.deliver_all()
    with pytest.raises(ProposalDropped, match="transfer"):
        nw.nodes[1].propose(b"x")
    nw.tick(1, nw.nodes[1].config.election_tick)
    assert nw.nodes[1].role == Role.LEADER and nw.nodes[1].lead_transferee == 0
    nw.propose(1, b"x")
    assert nw.data(2) == [b"x"]


def test_follower_asks_leader_to_transfer_to_it() -> None:
    nw = Network()
    nw.campaign(1)
    nw.nodes[2].transfer_leadership(2)
    nw.deliver_all()
    assert nw.nodes[2].role == Role.LEADER


def test_transfer_without_leader_is_not_leader() -> None:
    nw = Network()
    with pytest.raises(NotLeader):
        nw.nodes[2].transfer_leadership(2)


def test_joiner_with_empty_bootstrap_gets_a_snapshot_after_compaction() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"old")
    for i in (1, 2, 3):
        compact(nw, i)
    nw.add(4)  # knows nothing: no bootstrap configuration, no log
    change(nw, 1, cc((AL, 4)))
    nw.tick_all(3)
    assert nw.nodes[4].conf_state.learners == {4} and nw.data(4) == [b"old"]
    change(nw, 1, cc((AV, 4)))
    nw.propose(1, b"new")
    assert nw.data(4) == [b"old", b"new"] and nw.nodes[4].conf_state.voters == {1, 2, 3, 4}


def test_joiner_without_bootstrap_replaying_the_log_never_invents_a_config() -> None:
    """Without the founding configuration, replaying "add voter 4" from index 1 would
    make node 4 believe it is the only voter and elect itself: it must stay passive."""
    nw = Network()
    nw.campaign(1)
    nw.add(4)  # no bootstrap, and the leader has not compacted: no snapshot to learn from
    change(nw, 1, cc((AV, 4)))
    nw.tick_all(3)
    assert nw.nodes[1].conf_state.voters == {1, 2, 3, 4}
    assert nw.nodes[4].conf_state.voters == frozenset()
    nw.isolate(4)
    nw.tick(4, 100)
    assert nw.nodes[4].role == Role.FOLLOWER and nw.nodes[4].term == 1
    nw.recover()
    nw.isolate(2)
    nw.propose(1, b"counted")  # node 4 still acks as a voter: 1, 3, 4 are a majority
    assert nw.data(4) == [b"counted"]
