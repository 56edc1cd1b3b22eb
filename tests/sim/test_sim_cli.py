"""`conclave sim` from the outside: exit status, the final line, replay commands, bad input."""

from __future__ import annotations

import subprocess
import sys


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conclave", "sim", *args], capture_output=True, text=True, timeout=180)


def test_clean_run_exits_zero_and_ends_with_the_summary_line() -> None:
    out = sim("--seeds", "4", "--start", "20", "--steps", "1000")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "4 seeds, 0 violations"


def test_a_broken_rule_exits_one_and_prints_a_replay_command() -> None:
    out = sim("--seeds", "3", "--nodes", "3", "--fault-rule", "vote_without_log_check")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("3 seeds, ") and not lines[-1].endswith(" 0 violations")
    replay = next(line for line in lines if "replay:" in line).split("replay: ", 1)[1]
    assert replay.startswith("conclave sim --seed ") and "--fault-rule vote_without_log_check --trace" in replay
    # The printed command replays the same violation.
    traced = sim(*replay.split()[2:])
    assert traced.returncode == 1
    first_fail = next(line for line in lines if line.startswith("FAIL "))
    assert first_fail in traced.stdout.splitlines()


def test_trace_of_one_seed_shows_messages_roles_and_commits() -> None:
    out = sim("--seed", "2", "--trace")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("send APP", "recv VOTE", "becomes LEADER", "commits up to", "applied up to", "CRASH", "quiet:"):
        assert needle in text
    assert text.splitlines()[-1] == "1 seeds, 0 violations"


def test_bad_input_is_a_clear_error_not_a_traceback() -> None:
    for args, needle in (
        (("--faults", "partition,bogus"), "unknown fault kind 'bogus'"),
        (("--nodes", "4"), "invalid choice: 4"),
        (("--trace",), "--trace needs --seed"),
        (("--seeds", "0"), "--seeds must be at least 1"),
        (("--steps", "0"), "--steps must be at least 1"),
        (("--fault-rule", "nope"), "invalid choice: 'nope'"),
    ):
        out = sim(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr


def test_help_lists_every_option() -> None:
    out = sim("--help")
    for option in ("--seeds", "--start", "--seed", "--nodes", "--faults", "--steps", "--fault-rule", "--trace"):
        assert option in out.stdout
