"""The search: agreement with a brute-force reference, property tests, limits, evidence."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from verify_histories import assert_evidence_valid, brute_force, op

from conclave.verify import checker
from conclave.verify.checker import Limits, Verdict, check_operations
from conclave.verify.history import Operation, Status
from conclave.verify.model import MODELS, REJECT, model_named
from conclave.verify.report import render_text

FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- small random histories against the brute-force reference ---------------------------------------------------

VALUES = st.sampled_from([None, 0, 1, 2])
STATUS = st.sampled_from([Status.OK, Status.OK, Status.OK, Status.FAIL, Status.INFO])


@st.composite
def random_ops(draw: st.DrawFn, model_name: str) -> list[Operation]:
    n = draw(st.integers(1, 9))
    ops = []
    for i in range(n):
        process = draw(st.integers(0, 3))
        call = draw(st.integers(0, 12))
        ret = call + draw(st.integers(0, 8))
        status = draw(STATUS)
        key = draw(st.sampled_from(["a", "b"])) if model_name == "kv" else None
        if model_name in ("register", "cas-register"):
            f = draw(st.sampled_from(["read", "write", "cas"] if model_name == "cas-register" else ["read", "write"]))
            inp = (draw(VALUES), draw(VALUES)) if f == "cas" else (draw(VALUES) if f == "write" else None)
            out = draw(VALUES) if f == "read" else None
        elif model_name == "kv":
            f = draw(st.sampled_from(["get", "put", "append", "delete", "cas"]))
            word = st.sampled_from(["", "x", "y", "xy", "yx"])
            arg = draw(st.sampled_from(["x", "y"]))
            inp = {"get": None, "delete": None, "cas": (draw(word), draw(word))}.get(f, arg)
            out = draw(word) if f == "get" else None
        elif model_name == "mutex":
            f = draw(st.sampled_from(["acquire", "release"]))
            inp, out = None, (draw(st.sampled_from([None, 1, 2, 3])) if f == "acquire" else None)
        elif model_name == "set":
            f = draw(st.sampled_from(["add", "read"]))
            inp = draw(st.integers(0, 2)) if f == "add" else None
            out = tuple(draw(st.sets(st.integers(0, 2)))) if f == "read" else None
        else:
            f = draw(st.sampled_from(["enqueue", "dequeue"]))
            inp = draw(st.integers(0, 2)) if f == "enqueue" else None
            out = draw(st.sampled_from([None, 0, 1, 2])) if f == "dequeue" else None
        ops.append(op(i, process, f, inp, out, status, call, ret, key))
    return ops


def _agrees(model_name: str, ops: list[Operation]) -> None:
    model = model_named(model_name)
    result = check_operations(ops, model)
    expected = brute_force(ops, model)
    assert result.verdict is (Verdict.LINEARIZABLE if expected else Verdict.NOT_LINEARIZABLE), ops
    for part in result.partitions:
        if part.verdict is not Verdict.UNKNOWN:
            assert_evidence_valid(part, model)


@FAST
@given(st.data())
def test_cas_register_agrees_with_brute_force(data: st.DataObject) -> None:
    _agrees("cas-register", data.draw(random_ops("cas-register")))


@FAST
@given(st.data())
def test_kv_agrees_with_brute_force(data: st.DataObject) -> None:
    _agrees("kv", data.draw(random_ops("kv")))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from(["cas-register", "kv", "mutex"]))
def test_compact_cache_keys_agree_with_brute_force(data: st.DataObject, name: str) -> None:
    """Long parts store (bits above the lowest gap, gap); force that form on small ones."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checker, "_COMPACT_FROM_OPS", 0)
        _agrees(name, data.draw(random_ops(name)))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from(["register", "set", "queue"]))
def test_other_models_agree_with_brute_force(data: st.DataObject, name: str) -> None:
    _agrees(name, data.draw(random_ops(name)))


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutex_agrees_with_brute_force(data: st.DataObject) -> None:
    _agrees("mutex", data.draw(random_ops("mutex")))


# --- sequential runs widened into overlapping intervals ----------------------------------------------------------


