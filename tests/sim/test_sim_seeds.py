"""Many seeds of the real Raft core and the real state machine under every fault kind must
show no violation.

Budget: about 60 seeds of 3000 faulty-phase steps each (plus the quiet phase), split so
pytest shows where the time goes; a seed costs ~0.3-0.6 s now that every member runs the
MVCC store and the clients issue etcd requests. The full sweep (2000 seeds on 3 and on
5 nodes) is `conclave sim --seeds 2000`, run by hand (docs/simulator.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conclave.sim.faults import FAULT_KINDS
from conclave.sim.simulation import SimOptions

Failures = Callable[[range, SimOptions], list[str]]  # the fixture in conftest.py

BATCH = 10


@pytest.mark.parametrize("first", range(0, 30, BATCH))
def test_three_nodes_all_faults(first: int, failures: Failures) -> None:
    assert failures(range(first, first + BATCH), SimOptions(nodes=3)) == []


@pytest.mark.parametrize("first", range(0, 10, BATCH))
def test_five_nodes_all_faults(first: int, failures: Failures) -> None:
    assert failures(range(first, first + BATCH), SimOptions(nodes=5)) == []


def test_seven_nodes_all_faults(failures: Failures) -> None:
    assert failures(range(3), SimOptions(nodes=7)) == []


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_alone(kind: str, failures: Failures) -> None:
    assert failures(range(1000, 1002), SimOptions(nodes=3, faults=frozenset({kind}))) == []


def test_no_faults_makes_steady_progress() -> None:
    from conclave.sim.simulation import run_seed

    result = run_seed(5, SimOptions(nodes=3, faults=frozenset()))
    assert result.ok, result.violation
    assert result.leader_terms == 1  # nothing ever disturbs the first leader
    ops = result.ops
    assert ops.get("put_ok", 0) > 20 and ops.get("get_ok", 0) > 5 and ops.get("cas_ok", 0) > 5, ops
    for mechanism in ("watch_events", "keepalives", "compactions", "batches"):
        assert result.stats.get(mechanism, 0) > 0, (mechanism, result.stats)
