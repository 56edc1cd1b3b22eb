"""Many seeds of the real Raft core under every fault kind must show no violation.

Budget: about 730 seeds of 3000 faulty-phase steps each (plus the quiet phase), split
so pytest shows where the time goes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conclave.sim.faults import FAULT_KINDS
from conclave.sim.simulation import SimOptions

Failures = Callable[[range, SimOptions], list[str]]  # the fixture in conftest.py

BATCH = 50


@pytest.mark.parametrize("first", range(0, 400, BATCH))
def test_three_nodes_all_faults(first: int, failures: Failures) -> None:
    assert failures(range(first, first + BATCH), SimOptions(nodes=3)) == []


@pytest.mark.parametrize("first", range(0, 250, BATCH))
def test_five_nodes_all_faults(first: int, failures: Failures) -> None:
    assert failures(range(first, first + BATCH), SimOptions(nodes=5)) == []


def test_seven_nodes_all_faults(failures: Failures) -> None:
    assert failures(range(20), SimOptions(nodes=7)) == []


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_alone(kind: str, failures: Failures) -> None:
    assert failures(range(1000, 1010), SimOptions(nodes=3, faults=frozenset({kind}))) == []


def test_no_faults_makes_steady_progress() -> None:
    from conclave.sim.simulation import run_seed

    result = run_seed(5, SimOptions(nodes=3, faults=frozenset()))
    assert result.ok, result.violation
    assert result.leader_terms == 1  # nothing ever disturbs the first leader
    assert result.ops.get("write_ok", 0) > 20 and result.ops.get("read_ok", 0) > 5


@pytest.mark.parametrize(
    ("seed", "nodes", "why"),
    [
        (1132, 3, "a write acknowledged from a duplicate entry after a snapshot already held its value"),
    ],
)
def test_seeds_that_once_failed_for_a_simulator_bug(seed: int, nodes: int, why: str, failures: Failures) -> None:
    assert failures(range(seed, seed + 1), SimOptions(nodes=nodes)) == [], why