def sequential_run(model_name: str, rng: random.Random, n: int) -> list[Operation]:
    """Run the model one op at a time; op k takes effect at 10k + 5 and its interval contains that point."""
    model = MODELS[model_name]
    states: dict[Any, Any] = {}
    holder_ops: list[Operation] = []
    token = 0
    for k in range(n):
        key = rng.choice(["a", "b", "c"])
        state = states.get(key, model.init())
        process = rng.randrange(8)
        status = Status.OK
        inp: Any = None
        out: Any = None
        v = rng.randrange(6)
        if model_name in ("register", "cas-register"):
            f = rng.choice(["read", "write", "cas"] if model_name == "cas-register" else ["read", "write"])
            if f == "read":
                out = state
            elif f == "write":
                inp = v
            else:
                inp = (rng.choice([state, v]), rng.randrange(6))
                status = Status.OK if inp[0] == state else Status.FAIL
        elif model_name == "kv":
            f = rng.choice(["get", "put", "append", "append", "delete", "cas"])
            if f == "get":
                out = state
            elif f in ("put", "append"):
                inp = f"{k}."
            elif f == "cas":
                inp = (rng.choice([state, "zz"]), f"{k}!")
                status = Status.OK if inp[0] == state else Status.FAIL
        elif model_name == "set":
            f = rng.choice(["add", "read"])
            inp = v if f == "add" else None
            out = tuple(sorted(state)) if f == "read" else None
        elif model_name == "queue":
            f = rng.choice(["enqueue", "dequeue"])
            inp = v if f == "enqueue" else None
            out = (state[0] if state else None) if f == "dequeue" else None
        else:
            holder = state[0]
            if holder is None:
                f, token = "acquire", token + 1
                out = token
            else:
                f, process = "release", holder
        observes = f in ("read", "get", "dequeue") or model_name == "mutex"
        if status is Status.OK and not observes and rng.random() < 0.15:
            status = Status.INFO  # took effect at its point, but the client never heard back
        point = 10 * k + 5
        call = point - rng.randrange(0, 40)
        ret = point + rng.randrange(0, 40)
        o = op(k, process, f, inp, out, status, call, ret, key)
        new = model.step(state, o)
        assert new is not REJECT
        states[key] = new
        holder_ops.append(o)
    return holder_ops


MODEL_NAMES = st.sampled_from(sorted(MODELS))


@settings(max_examples=60, deadline=None)
@given(MODEL_NAMES, st.integers(0, 2**32), st.integers(1, 60))
def test_widened_sequential_runs_are_linearizable(name: str, seed: int, n: int) -> None:
    ops = sequential_run(name, random.Random(seed), n)
    result = check_operations(ops, MODELS[name])
    assert result.verdict is Verdict.LINEARIZABLE
    for part in result.partitions:
        assert_evidence_valid(part, MODELS[name])


def _corrupt_read(ops: list[Operation], rng: random.Random) -> list[Operation] | None:
    reads = [o for o in ops if o.f in ("read", "get", "dequeue") and o.status is Status.OK]
    if not reads:
        return None
    victim = rng.choice(reads)
    never = 999 if not isinstance(victim.output, tuple) else (*victim.output, 999)
    return [o if o is not victim else op(o.index, o.process, o.f, o.input, never, o.status, o.call, o.ret, o.key)
            for o in ops]


def _corrupt_cas(ops: list[Operation], rng: random.Random) -> list[Operation] | None:
    cases = [o for o in ops if o.f == "cas" and o.status is Status.OK]
    if not cases:
        return None
    victim = rng.choice(cases)
    wrong = (999, victim.input[1])
    return [o if o is not victim else op(o.index, o.process, o.f, wrong, o.output, o.status, o.call, o.ret, o.key)
            for o in ops]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["register", "cas-register", "kv", "set", "queue"]), st.integers(0, 2**32), st.integers(2, 50))
def test_a_corrupted_output_is_not_linearizable(name: str, seed: int, n: int) -> None:
    rng = random.Random(seed)
    ops = sequential_run(name, rng, n)
    for corrupt in (_corrupt_read, _corrupt_cas):
        bad = corrupt(ops, rng)
        if bad is not None:
            result = check_operations(bad, MODELS[name])
            assert result.verdict is Verdict.NOT_LINEARIZABLE
            for part in result.failing:
                assert_evidence_valid(part, MODELS[name])


@settings(max_examples=60, deadline=None)
@given(MODEL_NAMES, st.integers(0, 2**32), st.integers(1, 40), st.booleans())
def test_permuting_processes_keeps_the_verdict(name: str, seed: int, n: int, corrupt: bool) -> None:
    rng = random.Random(seed)
    ops = sequential_run(name, rng, n)
    if corrupt:
        ops = _corrupt_read(ops, rng) or ops
    labels = list(range(8))
    rng.shuffle(labels)
    permuted = [op(o.index, labels[o.process], o.f, o.input, o.output, o.status, o.call, o.ret, o.key) for o in ops]
    rng.shuffle(permuted)
    model = MODELS[name]
    assert check_operations(permuted, model).verdict is check_operations(ops, model).verdict


# --- limits, depth and evidence ----------------------------------------------------------------------------------


def hard_history(writers: int = 12) -> list[Operation]:
    """Concurrent writes, then a read of a value never written: the search must try every order."""
    ops = [op(i, i, "write", i, None, Status.OK, 0, 100) for i in range(writers)]
    ops.append(op(writers, 99, "read", None, 999, Status.OK, 101, 102))
    return ops


