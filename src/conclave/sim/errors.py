"""The simulator's exception hierarchy.

``InvariantBroken`` is raised by a checker at the point where a rule of Raft or of
linearizability is broken; the simulation catches it and turns it into a
``Violation``, which also names the seed and the step so the run can be replayed.
``SetupError`` is bad input (an unknown fault kind, an unsupported cluster size).
"""

from __future__ import annotations


class SimError(Exception):
    """Base of every simulator failure."""


class SetupError(SimError):
    """The simulation was asked for something it cannot do."""


class InvariantBroken(SimError):
    """A checked property does not hold. ``rule`` is a short stable name."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


class Violation(SimError):
    """An ``InvariantBroken`` located in one run: which seed, which step, what time."""

    def __init__(self, seed: int, step: int, time_ms: int, rule: str, detail: str) -> None:
        super().__init__(f"seed {seed} step {step} (t={time_ms}ms): {rule}: {detail}")
        self.seed = seed
        self.step = step
        self.time_ms = time_ms
        self.rule = rule
        self.detail = detail
