"""Snapshots: compaction, InstallSnapshot to a lagging follower, SNAP_STATUS, restart."""

import pytest
from raftnet import Network, compact

from conclave.raft.errors import CompactionError
from conclave.raft.progress import ProgressState
from conclave.raft.types import ConfChange, ConfChangeSingle, ConfChangeType, ConfState, Message, MessageType, Role

M = MessageType


def lagging_cluster() -> tuple[Network, int]:
    nw = Network()
    nw.campaign(1)
    nw.isolate(3)
    for i in range(10):
        nw.propose(1, b"v%d" % i)
    return nw, compact(nw, 1)


def test_snapshot_installs_on_a_follower_behind_the_compacted_log() -> None:
    nw, idx = lagging_cluster()
    assert nw.nodes[1].log.first_index() == idx + 1
    nw.recover()
    nw.record = True
    nw.tick_all(3)
    snaps = [m for m in nw.delivered if m.type == M.SNAP]
    assert len(snaps) == 1 and snaps[0].snapshot is not None and snaps[0].snapshot.meta.index == idx
    follower = nw.nodes[3]
    assert follower.applied_index >= idx and follower.log.offset == idx
    assert nw.data(3) == nw.data(1) == [b"v%d" % i for i in range(10)]
    assert follower.conf_state == ConfState(voters=frozenset({1, 2, 3}))
    assert nw.nodes[1].status().progress[3].state == ProgressState.REPLICATE
    nw.propose(1, b"after")
    assert nw.data(3)[-1] == b"after"


def test_snapshot_appears_once_in_ready_and_restart_resumes_from_it() -> None:
    nw, idx = lagging_cluster()
    nw.recover()
    nw.record = True
    nw.tick_all(3)
    assert sum(1 for rd in nw.readies[3] if rd.snapshot is not None) == 1
    n = nw.restart(3)
    assert n.applied_index == idx and n.conf_state.voters == {1, 2, 3}
    nw.tick_all(3)
    assert nw.data(3) == nw.data(1)


def test_failed_snapshot_send_goes_back_to_probe_and_retries() -> None:
    nw, _ = lagging_cluster()
    nw.recover()
    nw.drop_types.add(M.SNAP)
    nw.tick_all(2)
    leader = nw.nodes[1]
    assert leader.status().progress[3].state == ProgressState.SNAPSHOT
    nw.tick_all(3)  # nothing more is sent while a snapshot is in flight
    leader.step(Message(M.SNAP_STATUS, to=1, frm=3, term=0, reject=True))
    assert leader.status().progress[3].state == ProgressState.PROBE
    nw.drop_types.clear()
    nw.tick_all(3)
    assert nw.data(3) == nw.data(1)


def test_unreachable_moves_replicating_follower_to_probe() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"x")
    leader = nw.nodes[1]
    assert leader.status().progress[2].state == ProgressState.REPLICATE
    leader.step(Message(M.UNREACHABLE, to=1, frm=2, term=0))
    assert leader.status().progress[2].state == ProgressState.PROBE


def test_compact_bounds() -> None:
    nw = Network(ids=(1,))
    nw.campaign(1)
    nw.propose(1, b"x")
    n = nw.nodes[1]
    with pytest.raises(CompactionError):
        n.compact(n.applied_index + 1, b"")
    compact(nw, 1)
    with pytest.raises(CompactionError):
        n.compact(n.applied_index, b"")


def test_leader_restarted_from_snapshot_keeps_serving() -> None:
    nw, idx = lagging_cluster()
    nw.recover()
    assert nw.restart(1).applied_index == idx
    nw.tick_all(40)
    leader = nw.leader()
    nw.propose(leader, b"y")
    assert all(nw.data(i)[-1] == b"y" for i in nw.nodes)
    assert nw.nodes[1].role in (Role.LEADER, Role.FOLLOWER)


def test_compaction_records_the_configuration_as_of_its_index() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(1, b"x")
    before = nw.nodes[1].applied_index
    nw.nodes[1].propose_conf_change(
        ConfChange((ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),))
    )
    nw.deliver_all()
    n = nw.nodes[1]
    assert n.conf_state.learners == {4} and n.applied_index > before
    old = n.compact(before, b"")
    assert old.meta.conf_state == ConfState(voters=frozenset({1, 2, 3}))
    new = n.compact(n.applied_index, b"")
    assert new.meta.conf_state.learners == {4}
