"""Elections: timeouts, votes, pre-vote, check-quorum and the leader lease."""

import random

import pytest
from raftnet import Network

from conclave.raft.errors import RaftError
from conclave.raft.node import RaftNode
from conclave.raft.types import (
    NONE,
    Config,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistedState,
    Role,
)

M = MessageType


def node_with(persisted: PersistedState, i: int = 1, **cfg: object) -> RaftNode:
    return RaftNode(Config(id=i, **cfg), persisted, random.Random(i))  # type: ignore[arg-type]


def three() -> PersistedState:
    return PersistedState(conf_state=ConfState(voters=frozenset({1, 2, 3})))


def test_randomized_election_timeout_covers_the_range() -> None:
    seen = set()
    n = node_with(three(), election_tick=10)
    for _ in range(300):
        n.campaign()  # each role change re-randomizes
        n.step(Message(M.HEARTBEAT, to=1, frm=2, term=n.term + 1))
        seen.add(n.randomized_election_timeout)
    assert seen == set(range(10, 20))


def test_follower_campaigns_after_its_timeout_and_not_before() -> None:
    n = node_with(three(), pre_vote=False)
    for _ in range(n.randomized_election_timeout - 1):
        n.tick()
    assert n.role == Role.FOLLOWER
    n.tick()
    assert n.role == Role.CANDIDATE and n.term == 1 and n.vote == 1


def test_leader_election_in_a_three_node_cluster() -> None:
    nw = Network()
    nw.campaign(1)
    assert nw.nodes[1].role == Role.LEADER
    assert all(nw.nodes[i].role == Role.FOLLOWER and nw.nodes[i].leader_id == 1 for i in (2, 3))
    assert nw.nodes[1].term == 1


def test_election_by_ticking_only() -> None:
    nw = Network(seed=5)
    nw.tick_all(40)
    leaders = [n for n in nw.nodes.values() if n.role == Role.LEADER]
    assert len(leaders) == 1


@pytest.mark.parametrize("pre_vote", [True, False])
def test_candidate_with_minority_does_not_win(pre_vote: bool) -> None:
    nw = Network(ids=(1, 2, 3, 4, 5), pre_vote=pre_vote)
    for i in (3, 4, 5):
        nw.isolate(i)
    nw.campaign(1)
    assert nw.nodes[1].role != Role.LEADER


def test_vote_request_and_grant_wait_for_persistence() -> None:
    n = node_with(three(), pre_vote=False)
    n.campaign()
    rd = n.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert not [m for m in rd.messages if m.type == M.VOTE]
    assert {m.to for m in rd.persisted_messages if m.type == M.VOTE} == {2, 3}
    n.advance(rd)
    f = node_with(three(), i=2)
    f.step(Message(M.VOTE, to=2, frm=1, term=1))
    rd = f.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert [m.type for m in rd.persisted_messages] == [M.VOTE_RESP] and not rd.messages


def test_one_vote_per_term_and_survives_restart() -> None:
    nw = Network(pre_vote=False)
    nw.isolate(1)
    nw.isolate(2)
    nw.nodes[3].step(Message(M.VOTE, to=3, frm=1, term=1))
    nw.process(3)
    nw.restart(3)
    assert nw.nodes[3].vote == 1 and nw.nodes[3].term == 1
    nw.nodes[3].step(Message(M.VOTE, to=3, frm=2, term=1))
    rd = nw.nodes[3].ready()
    assert [m.reject for m in rd.persisted_messages] == [True]


def test_forget_vote_fault_lets_a_restarted_node_vote_twice() -> None:
    nw = Network(pre_vote=False, faults=frozenset({"forget_vote"}))
    nw.isolate(1)
    nw.isolate(2)
    nw.nodes[3].step(Message(M.VOTE, to=3, frm=1, term=1))
    nw.process(3)
    nw.restart(3, faults=frozenset({"forget_vote"}))
    nw.nodes[3].step(Message(M.VOTE, to=3, frm=2, term=1))
    rd = nw.nodes[3].ready()
    assert [m.reject for m in rd.persisted_messages] == [False]


def test_vote_requires_up_to_date_log_unless_faulted() -> None:
    persisted = PersistedState(
        hard_state=HardState(term=2), entries=(Entry(1, 1), Entry(2, 2)), conf_state=ConfState(voters=frozenset({1, 2}))
    )
    stale = Message(M.VOTE, to=1, frm=2, term=3, index=5, log_term=1)
    n = node_with(persisted)
    n.step(stale)
    assert n.ready().persisted_messages[0].reject
    n = node_with(persisted, faults=frozenset({"vote_without_log_check"}))
    n.step(stale)
    assert not n.ready().persisted_messages[0].reject


