"""Every scenario of the lab, in the order `conclave lab list` shows them."""

from __future__ import annotations

from conclave.lab.scenario import LabError, Scenario
from conclave.lab.scenarios import quorum_race

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    quorum_race.SCENARIO,
)}


def scenario_named(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise LabError(f"unknown scenario {name!r}; `conclave lab list` shows them") from None
