"""The fault schedule is a pure function of its seed; the partition shapes are what they claim."""

from __future__ import annotations

import itertools

import pytest

from conclave.chaos.schedule import ALL, NEMESES, groups_cuts, make_schedule, parse_nemeses, ring_cuts


def test_same_seed_same_schedule_and_different_seeds_differ() -> None:
    a = make_schedule(7, ALL, 120, 10, 5)
    assert a == make_schedule(7, ALL, 120, 10, 5)
    assert a != make_schedule(8, ALL, 120, 10, 5)


def test_faults_do_not_overlap_and_end_before_the_run_does() -> None:
    for seed in range(20):
        faults = make_schedule(seed, ALL, 90, 8, 3)
        assert faults
        for f, g in itertools.pairwise(faults):
            assert f.end <= g.start, (f, g)
        assert faults[-1].end <= 90


def test_only_the_chosen_nemeses_are_scheduled() -> None:
    faults = make_schedule(3, ("kill",), 200, 5, 5)
    assert {f.kind for f in faults} <= set(NEMESES["kill"])
    assert len({f.kind for f in faults}) == 3  # one, leader, majority all appear in 200 s
    for f in faults:
        if f.kind == "kill-majority":
            assert len(f.targets) == 3 and len(set(f.targets)) == 3


def test_pauses_outlast_the_election_timeout() -> None:
    faults = make_schedule(1, ("pause",), 300, 4, 3, pause_s=3.0)
    assert faults and all(f.duration >= 3.0 for f in faults)


def test_parse_nemeses() -> None:
    assert parse_nemeses("all") == ALL
    assert parse_nemeses("kill, pause,kill") == ("kill", "pause")
    assert parse_nemeses("none") == ()
    with pytest.raises(ValueError, match="unknown nemesis bogus"):
        parse_nemeses("kill,bogus")


def test_majorities_ring_each_member_sees_a_majority_but_not_the_same_one() -> None:
    order = (0, 1, 2, 3, 4)
    cuts = ring_cuts(order)
    seen = {}
    for a in order:
        reach = {a} | {b for b in order if b != a and (a, b) not in cuts}
        assert len(reach) == 3
        seen[a] = frozenset(reach)
    assert len(set(seen.values())) == 5
    assert all((b, a) in cuts for a, b in cuts)  # symmetric


def test_ring_of_three_cuts_one_link_and_halves_cut_across() -> None:
    assert ring_cuts((2, 0, 1)) == {(2, 0), (0, 2)}
    cuts = groups_cuts(((0,), (1, 2)))
    assert cuts == {(0, 1), (0, 2), (1, 0), (2, 0)}
