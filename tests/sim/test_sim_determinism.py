"""One seed is one exact replay; different seeds explore different runs."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from conclave.sim.simulation import SimOptions, run_seed


def trace_of(seed: int, options: SimOptions) -> list[str]:
    lines: list[str] = []
    run_seed(seed, options, lines.append)
    return lines


def test_same_seed_gives_the_identical_trace() -> None:
    options = SimOptions(nodes=5, steps=1500)
    first = trace_of(11, options)
    assert len(first) > 1000
    assert trace_of(11, options) == first
    assert trace_of(12, options) != first


def test_replay_is_identical_across_processes_with_different_hash_seeds() -> None:
    """Set and dict order of str/bytes keys changes with PYTHONHASHSEED; the run must not."""
    code = (
        "import hashlib; from conclave.sim.simulation import SimOptions, run_seed; out=[]; "
        "run_seed(3, SimOptions(nodes=3, steps=1500), out.append); "
        "print(hashlib.sha256('\\n'.join(out).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"PYTHONHASHSEED": h}
        ).stdout.strip()
        for h in ("1", "2")
    }
    local = hashlib.sha256("\n".join(trace_of(3, SimOptions(nodes=3, steps=1500))).encode()).hexdigest()
    assert digests == {local}


def test_a_violation_names_its_seed_and_step_and_replays_to_the_same_step() -> None:
    options = SimOptions(nodes=3, fault_rule="vote_without_log_check")
    # The first violating seed of a small range (which one depends on the core's message flow).
    seed = next(s for s in range(10) if run_seed(s, options).violation is not None)
    first = run_seed(seed, options).violation
    again = run_seed(seed, options).violation
    assert first is not None and again is not None
    assert str(first) == str(again)
    assert str(first).startswith(f"seed {seed} step {first.step} ")