def test_unknown_fault_name_is_a_clear_error() -> None:
    with pytest.raises(RaftError, match="unknown fault"):
        node_with(three(), faults=frozenset({"no_such_fault"}))


def test_prevote_keeps_a_rejoining_partitioned_node_from_disrupting() -> None:
    nw = Network(pre_vote=True, check_quorum=True)
    nw.campaign(1)
    nw.propose(1, b"a")
    nw.isolate(3)
    for _ in range(100):
        nw.tick(3)
    assert nw.nodes[3].term == 1  # pre-vote never raises its term
    assert nw.nodes[3].role == Role.PRE_CANDIDATE
    nw.recover()
    nw.tick_all(30)
    assert nw.nodes[1].role == Role.LEADER and nw.nodes[1].term == 1
    assert nw.nodes[3].leader_id == 1 and nw.nodes[3].role == Role.FOLLOWER


def test_without_prevote_a_rejoining_node_forces_a_new_term() -> None:
    """The control experiment for the test above: the rule has teeth."""
    nw = Network(pre_vote=False, check_quorum=False)
    nw.campaign(1)
    nw.isolate(3)
    for _ in range(100):
        nw.tick(3)
    assert nw.nodes[3].term > 1
    nw.recover()
    nw.tick_all(30)
    assert nw.nodes[1].term > 1  # the healthy leader was deposed


def test_check_quorum_leader_steps_down_without_a_quorum() -> None:
    nw = Network(check_quorum=True)
    nw.campaign(1)
    nw.isolate(1)
    et = nw.nodes[1].config.election_tick
    # Activity is sampled once per election timeout: the first check still sees the
    # election's responses, the second finds nobody.
    nw.tick(1, 2 * et - 1)
    assert nw.nodes[1].role == Role.LEADER
    nw.tick(1)
    assert nw.nodes[1].role == Role.FOLLOWER and nw.nodes[1].leader_id == NONE


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    nw = Network(check_quorum=False)
    nw.campaign(1)
    nw.isolate(1)
    nw.tick(1, 50)
    assert nw.nodes[1].role == Role.LEADER


def test_leader_lease_followers_ignore_votes_while_leader_is_fresh() -> None:
    nw = Network(check_quorum=True, pre_vote=False)
    nw.campaign(1)
    nw.tick(2)  # within the lease
    nw.campaign(3)
    assert nw.nodes[1].role == Role.LEADER and nw.nodes[2].term == 1
    assert nw.nodes[3].role == Role.CANDIDATE  # it got no votes


def test_stale_leader_steps_down_on_seeing_higher_term() -> None:
    nw = Network()
    nw.campaign(1)
    nw.isolate(1)
    nw.tick_all(40)
    new = [i for i in (2, 3) if nw.nodes[i].role == Role.LEADER]
    assert len(new) == 1
    nw.recover()
    nw.tick_all(3)
    assert nw.nodes[1].role == Role.FOLLOWER and nw.nodes[1].leader_id == new[0]


def test_learner_never_campaigns() -> None:
    nw = Network(ids=(1, 2), learners=(3,))
    nw.isolate(1)
    nw.isolate(2)
    nw.tick(3, 100)
    assert nw.nodes[3].role == Role.FOLLOWER and nw.nodes[3].term == 0


def test_single_node_elects_itself() -> None:
    nw = Network(ids=(1,))
    nw.campaign(1)
    assert nw.nodes[1].role == Role.LEADER
    nw.propose(1, b"x")
    assert nw.data(1) == [b"x"]


def test_impossible_recovered_state_is_a_clear_error() -> None:
    conf = ConfState(voters=frozenset({1}))
    with pytest.raises(RaftError, match="beyond the last recovered entry"):
        node_with(PersistedState(HardState(term=1, commit=5), entries=(Entry(1, 1),), conf_state=conf))
    with pytest.raises(RaftError, match="not contiguous"):
        node_with(PersistedState(HardState(term=1), entries=(Entry(1, 1), Entry(1, 3)), conf_state=conf))
    with pytest.raises(RaftError, match="node id"):
        node_with(three(), i=0)


@pytest.mark.parametrize(
    "msg",
    [
        Message(M.APP, to=1, frm=2, term=3, index=4, log_term=1, entries=(Entry(1, 6),)),  # gap
        Message(M.APP, to=1, frm=2, term=3, index=4, log_term=1, entries=(Entry(4, 5),)),  # future term
        Message(M.SNAP, to=1, frm=2, term=3),  # no snapshot
        Message(M.PROP, to=1, frm=2, term=0),  # nothing proposed
        Message(M.HEARTBEAT, to=9, frm=2, term=3),  # not for us
    ],
)
def test_malformed_peer_messages_are_refused(msg: Message) -> None:
    n = node_with(three())
    with pytest.raises(RaftError):
        n.step(msg)
    assert n.term == 0 and n.last_index == 0
