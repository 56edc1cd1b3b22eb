"""Every scenario's verdict for 20 seeds: the anomaly appears where it must, fixed variants always pass."""

from __future__ import annotations

from typing import Any

import pytest

from conclave.lab.registry import SCENARIOS
from conclave.lab.scenario import LabError

SEEDS = range(20)
# The sweep is long by default; its verdict (safety) is checked on short runs.
SMALL: dict[str, dict[str, Any]] = {"election-timeouts": {"duration": 600, "jitters": "0,300", "repeats": 1}}
CASES = [(s.name, v.name) for s in SCENARIOS.values() for v in s.variants]
# Variants that must lose at least one acknowledged write, and their fixed counterparts that never do.
LOSES = {("quorum-race", "lww"), ("async-failover", "async"), ("multi-leader", "lww"), ("cap-partition", "ap"),
         ("split-brain-lock", "lease-only")}
KEEPS = {("quorum-race", "read-repair"), ("async-failover", "sync"), ("cap-partition", "cp"),
         ("split-brain-lock", "fencing"), ("zombie-leader", "check-quorum"), ("zombie-leader", "no-check-quorum")}


def test_thirteen_scenarios_each_with_a_story_and_variants() -> None:
    assert len(SCENARIOS) == 13
    for s in SCENARIOS.values():
        assert s.variants and s.summary and s.concept


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_verdict_for_twenty_seeds(name: str, variant: str) -> None:
    s = SCENARIOS[name]
    for seed in SEEDS:
        out = s.run(seed, variant, **SMALL.get(name, {}))
        assert out.verdict == s.variant(variant).expected, (seed, out.verdict, out.explanation)
        assert out.story.count(". ") >= 1 and out.story.endswith("."), out.story
        assert out.explanation.strip(), "every verdict comes with its explanation"
        if (name, variant) in LOSES:
            assert out.counts["lost writes"] >= 1, (seed, out.counts)
        if (name, variant) in KEEPS:
            assert out.counts["lost writes"] == 0, (seed, out.counts)
        if "election safety" in out.counts:
            assert out.counts["election safety"] is True


def test_counts_tell_the_story() -> None:
    stale = SCENARIOS["stale-follower-read"]
    assert stale.run(1, "local").counts["stale reads"] > 0
    assert stale.run(1, "read-index").counts["stale reads"] == 0
    zombie = SCENARIOS["zombie-leader"].run(1, "no-check-quorum").counts
    assert zombie["zombie entries appended"] >= 1 and zombie["zombie writes acknowledged"] == 0
    assert zombie["new term"] > zombie["old term"]
    cap = SCENARIOS["cap-partition"].run(1, "cp").counts
    assert cap["availability site B (cut)"].startswith("0/")  # the minority refuses
    assert not cap["availability site A (cut)"].startswith("0/")  # the majority serves
    two = SCENARIOS["2pc-coordinator-crash"]
    assert two.run(1, "blocked").counts["locks held at end"] == 2
    slow = two.run(1, "recover", recover_after=300).counts
    assert 300 <= slow["in doubt ms n2"] < 400
    assert SCENARIOS["no-majority"].run(1, "raft-two-down").counts["ok after the crash"] == 0
    assert SCENARIOS["no-majority"].run(1, "raft-one-down").counts["ok after the crash"] > 0


def test_the_sweep_shows_availability_collapsing() -> None:
    out = SCENARIOS["election-timeouts"].run(1, duration=1500, jitters="0,300", repeats=1)
    assert out.sweep is not None
    calm, wild = out.sweep
    assert calm["unavailable %"] < 20 < wild["unavailable %"]
    assert calm["writes/s"] > wild["writes/s"]


def test_bad_variant_and_option_are_clear_errors() -> None:
    with pytest.raises(LabError, match="has no variant 'nope'"):
        SCENARIOS["quorum-race"].run(1, "nope")
    with pytest.raises(LabError, match="takes no option"):
        SCENARIOS["quorum-race"].run(1, recover_after=5)
