"""The simulator's parts on their own: clock, network, log mirror, state machine,
history and safety monitor. Each checker is shown a broken history and must object."""

from __future__ import annotations

import random

import pytest

from conclave.raft.types import Entry, EntryType, HardState, Message, MessageType
from conclave.sim.clock import Agenda, EventKind
from conclave.sim.errors import InvariantBroken, SetupError
from conclave.sim.faults import FAULT_KINDS, parse_faults
from conclave.sim.history import History, OpKind, OpStatus
from conclave.sim.invariants import SafetyMonitor
from conclave.sim.machine import AppendOnlyList, decode_values, encode_values
from conclave.sim.mirror import LogMirror
from conclave.sim.network import LinkConditions, Network
from conclave.storage.memory import MemoryStorage


def ents(*terms: int, start: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(t, start + i, data=f"v{start + i}.{t}".encode()) for i, t in enumerate(terms))


def test_agenda_orders_by_time_then_insertion() -> None:
    a = Agenda()
    a.schedule(5, EventKind.TICK, 1)
    a.schedule(1, EventKind.TICK, 2)
    a.schedule(5, EventKind.TICK, 3)
    got = [(ev.due_ms, ev.node_id) for ev in iter(a.pop, None)]
    assert got == [(1, 2), (5, 1), (5, 3)]
    assert a.now_ms == 5


def test_network_cuts_are_directed_and_heal() -> None:
    net = Network(random.Random(1))
    net.cut(1, 2)
    assert not net.link_open(1, 2) and net.link_open(2, 1)
    assert net.transmit(1, 2) == []
    net.heal()
    net.partition([[1], [2, 3]])
    assert not net.link_open(1, 3) and not net.link_open(3, 1) and net.link_open(2, 3)


def test_network_drops_and_duplicates_at_the_configured_rates() -> None:
    net = Network(random.Random(7))
    net.conditions = LinkConditions(latency_min_ms=1, latency_max_ms=40, drop_rate=0.3, dup_rate=0.5)
    copies = [len(net.transmit(1, 2)) for _ in range(2000)]
    assert 0.25 < copies.count(0) / 2000 < 0.35
    assert 0.3 < copies.count(2) / 2000 < 0.4  # half of the 70% that survive


def test_mirror_replaces_suffix_and_reports_lost_entries() -> None:
    log = LogMirror()
    assert log.write(ents(1, 1, 1)) == 0
    assert log.write(ents(2, start=2)) == 2  # entry 2 of term 1 replaced, 3 dropped
    assert [e.term for e in log.entries] == [1, 2]
    log.install(5, 3)
    assert (log.base_index, log.last_index, log.term_at(5), log.term_at(4)) == (5, 5, 3, None)


def test_state_machine_applies_in_order_and_snapshots() -> None:
    sm = AppendOnlyList()
    sm.apply(Entry(1, 1))  # a leader's empty entry adds no value
    sm.apply(Entry(1, 2, data=b"a"))
    sm.apply(Entry(1, 3, EntryType.CONF_CHANGE, b"cc"))
    assert sm.values == [b"a"] and decode_values(sm.image()) == [b"a"]
    with pytest.raises(InvariantBroken, match="apply order"):
        sm.apply(Entry(1, 5, data=b"b"))
    assert decode_values(encode_values([])) == []


def test_a_value_proposed_twice_is_applied_once_at_its_first_position() -> None:
    sm = AppendOnlyList()
    sm.apply(Entry(1, 1, data=b"a"))
    sm.apply(Entry(1, 2, data=b"b"))
    sm.apply(Entry(1, 3, data=b"a"))  # a duplicated forwarded proposal
    assert sm.values == [b"a", b"b"] and sm.position[b"a"] == 1
    sm.restore(3, sm.image())
    sm.apply(Entry(2, 4, data=b"b"))
    assert sm.values == [b"a", b"b"] and sm.position[b"b"] == 2


def test_two_leaders_in_one_term_is_a_violation() -> None:
    m = SafetyMonitor()
    m.observe_role(1, 3, True)
    m.observe_role(1, 3, True)
    m.observe_role(2, 4, True)
    with pytest.raises(InvariantBroken, match="election safety"):
        m.observe_role(2, 3, True)


