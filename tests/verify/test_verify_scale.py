"""Large histories: windows, indeterminate writes, real limits, and the synthetic chaos-like histories.

Soundness first: every reduction is cross-checked against the brute-force reference and the plain
search (no windows, no rewriting of indeterminate writes) on many small random histories built so
that the reductions apply (values written once), with windows forced as small as they can be.
"""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_verify_checker import random_ops
from verify_histories import assert_evidence_valid, brute_force, op

from conclave.verify.checker import Limits, Verdict, check_operations
from conclave.verify.formats import dump_json_lines
from conclave.verify.history import Operation, Status, build_history
from conclave.verify.model import REJECT, UNOBSERVED, model_named
from conclave.verify.report import render_text
from conclave.verify.synth import chaos_history

PLAIN = Limits(windows=False, indeterminate=False)
TIGHT = Limits(window_ops_min=1, windows_from_ops=0)  # cut wherever possible


# --- random small histories with values written once --------------------------------------------------------------


@st.composite
def unique_ops(draw: st.DrawFn, model_name: str) -> list[Operation]:
    """Writes and cas of fresh values; reads and compares of any written value (or nil); some info."""
    n = draw(st.integers(1, 10))
    ops: list[Operation] = []
    written: list[Any] = [None]
    t = 0
    for i in range(n):
        t += draw(st.integers(0, 3))
        call = t
        ret = call + draw(st.integers(0, 6))
        status = draw(st.sampled_from([Status.OK, Status.OK, Status.OK, Status.FAIL, Status.INFO, Status.INFO]))
        fs = ["read", "write", "cas"] if model_name == "cas-register" else ["read", "write"]
        f = draw(st.sampled_from(fs))
        inp: Any = None
        out: Any = None
        if f == "read":
            out = draw(st.sampled_from([*written, 100 + i]))  # now and then a value nobody wrote
            if status is Status.FAIL:
                status = Status.OK
        elif f == "write":
            inp = i + 1
            written.append(inp)
            if status is Status.FAIL:
                status = Status.OK
        else:
            inp = (draw(st.sampled_from([*written, 200 + i])), i + 1)
            written.append(i + 1)
        ops.append(op(i, draw(st.integers(0, 4)), f, inp, out, status, call, ret))
    return ops


def _cross_check(model_name: str, ops: list[Operation]) -> None:
    model = model_named(model_name)
    expected = brute_force(ops, model)
    for limits in (PLAIN, TIGHT, Limits()):
        result = check_operations(ops, model, limits)
        assert result.verdict is (Verdict.LINEARIZABLE if expected else Verdict.NOT_LINEARIZABLE), (limits, ops)
        for part in result.partitions:
            assert_evidence_valid(part, model)


FAST = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.data())
def test_unique_cas_register_reductions_agree_with_brute_force(data: st.DataObject) -> None:
    _cross_check("cas-register", data.draw(unique_ops("cas-register")))


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_unique_register_reductions_agree_with_brute_force(data: st.DataObject) -> None:
    _cross_check("register", data.draw(unique_ops("register")))


def test_a_lost_update_hidden_behind_an_unobserved_write_is_not_excused() -> None:
    """A failed cas may be explained only by a timed-out write nobody read: kept as a ghost, not dropped."""
    model = model_named("cas-register")
    base = [
        op(0, 0, "write", 1, None, Status.OK, 0, 1),
        op(1, 1, "write", 2, None, Status.INFO, 2),  # timed out; nobody reads 2
        op(2, 2, "cas", (1, 3), None, Status.FAIL, 3, 4),  # the value was not 1: only write(2) explains it
    ]
    for limits in (PLAIN, TIGHT):
        result = check_operations(base, model, limits)
        assert result.verdict is Verdict.LINEARIZABLE
        assert_evidence_valid(result.partitions[0], model)
    # The same failure with the timed-out write called too late to explain it.
    late = [base[0], op(1, 1, "write", 2, None, Status.INFO, 5), base[2]]
    for limits in (PLAIN, TIGHT):
        assert check_operations(late, model, limits).verdict is Verdict.NOT_LINEARIZABLE
    # One ghost cannot explain two failures separated by a write.
    again = [
        *base,
        op(3, 0, "write", 5, None, Status.OK, 5, 6),
        op(4, 2, "cas", (5, 6), None, Status.FAIL, 7, 8),  # not 5: needs a second ghost
    ]
    assert brute_force(again, model) is False
    assert check_operations(again, model, TIGHT).verdict is Verdict.NOT_LINEARIZABLE
    two_ghosts = [*again, op(5, 3, "write", 7, None, Status.INFO, 6)]
    assert brute_force(two_ghosts, model) is True
    assert check_operations(two_ghosts, model, TIGHT).verdict is Verdict.LINEARIZABLE
    # Both ghosts called before the first window: the first uses one, the next window the other.
    early = [*again, op(5, 3, "write", 7, None, Status.INFO, 0)]
    assert brute_force(early, model) is True
    result = check_operations(early, model, TIGHT)
    assert result.verdict is Verdict.LINEARIZABLE and result.partitions[0].windows > 1
    assert_evidence_valid(result.partitions[0], model)


