"""Log replication: consistency check, fast back-off, figure 7 and 8, windows and bounds."""

import random

import pytest
from raftnet import Network

from conclave.raft.errors import NotLeader, ProposalDropped
from conclave.raft.node import RaftNode
from conclave.raft.types import (
    NONE,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    Role,
)

M = MessageType


def log_of(*terms: int) -> tuple[Entry, ...]:
    return tuple(Entry(t, i + 1) for i, t in enumerate(terms))


FIGURE7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIGURE7_FOLLOWERS = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


@pytest.mark.parametrize("name", sorted(FIGURE7_FOLLOWERS))
def test_figure7_new_leader_brings_every_follower_log_in_line(name: str) -> None:
    nw = Network(pre_vote=False)
    conf = ConfState(voters=frozenset({1, 2, 3}))
    for i, terms in ((1, FIGURE7_LEADER), (2, FIGURE7_FOLLOWERS[name]), (3, ())):
        st = nw.storages[i]
        st.save(HardState(term=7), log_of(*terms))
        st.sync()
        st.save_bootstrap(conf)
        nw.restart(i)
    nw.record = True
    nw.campaign(1)
    assert nw.nodes[1].role == Role.LEADER and nw.nodes[1].term == 8
    nw.propose(1, b"x")
    want = [*FIGURE7_LEADER, 8, 8]
    assert nw.log_terms(1) == want and nw.log_terms(2) == want and nw.log_terms(3) == want
    assert nw.nodes[2].commit_index == len(want)
    rejects = [m for m in nw.delivered if m.type == M.APP_RESP and m.frm == 2 and m.reject]
    # Fast back-off: one rejection per conflicting term, not one per entry.
    assert len(rejects) <= 2, rejects


def test_figure8_leader_commits_only_current_term_entries_by_counting() -> None:
    def leader(faults: frozenset[str]) -> RaftNode:
        p = PersistedState(
            hard_state=HardState(term=2), entries=log_of(1, 2), conf_state=ConfState(voters=frozenset({1, 2}))
        )
        n = RaftNode(Config(id=1, pre_vote=False, faults=faults), p, random.Random(1))
        n.campaign()
        n.advance(n.ready())
        n.step(Message(M.VOTE_RESP, to=1, frm=2, term=3))
        assert n.role == Role.LEADER and n.last_index == 3
        n.advance(n.ready())  # the leader's own entries are durable now
        return n

    n = leader(frozenset())
    n.step(Message(M.APP_RESP, to=1, frm=2, term=3, index=2))
    assert n.commit_index == 0  # index 2 is on both nodes but from term 2
    n.step(Message(M.APP_RESP, to=1, frm=2, term=3, index=3))
    assert n.commit_index == 3  # the term-3 entry commits, and index 2 with it

    broken = leader(frozenset({"commit_previous_term"}))
    broken.step(Message(M.APP_RESP, to=1, frm=2, term=3, index=2))
    assert broken.commit_index == 2


def test_figure8_scenario_in_a_network_keeps_committed_entries() -> None:
    """Paper figure 8 (c)->(d): an old-term entry replicated on a majority is not yet
    committed and may be overwritten; nothing a node applied is ever overwritten."""
    nw = Network(ids=(1, 2, 3, 4, 5), pre_vote=False, check_quorum=False)
    nw.campaign(1)
    for i in (3, 4, 5):
        nw.cut(1, i)
    nw.propose(1, b"t1")  # (a) only S1, S2 hold it
    nw.isolate(1)
    nw.cut(5, 2)
    nw.filter = lambda m: not (m.frm == 5 and m.type == M.APP)
    nw.campaign(5)  # (b) S5 leads term 2 with votes of S3, S4; its entry stays local
    assert nw.nodes[5].role == Role.LEADER
    nw.recover()
    nw.isolate(5)
    nw.restart(1)  # S1 crashed meanwhile and comes back
    for _ in range(5):
        nw.campaign(1)  # (c) S1 leads again and replicates
        if nw.nodes[1].role == Role.LEADER:
            break
    assert nw.nodes[1].role == Role.LEADER
    assert b"t1" in nw.data(1)  # committed through the current-term entry, never by count alone
    nw.recover()
    nw.tick_all(50)
    for i in nw.nodes:
        assert nw.data(i) == [b"t1"]


def test_leader_appends_an_empty_entry_of_its_term() -> None:
    nw = Network()
    nw.campaign(1)
    last = nw.nodes[1].log.entries[-1]
    assert (last.term, last.type, last.data) == (1, EntryType.NORMAL, b"")
    assert nw.nodes[2].commit_index == last.index