def test_log_matching_catches_same_index_and_term_with_other_content() -> None:
    m = SafetyMonitor()
    m.observe_write(1, LogMirror(), ents(1, 1))
    other = LogMirror()
    with pytest.raises(InvariantBroken, match="log matching"):
        m.observe_write(2, other, (Entry(1, 1, data=b"v1.1"), Entry(1, 2, data=b"other")))


def test_log_matching_catches_different_predecessors() -> None:
    m = SafetyMonitor()
    m.observe_write(1, LogMirror(), ents(1, 2))
    with pytest.raises(InvariantBroken, match="predecessor"):
        m.observe_write(2, LogMirror(), (Entry(2, 1, data=b"x"), Entry(2, 2, data=b"v2.2")))


def test_a_gap_in_a_log_is_a_violation() -> None:
    m = SafetyMonitor()
    with pytest.raises(InvariantBroken, match="ends at 0"):
        m.observe_write(1, LogMirror(), ents(1, start=3))


def test_overwriting_a_committed_entry_is_a_violation() -> None:
    m = SafetyMonitor()
    log = LogMirror()
    m.observe_write(1, log, ents(1, 1))
    m.observe_commit(1, log, 2, 1)
    with pytest.raises(InvariantBroken, match="committed entry lost"):
        m.observe_write(1, log, ents(3, start=2))


def test_leader_without_a_committed_entry_is_a_violation() -> None:
    m = SafetyMonitor()
    a, b = LogMirror(), LogMirror()
    m.observe_write(1, a, ents(1, 1))
    m.observe_commit(1, a, 2, 1)
    m.observe_write(2, b, ents(1))
    with pytest.raises(InvariantBroken, match="leader completeness"):
        m.observe_leader_log(2, 2, b)


def test_a_leader_is_checked_again_when_an_older_entry_becomes_known_committed() -> None:
    m = SafetyMonitor()
    a, b = LogMirror(), LogMirror()
    m.observe_write(1, a, ents(1, 1))
    m.observe_write(2, b, ents(1))
    m.observe_leader_log(2, 2, b)
    with pytest.raises(InvariantBroken, match="leader completeness"):
        m.observe_commit(1, a, 2, 1)


def test_applying_different_entries_at_one_index_is_a_violation() -> None:
    m = SafetyMonitor()
    m.observe_apply(1, Entry(1, 1, data=b"x"))
    m.observe_apply(2, Entry(1, 1, data=b"x"))
    with pytest.raises(InvariantBroken, match="state machine safety"):
        m.observe_apply(3, Entry(2, 1, data=b"y"))


def test_a_snapshot_must_equal_the_applied_prefix() -> None:
    m = SafetyMonitor()
    m.observe_apply(1, Entry(1, 1, data=b"x"))
    m.observe_apply(1, Entry(1, 2, data=b"y"))
    m.observe_restore(2, 2, encode_values([b"x", b"y"]))
    with pytest.raises(InvariantBroken, match="snapshot"):
        m.observe_restore(2, 2, encode_values([b"x"]))


def test_granting_two_votes_in_a_term_is_a_violation() -> None:
    m = SafetyMonitor(check_persistence_rule=False)
    disk, log = MemoryStorage(), LogMirror()
    m.observe_send(1, Message(MessageType.VOTE_RESP, to=2, frm=1, term=5), disk, log)
    m.observe_send(1, Message(MessageType.VOTE_RESP, to=3, frm=1, term=5, reject=True), disk, log)
    with pytest.raises(InvariantBroken, match="granted its vote in term 5 to 2 and then to 3"):
        m.observe_send(1, Message(MessageType.VOTE_RESP, to=3, frm=1, term=5), disk, log)


def test_persistence_rule_votes_and_acks_only_from_disk() -> None:
    m = SafetyMonitor()
    disk, log = MemoryStorage(), LogMirror()
    disk.save(HardState(5, 2, 0), ())
    with pytest.raises(InvariantBroken, match="before it was on disk"):
        m.observe_send(1, Message(MessageType.VOTE_RESP, to=2, frm=1, term=5), disk, log)
    disk.sync()
    m.observe_send(1, Message(MessageType.VOTE_RESP, to=2, frm=1, term=5), disk, log)
    log.write(ents(1, 1))
    disk.save(None, ents(1, 1))
    with pytest.raises(InvariantBroken, match="acknowledged entries up to 2"):
        m.observe_send(1, Message(MessageType.APP_RESP, to=2, frm=1, term=5, index=2), disk, log)
    disk.sync()
    m.observe_send(1, Message(MessageType.APP_RESP, to=2, frm=1, term=5, index=2), disk, log)


