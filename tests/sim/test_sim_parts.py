"""The simulator's parts on their own: clock, network, log mirror, state machine,
history and safety monitor. Each checker is shown a broken history and must object."""

from __future__ import annotations

import random

import pytest

from conclave.kv.types import PutRequest
from conclave.machine.entry import encode_batch, encode_lease_expiry
from conclave.raft.types import Entry, HardState, Message, MessageType
from conclave.sim.clock import Agenda, EventKind
from conclave.sim.errors import InvariantBroken, SetupError
from conclave.sim.faults import FAULT_KINDS, parse_faults
from conclave.sim.history import Canonical, History, OpStatus
from conclave.sim.invariants import SafetyMonitor
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


def test_a_replica_runs_the_servers_state_machine_and_keeps_the_teeth_switch() -> None:
    # The once-only apply is tested in tests/machine; here: the sim's replica uses that machine
    # and its dedupe=False switch (the apply_batch_twice rule) turns it off.
    from conclave.raft.types import Config
    from conclave.sim.replica import Replica

    put = encode_batch(7, [(1, PutRequest(key=b"a", value=b"1"))])
    ok, broken = Replica(Config(id=1), None), Replica(Config(id=2), None, dedupe=False)
    for r in (ok, broken):
        for index in (1, 2):
            r.machine.apply(Entry(1, index, data=put), 0)
    assert ok.machine.store.revision == 2 and broken.machine.store.revision == 3
    ok.restore(2, ok.machine.snapshot())
    assert ok.machine.apply(Entry(1, 3, data=put), 0).results == [] and ok.lessor is ok.machine.leases
    expiry = ok.machine.apply(Entry(1, 4, data=encode_lease_expiry(5)), 0).results
    assert expiry[0].origin == 0 and expiry[0].error is not None  # no such lease


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


def test_replicas_at_one_applied_index_must_hash_alike_and_snapshots_too() -> None:
    m = SafetyMonitor()
    m.observe_apply(1, Entry(1, 1, data=b"x"))
    m.observe_hash(1, 1, 0xAB)
    m.observe_hash(2, 1, 0xAB)
    m.observe_restore(3, 1, 0xAB)
    with pytest.raises(InvariantBroken, match="store hash"):
        m.observe_hash(3, 1, 0xCD)
    with pytest.raises(InvariantBroken, match="snapshot"):
        m.observe_restore(2, 1, 0xCD)


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
    w = h.call(1, "put", 1, "k", "a", step=1, now_ms=1)
    early = h.call(2, "get", 2, "k", None, step=1, now_ms=1)  # concurrent with the write: may miss it
    h.complete(w, 2, step=2, now_ms=2, new_revision=True)
    h.complete(early, 1, step=3, now_ms=3, new_revision=False)
    stale = h.call(3, "sget", 2, "k", None, step=4, now_ms=4)
    h.complete(stale, 1, step=4, now_ms=4, new_revision=False)  # serializable: may be stale
    late = h.call(2, "get", 2, "k", None, step=4, now_ms=4)
    with pytest.raises(InvariantBroken, match="linearizability"):
        h.complete(late, 1, step=5, now_ms=5, new_revision=False)
    assert late.status is OpStatus.OK and h.counts()["put_ok"] == 1


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


def test_a_write_must_take_a_revision_after_what_was_visible_when_it_was_called() -> None:
    h = History()
    first = h.call(1, "put", 1, "k", "a", step=1, now_ms=1)
    h.complete(first, 2, step=2, now_ms=2, new_revision=True)
    second = h.call(1, "put", 1, "k", "b", step=3, now_ms=3)
    with pytest.raises(InvariantBroken, match="revision 2 was already visible"):
        h.complete(second, 2, step=4, now_ms=4, new_revision=True)


def test_the_history_goes_to_the_verify_checker_and_a_reordering_is_caught() -> None:
    from conclave.verify.checker import Verdict, check_operations
    from conclave.verify.model import KeyValue

    def run(b_first: bool) -> Verdict:
        h = History()
        a = h.call(1, "put", 1, "k", "a", step=1, now_ms=1)
        a.origin, a.seq = 1, 1
        h.complete(a, 2, step=2, now_ms=2, new_revision=True)
        b = h.call(2, "cas", 1, "k", "b", step=3, now_ms=3)  # called after a returned
        b.origin, b.seq, b.expected = 1, 2, "a"
        lost = h.call(3, "put", 1, "k", "never-applied", step=3, now_ms=3)
        lost.origin, lost.seq = 1, 3
        h.complete(b, 3, step=4, now_ms=4, new_revision=True)
        h.give_up(lost, step=9, now_ms=9)
        r = h.call(3, "get", 2, "k", None, step=5, now_ms=5)
        h.complete(r, 3, step=6, now_ms=6, new_revision=False)
        r.output = "a" if b_first else "b"
        canonical = {
            (1, 1): Canonical(2, 1, True, False, None, (), ("k", "a")),
            (1, 2): Canonical(4, 2, True, True, None, (), ("k", "b")),
        }
        ops = h.to_verify(canonical, [])
        assert [o.f for o in ops] == ["put", "cas", "get"]  # the never-applied write is left out
        return check_operations(ops, KeyValue()).verdict

    assert run(b_first=False) is Verdict.LINEARIZABLE
    # A read of "a" after the cas to "b" returned contradicts real time.
    assert run(b_first=True) is Verdict.NOT_LINEARIZABLE


def test_the_cli_offers_the_cores_fault_rules_and_the_drivers() -> None:
    from conclave.raft.node import FAULTS
    from conclave.sim.faults import DRIVER_RULES, FAULT_RULES, RAFT_RULES

    assert set(RAFT_RULES) == FAULTS  # RAFT_RULES keeps a stable order for --help
    assert FAULT_RULES == RAFT_RULES + DRIVER_RULES and not set(DRIVER_RULES) & FAULTS


def test_the_simulated_driver_applies_the_servers_request_rules_before_proposing() -> None:
    from conclave.kv.types import LeaseGrantRequest
    from conclave.machine.rules import MAX_LEASE_TTL_S
    from conclave.sim.simulation import SimOptions, Simulation

    sim = Simulation(0, SimOptions(nodes=3))
    sim._boot()
    r = sim.replicas[1]
    too_long = sim.history.call(1, "grant", r.id, "", None, sim.step, sim.agenda.now_ms)
    sim._submit(r, too_long, LeaseGrantRequest(ttl=MAX_LEASE_TTL_S + 1))
    assert too_long.status is OpStatus.FAIL and not too_long.seq  # refused before it got an id, never proposed
    empty_key = sim.history.call(1, "put", r.id, "", "v", sim.step, sim.agenda.now_ms)
    sim._submit(r, empty_key, PutRequest(key=b"", value=b"v"))
    assert empty_key.status is OpStatus.FAIL and not empty_key.seq
