"""What a scenario is: a name, a one-line summary, its variants with their expected verdicts, a runner.

Theory of operation. A scenario module builds a ``Scenario`` whose ``run(seed, variant, options)``
sets up a ``Lab`` (``conclave.lab.core``), plays its story on virtual time and returns an
``Outcome``. The first variant is the default. ``options`` carries the few numeric knobs a
scenario takes (``recover_after`` of 2pc-coordinator-crash, the sweep's duration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conclave.lab.core import Outcome


class LabError(Exception):
    """A request the lab cannot serve: an unknown scenario or variant, a bad option."""


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    expected: str
    summary: str


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    concept: str
    variants: tuple[Variant, ...]
    runner: Callable[[int, str, dict[str, Any]], Outcome]
    options: dict[str, Any] = field(default_factory=dict)  # option -> default

    def variant(self, name: str | None) -> Variant:
        if name is None:
            return self.variants[0]
        for v in self.variants:
            if v.name == name:
                return v
        raise LabError(f"scenario {self.name!r} has no variant {name!r}; "
                       f"choose one of {', '.join(v.name for v in self.variants)}")

    def run(self, seed: int = 1, variant: str | None = None, **options: Any) -> Outcome:
        v = self.variant(variant)
        unknown = set(options) - set(self.options)
        if unknown:
            raise LabError(f"scenario {self.name!r} takes no option {', '.join(sorted(unknown))}")
        opts = dict(self.options, **{k: val for k, val in options.items() if val is not None})
        out = self.runner(seed, v.name, opts)
        out.expected = v.expected
        return out