def test_a_stale_read_is_not_linearizable() -> None:
    h = History()
    w = h.call(1, OpKind.WRITE, 1, b"a", step=1, now_ms=1)
    early = h.call(2, OpKind.READ, 2, b"", step=1, now_ms=1)  # concurrent with the write: may miss it
    h.acknowledge_write(w, index=3, length=1, step=2, now_ms=2)
    h.return_read(early, index=2, length=0, step=3, now_ms=3)
    late = h.call(2, OpKind.READ, 2, b"", step=4, now_ms=4)
    with pytest.raises(InvariantBroken, match="linearizability"):
        h.return_read(late, index=2, length=0, step=5, now_ms=5)
    assert late.status is OpStatus.OK and h.counts()["write_ok"] == 1


def test_fault_kinds_parse_and_reject_unknown_names() -> None:
    assert parse_faults("all") == frozenset(FAULT_KINDS)
    assert parse_faults("none") == frozenset()
    assert parse_faults("crash, drop") == {"crash", "drop"}
    with pytest.raises(SetupError, match="unknown fault kind 'partitions'"):
        parse_faults("partitions")


def test_a_stale_leader_need_not_hold_what_a_later_term_committed() -> None:
    """Seed 81 (5 nodes) before this was right: leader 3 of term 11, cut off, does not hold
    entry 4 of term 10 that the leader of term 12 committed; that is no violation."""
    m = SafetyMonitor()
    old, new = LogMirror(), LogMirror()
    m.observe_write(3, old, (*ents(1, 1, 1), Entry(11, 4)))
    m.observe_leader_log(3, 11, old)
    m.observe_write(4, new, (*ents(1, 1, 1), Entry(10, 4), Entry(12, 5)))
    m.observe_commit(4, new, 5, 12)
    with pytest.raises(InvariantBroken, match="leader completeness"):
        m.observe_leader_log(5, 13, old)


def test_a_write_must_land_after_what_was_visible_when_it_was_called() -> None:
    h = History()
    first = h.call(1, OpKind.WRITE, 1, b"a", step=1, now_ms=1)
    h.acknowledge_write(first, index=2, length=1, step=2, now_ms=2)
    second = h.call(1, OpKind.WRITE, 1, b"b", step=3, now_ms=3)
    with pytest.raises(InvariantBroken, match="landed at position 1"):
        h.acknowledge_write(second, index=1, length=1, step=4, now_ms=4)


def test_the_history_goes_to_the_verify_checker_and_a_reordering_is_caught() -> None:
    from conclave.verify.checker import Verdict, check_operations
    from conclave.verify.model import KeyValue

    h = History()
    a = h.call(1, OpKind.WRITE, 1, b"a", step=1, now_ms=1)
    h.acknowledge_write(a, index=1, length=1, step=2, now_ms=2)
    b = h.call(2, OpKind.WRITE, 1, b"b", step=3, now_ms=3)  # called after a returned
    lost = h.call(3, OpKind.WRITE, 1, b"never-applied", step=3, now_ms=3)
    h.acknowledge_write(b, index=2, length=2, step=4, now_ms=4)
    h.give_up(lost, step=9, now_ms=9)
    r = h.call(3, OpKind.READ, 2, b"", step=5, now_ms=5)
    h.return_read(r, index=2, length=2, step=6, now_ms=6)
    good = h.to_verify([b"a", b"b"], {b"a": 2, b"b": 4})
    assert [o.f for o in good] == ["append", "append", "get"]  # the never-applied write is left out
    assert check_operations(good, KeyValue()).verdict is Verdict.LINEARIZABLE
    # Had the replicas applied b before a, the read "b,a," contradicts real time.
    assert check_operations(h.to_verify([b"b", b"a"], {b"a": 2, b"b": 4}), KeyValue()).verdict is (
        Verdict.NOT_LINEARIZABLE
    )


def test_the_cli_offers_exactly_the_cores_fault_rules() -> None:
    from conclave.raft.node import FAULTS
    from conclave.sim.faults import FAULT_RULES

    assert set(FAULT_RULES) == FAULTS  # FAULT_RULES keeps a stable order for --help
