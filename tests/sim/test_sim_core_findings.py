"""Bugs the simulator found in the Raft core, as reproductions.

Each test asserts the behaviour the core should have and names the seed, the options and what
went wrong, so it can be replayed from Python. A finding that still stands is marked xfail
(not strict: an XPASS means fixed or no longer reached; rescan with the test's SimOptions
before removing the mark); once it passes, the test stays as its regression.
"""

from __future__ import annotations

from conclave.sim.simulation import SimOptions, run_seed


# Found 2026-11 (seeds 586, 827, 1706): a joiner started without any configuration (no
# bootstrap ConfState) that catches up by log replay instead of a snapshot never got a
# configuration (the core refuses a change to an empty set, confchange.py), so it never
# campaigned; holding the longest log of the remaining voters, it blocked every election.
# The server never starts a joiner that way (it fetches the founding configuration from a
# member, node._join_existing). Rescanned 2026-12-02 with these options: 0 violations in seeds
# 0..599 and the three seeds pass, so the mark is gone; the test stays as the regression.
def test_a_joiner_without_bootstrap_configuration_does_not_block_elections() -> None:
    # The fault kinds are spelled out so that a new kind joining "all" does not move the seeds.
    kinds = frozenset({"partition", "crash", "drop", "dup", "reorder", "membership"})
    options = SimOptions(nodes=3, faults=kinds, joiners_know_bootstrap=False)
    failing = [seed for seed in (586, 827, 1706) if run_seed(seed, options).violation is not None]
    assert failing == []