def test_an_observed_timed_out_write_must_precede_its_first_reader() -> None:
    model = model_named("register")
    ops = [
        op(0, 0, "write", 1, None, Status.INFO, 0),
        op(1, 1, "read", None, 1, Status.OK, 10, 11),  # so write(1) happened before 11
        op(2, 2, "write", 2, None, Status.OK, 12, 13),
        op(3, 1, "read", None, 1, Status.OK, 14, 15),  # 1 again after write(2) returned: impossible
    ]
    result = check_operations(ops, model, TIGHT)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.partitions[0].bounded == 1
    assert check_operations(ops[:3], model, TIGHT).verdict is Verdict.LINEARIZABLE


# --- windows --------------------------------------------------------------------------------------------------------


def test_windows_carry_every_possible_state_across_the_cut() -> None:
    """Two concurrent writes end a window in either order; the next window needs the less obvious one."""
    model = model_named("register")
    ops = [
        op(0, 0, "write", 1, None, Status.OK, 0, 10),
        op(1, 1, "write", 2, None, Status.OK, 1, 9),
        op(2, 0, "read", None, 1, Status.OK, 20, 21),  # after the cut at 10 < t < 20: write(1) went last
    ]
    result = check_operations(ops, model, TIGHT)
    assert result.verdict is Verdict.LINEARIZABLE
    part = result.partitions[0]
    assert part.windows == 2
    assert_evidence_valid(part, model)
    bad = [*ops, op(3, 1, "read", None, 2, Status.OK, 30, 31)]
    result = check_operations(bad, model, TIGHT)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    failing = result.failing[0]
    assert failing.window == (30, 31)
    assert failing.entry_states == (1,)
    assert [o.output for o in failing.operations] == [2]
    assert_evidence_valid(failing, model)
    assert "The failing window has 1 operations" in render_text(result, model)


def sequential_unique(rng: random.Random, n: int, info: float) -> list[Operation]:
    """A cas-register run one op at a time, values written once, intervals widened around each point."""
    ops = []
    state: Any = None
    reads: list[Any] = [None]
    for k in range(n):
        point = 10 * k + 5
        call, ret = point - rng.randrange(0, 30), point + rng.randrange(0, 30)
        f = rng.choice(["read", "read", "write", "cas"])
        status = Status.OK
        inp: Any = None
        out: Any = None
        if f == "read":
            out = state
            reads.append(state)
        elif f == "write":
            inp = k + 1
        else:
            inp = (rng.choice([state, rng.choice(reads)]), k + 1)
            status = Status.OK if inp[0] == state else Status.FAIL
        if f != "read" and status is Status.OK and rng.random() < info:
            status = Status.INFO
            if rng.random() < 0.5:  # timed out and never applied
                ops.append(op(k, k % 7, f, inp, None, status, call))
                continue
        o = op(k, k % 7, f, inp, out, status, call, ret)
        state = model_named("cas-register").step(state, o)
        assert state is not REJECT
        ops.append(o)
    return ops


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.integers(5, 120), st.sampled_from([0.0, 0.1, 0.3]))
def test_widened_unique_runs_agree_with_the_plain_search(seed: int, n: int, info: float) -> None:
    rng = random.Random(seed)
    ops = sequential_unique(rng, n, info)
    model = model_named("cas-register")
    assert check_operations(ops, model, TIGHT).verdict is Verdict.LINEARIZABLE
    reads = [o for o in ops if o.f == "read" and o.status is Status.OK and o.index > 2]
    if reads:
        victim = rng.choice(reads)
        bad = [o if o is not victim else op(o.index, o.process, "read", None, 10_000, Status.OK, o.call, o.ret)
               for o in ops]
        for limits in (TIGHT, Limits(), PLAIN):
            result = check_operations(bad, model, limits)
            assert result.verdict is Verdict.NOT_LINEARIZABLE
            for part in result.failing:
                assert_evidence_valid(part, model)


# --- the synthetic chaos-like histories -----------------------------------------------------------------------------


def _ops(seed: int, **kw: Any) -> list[Operation]:
    return list(build_history(chaos_history(random.Random(seed), **kw), "synth", "json").operations)