def test_timeout_gives_unknown() -> None:
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 3

    result = check_operations(hard_history(), model_named("register"), Limits(should_stop=should_stop))
    assert result.verdict is Verdict.UNKNOWN
    assert "time limit" in result.reason
    assert len(polls) == 4
    assert "gave up: the time limit was reached" in render_text(result, model_named("register"))


def test_memory_bound_gives_unknown_and_is_reported() -> None:
    result = check_operations(hard_history(), model_named("register"), Limits(memory_bytes_max=100_000))
    assert result.verdict is Verdict.UNKNOWN
    assert "memory bound of 0.0954 MiB" in result.reason
    assert 100_000 <= result.memory_bytes < 200_000
    assert "gave up: the memory bound" in render_text(result, model_named("register"))


def test_hard_history_finishes_without_limits() -> None:
    result = check_operations(hard_history(10), model_named("register"))
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.memory_bytes > 0 and result.configurations > 1000


def test_long_sequential_history_needs_no_recursion() -> None:
    ops = []
    for k in range(4000):
        ops.append(op(2 * k, 0, "write", k, None, Status.OK, 4 * k, 4 * k + 1))
        ops.append(op(2 * k + 1, 1, "read", None, k, Status.OK, 4 * k + 2, 4 * k + 3))
    result = check_operations(ops, model_named("register"))
    assert result.verdict is Verdict.LINEARIZABLE
    assert len(result.partitions[0].order) == 8000


def test_indeterminate_ops_may_take_effect_late_or_never() -> None:
    model = model_named("cas-register")
    ops = [
        op(0, 0, "write", 1, None, Status.INFO, 0),  # never heard back
        op(1, 1, "read", None, None, Status.OK, 1, 2),  # it had not happened yet
        op(2, 1, "read", None, 1, Status.OK, 3, 4),  # now it has
        op(3, 2, "write", 2, None, Status.INFO, 5),  # this one never happens
        op(4, 1, "read", None, 1, Status.OK, 6, 7),
    ]
    assert check_operations(ops, model).verdict is Verdict.LINEARIZABLE
    late_read = op(5, 1, "read", None, None, Status.OK, 8, 9)  # nil after 1: impossible
    result = check_operations([*ops, late_read], model)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    text = render_text(result, model)
    assert "read returned nil but the register holds" in text
    assert "It is the only candidate" in text


def test_failing_partition_is_named_and_others_are_unaffected() -> None:
    model = model_named("kv")
    ops = [
        op(0, 0, "put", "v", None, Status.OK, 0, 1, key="good"),
        op(1, 1, "get", None, "v", Status.OK, 2, 3, key="good"),
        op(2, 0, "put", "w", None, Status.OK, 4, 5, key="bad"),
        op(3, 1, "get", None, "nope", Status.OK, 6, 7, key="bad"),
    ]
    result = check_operations(ops, model)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    (failing,) = result.failing
    assert failing.key == "bad"
    assert [failing.operations[i].f for i in failing.order] == ["put"]
    (blocked,) = failing.blocked
    assert blocked.op.output == "nope" and not blocked.legal
    assert failing.deadline is not None and failing.deadline.output == "nope"
    text = render_text(result, model)
    assert 'key "bad" is NOT linearizable' in text
    assert 'get returned "nope" but the key holds "w"' in text
    good = next(p for p in result.partitions if p.key == "good")
    assert good.verdict in (Verdict.LINEARIZABLE, Verdict.UNKNOWN)


def test_identical_writes_are_not_interchangeable_when_one_returns_earlier() -> None:
    """Twins are only taken in order when the earlier-called one also returns no later."""
    ops = [
        op(0, 0, "write", 1, None, Status.OK, 0, 10),  # wide
        op(1, 1, "write", 1, None, Status.OK, 1, 3),  # narrow: must take effect before 3
        op(2, 2, "write", 2, None, Status.OK, 4, 5),
        op(3, 3, "read", None, 1, Status.OK, 6, 7),  # so the wide write(1) went after write(2)
    ]
    model = model_named("register")
    assert brute_force(ops, model)
    result = check_operations(ops, model)
    assert result.verdict is Verdict.LINEARIZABLE
    assert_evidence_valid(result.partitions[0], model)


def test_releases_by_different_processes_are_not_twins() -> None:
    """The mutex's step reads the process, so equal-looking releases of two processes differ."""
    ops = [
        op(0, 1, "acquire", None, 1, Status.OK, 0, 1),
        op(1, 2, "release", None, None, Status.OK, 2, 20),  # called and returns first...
        op(2, 1, "release", None, None, Status.OK, 3, 21),  # ...but this one must go first
        op(3, 2, "acquire", None, 2, Status.OK, 4, 10),
    ]
    model = model_named("mutex")
    assert brute_force(ops, model)
    assert check_operations(ops, model).verdict is Verdict.LINEARIZABLE
