"""Bugs the simulator found in the Raft core that are not fixed yet, as reproductions.

Each test asserts the behaviour the core should have and is marked xfail while the bug
stands; it names the seed, the options and what goes wrong, so the core's authors can
replay it from Python. The marks are not strict because the core is still changing
under other hands: an XPASS means the bug is fixed or the seeds no longer reach it
(rescan with SimOptions as in the test before removing the mark).
"""

from __future__ import annotations

import pytest

from conclave.sim.simulation import SimOptions, run_seed


@pytest.mark.xfail(
    reason=(
        "raft core: a joiner started without any configuration (no bootstrap ConfState) that "
        "catches up by log replay instead of a snapshot never gets a configuration: every conf "
        "change fails on the empty set, its own compactions record an empty conf, and it never "
        "campaigns. When it holds the longest log of the remaining voters, no leader can ever be "
        "elected. Seed 586: voters {2,3,4}, node 2 removed, node 3 behind node 4, node 4 conf []."
    ),
    raises=AssertionError,
    strict=False,
)
def test_a_joiner_without_bootstrap_configuration_does_not_block_elections() -> None:
    # The fault kinds are spelled out so that a new kind joining "all" does not move the seeds.
    kinds = frozenset({"partition", "crash", "drop", "dup", "reorder", "membership"})
    options = SimOptions(nodes=3, faults=kinds, joiners_know_bootstrap=False)
    failing = [seed for seed in (586, 827, 1706) if run_seed(seed, options).violation is not None]
    assert failing == []