def test_synthetic_histories_are_deterministic_and_shaped_like_the_issue() -> None:
    a = chaos_history(random.Random(7), duration=30)
    assert dump_json_lines(a) == dump_json_lines(chaos_history(random.Random(7), duration=30))
    assert dump_json_lines(a) != dump_json_lines(chaos_history(random.Random(8), duration=30))
    ops = build_history(a, "synth", "json").operations
    per_key = {o.key for o in ops}
    assert per_key == {f"k{i}" for i in range(5)}
    n = len(ops) / 5
    assert 2_000 < n < 3_500  # about 16,000 per key for 180 s
    info = sum(o.status is Status.INFO for o in ops) / len(ops)
    assert 0.001 < info < 0.02
    assert {o.f for o in ops} == {"read", "write", "cas"}


@pytest.mark.parametrize("seed", [1, 2])
def test_synthetic_histories_are_decided(seed: int) -> None:
    model = model_named("cas-register")
    ok = check_operations(_ops(seed, duration=8, keys=2), model, Limits(stop_at_first_failure=False))
    assert ok.verdict is Verdict.LINEARIZABLE
    assert all(p.windows > 5 for p in ok.partitions)
    for part in ok.partitions:
        assert_evidence_valid(part, model)
    bad = check_operations(_ops(seed, duration=8, keys=2, anomaly=True), model, Limits(stop_at_first_failure=False))
    assert bad.verdict is Verdict.NOT_LINEARIZABLE
    (failing,) = bad.failing
    assert failing.window is not None and len(failing.operations) < len(_ops(seed, duration=8, keys=2)) / 4
    assert_evidence_valid(failing, model)
    assert any("read returned" in b.reason for b in failing.blocked)
    assert sum(p.verdict is Verdict.LINEARIZABLE for p in bad.partitions) == 1


def test_ghost_states_never_leak_into_a_linearizable_result() -> None:
    model = model_named("cas-register")
    result = check_operations(_ops(4, duration=10, keys=1, timeouts=0.02, applied=0.5), model)
    assert result.verdict is Verdict.LINEARIZABLE
    assert UNOBSERVED not in result.partitions[0].states


# --- limits on a history built to explode ---------------------------------------------------------------------------


def exploding(writers: int) -> list[Operation]:
    """Concurrent writes, then a read of a value never written: every subset of writes is a configuration."""
    ops = [op(i, i, "write", i + 1, None, Status.OK, 0, 100) for i in range(writers)]
    ops.append(op(writers, 99, "read", None, 999, Status.OK, 101, 102))
    return ops


def test_the_memory_bound_holds_for_the_real_allocation() -> None:
    bound = 6 << 20
    tracemalloc.start()
    try:
        result = check_operations(exploding(18), model_named("register"), Limits(memory_bytes_max=bound))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.verdict is Verdict.UNKNOWN
    assert "memory bound of 6 MiB was reached" in result.reason
    assert bound <= result.memory_bytes < bound + (1 << 20)
    assert peak < bound * 1.2  # the estimate runs ahead of what is really allocated


def test_the_time_limit_stops_an_exploding_search() -> None:
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) >= 50

    result = check_operations(exploding(20), model_named("register"), Limits(should_stop=should_stop))
    assert result.verdict is Verdict.UNKNOWN and "time limit" in result.reason
    assert len(polls) == 50
    assert result.configurations <= 51 * 64


def test_small_windows_still_poll_the_deadline() -> None:
    """A partition of many tiny windows yields to the scheduler across windows, not only inside one."""
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return False

    ops = []
    for k in range(3000):
        ops.append(op(2 * k, 0, "write", k + 1, None, Status.OK, 4 * k, 4 * k + 1))
        ops.append(op(2 * k + 1, 1, "read", None, k + 1, Status.OK, 4 * k + 2, 4 * k + 3))
    limits = Limits(should_stop=should_stop, window_ops_min=1, windows_from_ops=0)
    result = check_operations(ops, model_named("register"), limits)
    assert result.verdict is Verdict.LINEARIZABLE
    assert result.partitions[0].windows == 6000
    assert len(polls) >= 6000 // 64 - 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["kv", "mutex", "set", "queue", "register", "cas-register"]))
def test_windows_agree_with_brute_force_for_every_model(data: st.DataObject, name: str) -> None:
    """Cuts and carried state sets on the general random histories (values repeat: no ghosts)."""
    ops = data.draw(random_ops(name))
    model = model_named(name)
    result = check_operations(ops, model, TIGHT)
    assert result.verdict is (Verdict.LINEARIZABLE if brute_force(ops, model) else Verdict.NOT_LINEARIZABLE), ops
    for part in result.partitions:
        assert_evidence_valid(part, model)
