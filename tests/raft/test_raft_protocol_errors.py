"""A peer that breaks the protocol gets a RemoteProtocolError, raised before any state
changes; a caller that misuses the core gets a LocalProtocolError; terms near the width's
limit never get in; a follower commits only what the leader's appends vouched for."""

import random

import pytest

from conclave.raft import errors
from conclave.raft.errors import LocalProtocolError, RaftError, RemoteProtocolError
from conclave.raft.node import RaftNode
from conclave.raft.types import (
    COUNTER_MAX,
    Config,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistedState,
    Snapshot,
    SnapshotMeta,
)

M = MessageType
VOTERS = ConfState(voters=frozenset({1, 2, 3}))


def node(id: int = 2, term: int = 1, entries: int = 0, commit: int = 0) -> RaftNode:
    ents = tuple(Entry(1, i + 1) for i in range(entries))
    p = PersistedState(HardState(term, 0, commit), None, ents, VOTERS)
    return RaftNode(Config(id=id), p, random.Random(id))


def drain(n: RaftNode) -> list[Message]:
    out: list[Message] = []
    while n.has_ready():
        rd = n.ready()
        out += [*rd.messages, *rd.persisted_messages]
        n.advance(rd)
    return out


def test_the_two_protocol_errors_are_siblings_under_raft_error() -> None:
    assert issubclass(RemoteProtocolError, RaftError) and issubclass(LocalProtocolError, RaftError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not hasattr(errors, "ProtocolError")  # every user moved to one of the two


FORGED = [
    pytest.param(Message(M.APP, to=2, frm=1, term=5, index=0, entries=(Entry(0, 1),)), id="app-entry-of-term-0"),
    pytest.param(Message(M.APP, to=2, frm=1, term=5, index=0, entries=(Entry(6, 1),)), id="app-entry-from-future"),
    pytest.param(Message(M.APP, to=2, frm=1, term=5, index=0, entries=(Entry(5, 3),)), id="app-entry-gap"),
    pytest.param(Message(M.SNAP, to=2, frm=1, term=5), id="snap-without-snapshot"),
    pytest.param(Message(M.SNAP, to=2, frm=1, term=5, snapshot=Snapshot(SnapshotMeta(0, 1, VOTERS))),
                 id="snap-at-index-0"),
    pytest.param(Message(M.PROP, to=2, frm=1, term=0, entries=(Entry(1, 1),)), id="prop-numbered"),
    pytest.param(Message(M.PROP, to=2, frm=1, term=0), id="prop-empty"),
    pytest.param(Message(M.HEARTBEAT, to=2, frm=1, term=COUNTER_MAX + 1), id="heartbeat-term-beyond-limit"),
    pytest.param(Message(M.HEARTBEAT, to=2, frm=1, term=2**64 - 1), id="heartbeat-term-2^64-1"),
    pytest.param(Message(M.VOTE, to=2, frm=1, term=5, index=2**64), id="vote-index-beyond-width"),
    pytest.param(Message(M.HEARTBEAT, to=2, frm=1, term=5, commit=-1), id="heartbeat-negative-commit"),
]


@pytest.mark.parametrize("m", FORGED)
def test_a_forged_message_is_a_remote_protocol_error_and_changes_nothing(m: Message) -> None:
    n = node(entries=3, commit=2)
    before = n.status()
    with pytest.raises(RemoteProtocolError):
        n.step(m)
    after = n.status()
    assert (after.term, after.vote, after.leader, after.commit, after.last_index) == (
        before.term, before.vote, before.leader, before.commit, before.last_index)
    assert not n.has_ready() or not n.ready().hard_state


def test_the_caller_misusing_the_core_is_a_local_protocol_error() -> None:
    n = node()
    with pytest.raises(LocalProtocolError):
        n.step(Message(M.HEARTBEAT, to=3, frm=1, term=1))
    n.campaign()
    rd = n.ready()
    with pytest.raises(LocalProtocolError):
        n.ready()
    with pytest.raises(LocalProtocolError):
        n.advance(type(rd)())
    with pytest.raises(LocalProtocolError):
        RaftNode(Config(id=0), PersistedState(), random.Random(0))


def test_a_leader_refuses_an_ack_beyond_its_log() -> None:
    n2 = node(id=1, entries=2, commit=2)
    n2.campaign()
    for m in drain(n2):
        if m.type == M.PRE_VOTE:
            n2.step(Message(M.PRE_VOTE_RESP, to=1, frm=m.to, term=m.term))
    for m in drain(n2):
        if m.type == M.VOTE:
            n2.step(Message(M.VOTE_RESP, to=1, frm=m.to, term=m.term))
    drain(n2)
    st = n2.status()
    assert st.leader == 1
    with pytest.raises(RemoteProtocolError, match="beyond our last index"):
        n2.step(Message(M.APP_RESP, to=1, frm=2, term=st.term, index=st.last_index + 100))
    # The leader still works: a correct ack is taken.
    n2.step(Message(M.APP_RESP, to=1, frm=2, term=st.term, index=st.last_index))
    assert n2.status().progress[2].match == st.last_index


def test_a_node_at_the_counter_limit_does_not_campaign_past_it() -> None:
    n = node(term=COUNTER_MAX)
    for _ in range(100):
        n.tick()
    n.campaign()
    drain(n)
    assert n.term == COUNTER_MAX


def test_recovered_state_beyond_the_limit_is_refused() -> None:
    with pytest.raises(RaftError, match="beyond the largest"):
        node(term=2**64 - 1)


def test_a_heartbeat_commits_only_what_the_leaders_appends_vouched_for() -> None:
    n = node(entries=10, commit=2)  # entries of term 1; a new leader 1 in term 2
    # A heartbeat of a leader we have not matched: the commit claim is not believed ...
    n.step(Message(M.HEARTBEAT, to=2, frm=1, term=2, commit=10))
    out = drain(n)
    assert n.commit_index == 2
    # ... and the follower says so, so the leader proves the match with an append.
    (resp,) = [m for m in out if m.type == M.HEARTBEAT_RESP]
    assert resp.reject
    # An APP whose prefix (up to 6) matches vouches for 6: commit moves to 6 at most.
    n.step(Message(M.APP, to=2, frm=1, term=2, index=6, log_term=1, commit=10))
    drain(n)
    assert n.commit_index == 6
    n.step(Message(M.HEARTBEAT, to=2, frm=1, term=2, commit=10))
    assert n.commit_index == 6
    # Another leader id in the same term (forged) gets no credit from the first one's appends.
    n.step(Message(M.HEARTBEAT, to=2, frm=3, term=2, commit=8))
    assert n.commit_index == 6
    # The real leader's heartbeat below what it vouched for is taken at once.
    n.step(Message(M.APP, to=2, frm=1, term=2, index=10, log_term=1, commit=7))
    n.step(Message(M.HEARTBEAT, to=2, frm=1, term=2, commit=9))
    drain(n)
    assert n.commit_index == 9
    n.step(Message(M.HEARTBEAT, to=2, frm=1, term=2, commit=9))
    out = drain(n)
    assert [m.reject for m in out if m.type == M.HEARTBEAT_RESP] == [False]
