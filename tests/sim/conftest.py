from __future__ import annotations

from collections.abc import Callable

import pytest

from conclave.sim.faults import describe_faults
from conclave.sim.simulation import SimOptions, run_seed

Failures = Callable[[range, SimOptions], list[str]]


def _failures(seeds: range, options: SimOptions) -> list[str]:
    """Run ``seeds``; describe each violation with the command that replays it."""
    out: list[str] = []
    for seed in seeds:
        result = run_seed(seed, options)
        if result.violation is not None:
            rule = f" --fault-rule {options.fault_rule}" if options.fault_rule else ""
            out.append(
                f"{result.violation}\n  replay: conclave sim --seed {seed} --nodes {options.nodes} "
                f"--faults {describe_faults(options.faults)} --steps {options.steps}{rule} --trace"
            )
    return out


@pytest.fixture
def failures() -> Failures:
    return _failures
