"""Every scenario of the lab, in the order `conclave lab list` shows them."""

from __future__ import annotations

from conclave.lab.scenario import LabError, Scenario
from conclave.lab.scenarios import (
    async_failover,
    cap_partition,
    election_timeouts,
    multi_leader,
    no_majority,
    quorum_race,
    sequence_numbers,
    serializable,
    split_brain_lock,
    stale_follower_read,
    tob_registers,
    two_pc,
    zombie_leader,
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    quorum_race.SCENARIO,
    async_failover.SCENARIO,
    multi_leader.SCENARIO,
    cap_partition.SCENARIO,
    stale_follower_read.SCENARIO,
    serializable.SCENARIO,
    sequence_numbers.SCENARIO,
    tob_registers.SCENARIO,
    split_brain_lock.SCENARIO,
    zombie_leader.SCENARIO,
    two_pc.SCENARIO,
    no_majority.SCENARIO,
    election_timeouts.SCENARIO,
)}


# Names the issue and the docs also use for one variant of a scenario.
ALIASES: dict[str, tuple[str, str]] = {"quorum-lww": ("quorum-race", "lww")}


def scenario_named(name: str) -> Scenario:
    try:
        return SCENARIOS[ALIASES[name][0] if name in ALIASES else name]
    except KeyError:
        raise LabError(f"unknown scenario {name!r}; `conclave lab list` shows them") from None