def test_leader_counts_itself_only_after_its_own_fsync() -> None:
    nw = Network(ids=(1, 2))
    nw.campaign(1)
    leader = nw.nodes[1]
    leader.propose(b"x")
    rd = leader.ready()
    app = [m for m in rd.messages if m.type == M.APP]
    assert app and not rd.persisted_messages
    nw.nodes[2].step(app[0])
    nw.process(2)
    for m in list(nw.queue):
        leader.step(m)
    nw.queue.clear()
    assert leader.commit_index < rd.entries[-1].index  # follower alone is not a majority
    nw.storages[1].save(rd.hard_state, rd.entries, rd.snapshot)
    nw.storages[1].sync()
    leader.advance(rd)
    assert leader.commit_index == rd.entries[-1].index


def test_follower_ack_waits_for_persistence_unless_faulted() -> None:
    for faults, where in ((frozenset(), "persisted_messages"), (frozenset({"ack_before_persist"}), "messages")):
        n = RaftNode(Config(id=2, faults=faults), PersistedState(conf_state=ConfState(frozenset({1, 2}))),
                     random.Random(2))
        n.step(Message(M.APP, to=2, frm=1, term=1, index=0, log_term=0, entries=(Entry(1, 1),)))
        rd = n.ready()
        acks = [m for m in getattr(rd, where) if m.type == M.APP_RESP]
        assert len(acks) == 1 and acks[0].index == 1 and not acks[0].reject


def test_committed_entries_are_redelivered_after_restart() -> None:
    nw = Network(ids=(1,))
    nw.campaign(1)
    for d in (b"a", b"b", b"c"):
        nw.propose(1, d)
    assert nw.data(1) == [b"a", b"b", b"c"]
    n = nw.restart(1)
    assert n.applied_index == 0 and n.commit_index == 4
    rd = n.ready()
    assert [e.data for e in rd.committed] == [b"", b"a", b"b", b"c"]


def test_inflight_window_bounds_unacknowledged_appends() -> None:
    nw = Network(ids=(1, 2), max_inflight_msgs=2)
    nw.campaign(1)
    nw.drop_types.add(M.APP_RESP)
    nw.record = True
    for i in range(6):
        nw.propose(1, b"p%d" % i)
    sent = [m for m in nw.delivered if m.type == M.APP and m.entries]
    assert len(sent) == 2
    nw.recover()
    nw.tick_all(5)
    assert nw.data(2) == [b"p%d" % i for i in range(6)]


def test_max_size_per_msg_limits_batches() -> None:
    nw = Network(ids=(1, 2, 3), max_size_per_msg=250)
    nw.campaign(1)
    nw.isolate(3)
    for i in range(10):
        nw.propose(1, bytes([i]) * 100)
    nw.recover()
    nw.record = True
    nw.tick_all(10)
    to3 = [m for m in nw.delivered if m.type == M.APP and m.to == 3 and m.entries]
    assert to3 and max(len(m.entries) for m in to3) == 2
    assert len(nw.data(3)) == 10


def test_heartbeat_carries_commit_bounded_by_match() -> None:
    nw = Network()
    nw.campaign(1)
    nw.isolate(3)
    nw.filter = lambda m: not (m.type == M.APP and not m.entries)  # drop commit-only appends
    nw.propose(1, b"x")
    leader = nw.nodes[1]
    assert leader.commit_index == 2 and nw.nodes[2].commit_index == 1
    for _ in range(leader.config.heartbeat_tick):
        leader.tick()
    hb = {m.to: m.commit for m in leader.ready().messages if m.type == M.HEARTBEAT}
    assert hb == {2: 2, 3: 1}  # node 3 only matched up to 1


def test_follower_learns_commit_from_heartbeat() -> None:
    nw = Network()
    nw.campaign(1)
    nw.filter = lambda m: not (m.type == M.APP and not m.entries)
    nw.propose(1, b"x")
    assert nw.nodes[2].commit_index == 1
    nw.filter = None
    nw.drop_types.add(M.APP)
    nw.tick(1, nw.nodes[1].config.heartbeat_tick)
    assert nw.nodes[2].commit_index == 2 and nw.data(2) == [b"x"]


def test_proposal_forwarding_from_follower() -> None:
    nw = Network()
    nw.campaign(1)
    nw.propose(2, b"via-2")
    assert all(nw.data(i) == [b"via-2"] for i in (1, 2, 3))


def test_not_leader_when_forwarding_disabled_or_no_leader() -> None:
    nw = Network(disable_proposal_forwarding=True)
    with pytest.raises(NotLeader) as no_leader:
        nw.nodes[2].propose(b"x")
    assert no_leader.value.leader_hint == NONE
    nw.campaign(1)
    with pytest.raises(NotLeader) as hint:
        nw.nodes[2].propose(b"x")
    assert hint.value.leader_hint == 1
    nw.propose(1, b"ok")
    assert nw.data(3) == [b"ok"]


def test_uncommitted_size_bound_drops_proposals() -> None:
    nw = Network(max_uncommitted_entries_size=1000)
    nw.campaign(1)
    nw.isolate(2)
    nw.isolate(3)
    nw.propose(1, b"a" * 400)
    nw.propose(1, b"b" * 400)
    with pytest.raises(ProposalDropped, match="uncommitted"):
        nw.propose(1, b"c" * 400)
    nw.recover()
    nw.tick_all(3)
    assert nw.data(2) == [b"a" * 400, b"b" * 400]
    nw.propose(1, b"c" * 400)  # room again once applied
    assert len(nw.data(3)) == 3


