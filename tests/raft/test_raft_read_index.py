"""ReadIndex: quorum-confirmed, batched, follower-forwarded, safe across leader changes."""

import pytest
from raftnet import Network

from conclave.raft.errors import NotLeader
from conclave.raft.types import MessageType, ReadState, Role

M = MessageType


def test_leader_read_index_after_heartbeat_quorum() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"x")
    nw.nodes[1].read_index(b"r1")
    nw.deliver_all()
    assert nw.read_states[1] == [ReadState(nw.nodes[1].commit_index, b"r1")]


def test_read_index_waits_for_a_quorum_of_heartbeat_acks() -> None:
    nw = Network()
    nw.campaign(1)
    nw.drop_types.add(M.HEARTBEAT_RESP)
    nw.nodes[1].read_index(b"r")
    nw.deliver_all()
    assert nw.read_states[1] == []
    nw.drop_types.clear()
    nw.tick(1, nw.nodes[1].config.heartbeat_tick)  # the round's context rides on heartbeats
    assert [rs.context for rs in nw.read_states[1]] == [b"r"]


def test_reads_queued_during_a_round_share_the_next_round() -> None:
    nw = Network()
    nw.campaign(1)
    nw.record = True
    nw.drop_types.add(M.HEARTBEAT_RESP)
    leader = nw.nodes[1]
    leader.read_index(b"a")
    nw.deliver_all()
    for ctx in (b"b", b"c", b"d"):
        leader.read_index(ctx)
    nw.deliver_all()
    nw.drop_types.clear()
    nw.tick(1, leader.config.heartbeat_tick)
    assert [rs.context for rs in nw.read_states[1]] == [b"a", b"b", b"c", b"d"]
    rounds = {m.context for m in nw.delivered if m.type == M.HEARTBEAT and m.context}
    assert len(rounds) == 2  # one for "a", one shared by b, c, d


def test_follower_read_index_is_answered_by_the_leader() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(2, b"x")
    nw.nodes[2].read_index(b"f")
    nw.deliver_all()
    assert nw.read_states[2] == [ReadState(nw.nodes[1].commit_index, b"f")]
    assert nw.read_states[1] == []


def test_no_leader_means_not_leader() -> None:
    nw = Network()
    with pytest.raises(NotLeader):
        nw.nodes[1].read_index(b"x")


def test_new_leader_serves_no_read_before_committing_an_entry_of_its_term() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"x")
    nw.drop_types.add(M.APP)  # the next leader's empty entry cannot commit
    nw.nodes[1].transfer_leadership(2)
    nw.deliver_all()
    assert nw.nodes[2].role == Role.LEADER
    nw.nodes[2].read_index(b"early")
    nw.tick(2, 3)
    assert nw.read_states[2] == []
    nw.drop_types.clear()
    nw.tick(2, 3)
    assert [rs.context for rs in nw.read_states[2]] == [b"early"]
    rs = nw.read_states[2][0]
    assert nw.nodes[2].log.term(rs.index) == nw.nodes[2].term  # at least its own entry


def test_read_index_across_a_leader_change() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"x")
    nw.isolate(1)
    nw.nodes[3].read_index(b"lost")  # forwarded to the old leader, which cannot confirm
    nw.deliver_all()
    nw.nodes[1].read_index(b"stale")
    nw.deliver_all()
    nw.tick_all(40)
    new = nw.leader()
    assert new in (2, 3) and nw.nodes[new].term > 1
    nw.propose(new, b"y")
    nw.nodes[3].read_index(b"again")
    nw.deliver_all()
    assert [rs.context for rs in nw.read_states[3]] == [b"again"]
    assert nw.read_states[3][0].index >= nw.nodes[new].commit_index
    nw.recover()
    nw.tick_all(5)
    assert nw.read_states[1] == []  # the deposed leader never confirmed its read
    assert nw.nodes[1].role == Role.FOLLOWER


def test_single_node_read_is_immediate() -> None:
    nw = Network(ids=(1,))
    nw.campaign(1)
    nw.nodes[1].read_index(b"s")
    nw.deliver_all()
    assert nw.read_states[1] == [ReadState(1, b"s")]
