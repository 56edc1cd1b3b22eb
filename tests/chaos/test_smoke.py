"""The chaos smoke: `conclave chaos` end to end on real members (3 nodes, kill + pause + partition,
register workload), and the proxy mode (the fallback for runs that are not root) in brief.

Each must come out valid: linearizable per key, no acknowledged write lost, every fault injected
and healed, a write acknowledged soon after the final heal; and its outputs must be there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conclave.chaos import netns

REPO = Path(__file__).resolve().parents[2]


def _chaos(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conclave", "chaos", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _assert_valid_run(done: subprocess.CompletedProcess[str], out: Path, faults_min: int) -> dict[str, object]:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "valid"
    assert summary["lost_acknowledged_writes"] == 0
    assert summary["faults_injected"] >= faults_min, summary["faults"]
    assert summary["ok"] > 200, summary
    assert all(f["end"] is not None for f in summary["faults"])
    assert summary["recovery_after_final_heal_s"] is not None
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) >= 2 * int(summary["ops"])  # an invoke and a completion per op
    # the history is the checker's format: `conclave check` reads it and agrees
    check = subprocess.run([sys.executable, "-m", "conclave", "check", "--model", "cas-register",
                            str(out / "history.jsonl")], capture_output=True, text=True, timeout=200)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    page = (out / "report.html").read_text()
    assert "<svg" in page and "valid" in page and "srcdoc=" in page
    assert "fault" in done.stdout and "ops ok" in done.stdout
    return summary


def test_smoke_kill_pause_partition_register(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _chaos(out, "--time", "42", "--interval", "9", "--nodes", "3", "--nemesis", "kill,pause,partition",
                  "--workload", "register", "--seed", "12", "--quiet", "6", timeout=280)
    summary = _assert_valid_run(done, out, 3)
    kinds = {str(f["kind"]).split("-")[0] for f in summary["faults"]}  # type: ignore[union-attr]
    assert kinds & {"kill", "pause", "isolate", "halves", "ring", "one"}
    assert {p.name for p in out.glob("n*.log")} == {"n0.log", "n1.log", "n2.log"}
    expected_mode = "netns" if netns.available() is None else "proxy"
    assert summary["mode"] == expected_mode
    if expected_mode == "netns":
        # everything the run made is gone
        assert f"{netns.NS_PREFIX}{summary['run_id']}-" not in netns.sh("ip", "netns", "list").stdout
        assert f"cvb{summary['run_id']}" not in netns.sh("ip", "-o", "link", "show").stdout
    assert not (netns.STATE_DIR / f"{summary['run_id']}.json").exists()


def test_smoke_proxy_mode(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _chaos(out, "--time", "16", "--interval", "5", "--nemesis", "kill,partition", "--mode", "proxy",
                  "--seed", "5", "--quiet", "4", "--clients", "6", timeout=200)
    summary = _assert_valid_run(done, out, 2)
    assert summary["mode"] == "proxy"


@pytest.mark.parametrize("args", [["--nemesis", "bogus"], ["--time", "0"]])
def test_bad_arguments_are_refused_clearly(tmp_path: Path, args: list[str]) -> None:
    done = _chaos(tmp_path / "x", *args, timeout=30)
    assert done.returncode == 2
    assert "conclave chaos:" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_heals_and_removes_everything(tmp_path: Path) -> None:
    """SIGINT in the middle of a fault: the run stops, and nothing of it is left behind."""
    import re
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "conclave", "chaos", "--time", "60", "--interval", "4",
                             "--nemesis", "partition,pause", "--seed", "3", "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "fault " in line:
            break
    run = re.search(r"^run ([0-9a-f]{4}):", "".join(lines), re.M)
    assert run is not None and any("fault " in ln for ln in lines), "".join(lines)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, "".join(lines) + rest  # interrupted: undecided, never "valid"
    assert "interrupted" in rest
    run_id = run.group(1)
    if netns.available() is None:
        assert f"{netns.NS_PREFIX}{run_id}-" not in netns.sh("ip", "netns", "list").stdout
        assert f"cvb{run_id}" not in netns.sh("ip", "-o", "link", "show").stdout
    assert not (netns.STATE_DIR / f"{run_id}.json").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted"] is True
    serving = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "run" / "members") not in serving, "a member of the interrupted run still runs"