def test_stale_leader_append_gets_term_back() -> None:
    n = RaftNode(Config(id=2), PersistedState(HardState(term=5), conf_state=ConfState(frozenset({1, 2}))),
                 random.Random(2))
    n.step(Message(M.APP, to=2, frm=1, term=3, index=0))
    rd = n.ready()
    assert [(m.type, m.term) for m in rd.messages] == [(M.APP_RESP, 5)]


@pytest.mark.parametrize("faulty", [False, True])
def test_ack_before_persist_loses_a_committed_entry_on_power_cut(faulty: bool) -> None:
    """The teeth of the durability rule: an ack sent before the fsync lets the leader
    commit an entry that a power cut then erases from the only other copy."""
    faults = frozenset({"ack_before_persist"}) if faulty else frozenset()
    nw = Network(faults=faults, check_quorum=False)
    nw.campaign(1)
    nw.isolate(3)
    nw.nodes[1].propose(b"X")
    nw.process(1)
    app = next(m for m in nw.queue if m.type == M.APP and m.to == 2)
    nw.queue.clear()
    nw.nodes[2].step(app)
    rd = nw.nodes[2].ready()
    nw.queue.extend(rd.messages)  # sent before the fsync
    nw.storages[2].save(rd.hard_state, rd.entries, rd.snapshot)
    nw.restart(2, faults=faults)  # power cut: the unsynced entry is gone
    nw.deliver_all()
    assert (b"X" in nw.data(1)) == faulty
    nw.recover()
    nw.isolate(1)

    def elect_and_write() -> None:
        nw.tick_all(40)
        nw.propose(nw.leader(), b"Y")

    if faulty:
        with pytest.raises(AssertionError, match="applied"):
            elect_and_write()
    else:
        elect_and_write()
        assert nw.data(2) == [b"Y"]


def campaign_until_leader(nw: Network, i: int) -> None:
    for _ in range(5):
        nw.campaign(i)
        if nw.nodes[i].role == Role.LEADER:
            return
    raise AssertionError(f"node {i} could not win an election")


@pytest.mark.parametrize("faulty", [False, True])
def test_figure8_in_a_network_commit_by_counting_old_terms_loses_data(faulty: bool) -> None:
    """Raft paper figure 8, played out: with the rule, nothing applied is ever
    overwritten; with "commit_previous_term", S1 applies an entry S5 then replaces."""
    faults = frozenset({"commit_previous_term"}) if faulty else frozenset()
    nw = Network(ids=(1, 2, 3, 4, 5), pre_vote=False, check_quorum=False, max_size_per_msg=0, faults=faults)
    nw.campaign(1)
    for i in (3, 4, 5):
        nw.cut(1, i)
    nw.propose(1, b"X")  # (a) index 2 only on S1 and S2
    nw.isolate(1)
    nw.cut(5, 2)
    nw.filter = lambda m: not (m.frm == 5 and m.type == M.APP)
    nw.campaign(5)  # (b) S5 leads with S3, S4; its own index 2 stays local
    assert nw.nodes[5].role == Role.LEADER
    nw.recover()
    nw.isolate(5)
    nw.restart(1, faults=faults)
    # (c) S1 leads again; index 2 reaches S3 but S1's own new entry (index 3) reaches nobody.
    nw.filter = lambda m: not (
        m.type == M.APP and any(e.index >= 3 for e in m.entries) and nw.nodes[m.to].log.term(2) == 1
    )
    campaign_until_leader(nw, 1)
    assert nw.nodes[3].log.term(2) == 1
    assert (b"X" in nw.data(1)) == faulty  # committed by counting only with the fault
    nw.recover()
    nw.isolate(1)
    nw.restart(5, faults=faults)  # S5 too had crashed meanwhile

    def s5_takes_over() -> None:
        campaign_until_leader(nw, 5)  # (d) S5's term-2 entry wins over the term-1 one
        nw.propose(5, b"Y")

    if faulty:
        with pytest.raises(AssertionError, match="applied"):
            s5_takes_over()
    else:
        s5_takes_over()
        assert nw.nodes[3].log.term(2) == 2 and nw.data(3) == [b"Y"]


def test_committed_entries_come_in_bounded_batches_after_restart() -> None:
    nw = Network(ids=(1,))
    nw.campaign(1)
    for i in range(10):
        nw.propose(1, bytes([i]) * 100)
    n = nw.restart(1, max_committed_size_per_ready=250)
    sizes = []
    for _ in range(20):
        if not n.has_ready():
            break
        rd = n.ready()
        sizes.append(len(rd.committed))
        n.advance(rd)
    assert n.applied_index == 11 and max(sizes) <= 3 and len([s for s in sizes if s]) >= 4
