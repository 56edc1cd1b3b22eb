"""One seed is one exact replay: the same seed gives the same history, byte for byte."""

from __future__ import annotations

import pytest

from conclave.lab.registry import SCENARIOS
from conclave.lab.render import render_text

SMALL = {"election-timeouts": {"duration": 600, "jitters": "0,300", "repeats": 1}}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_seed_same_history_bytes(name: str) -> None:
    s = SCENARIOS[name]
    for v in s.variants:
        a = s.run(7, v.name, **SMALL.get(name, {}))
        b = s.run(7, v.name, **SMALL.get(name, {}))
        assert a.history.encode() == b.history.encode()
        assert render_text(a) == render_text(b)


def test_seeds_differ() -> None:
    s = SCENARIOS["cap-partition"]
    assert len({s.run(seed, "cp").history for seed in range(3)}) == 3
