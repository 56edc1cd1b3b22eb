"""The examples/ scripts run against a real cluster and do what they promise."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conclave.server.launcher import ProcessCluster

from .conftest import native_endpoints

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_fenced_lock_refuses_the_stale_holder(cluster: ProcessCluster, tmp_path: Path) -> None:
    r = run_example("fenced_lock.py", "--endpoints", ",".join(native_endpoints(cluster)),
                    "--file", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    assert "refused: token" in r.stdout and "written by B" in (tmp_path / "f.json").read_text()
    assert "Task was destroyed" not in r.stderr


def test_leader_election_fails_over_when_the_leader_is_killed(cluster: ProcessCluster) -> None:
    r = run_example("leader_election.py", "--demo", "--endpoints", ",".join(native_endpoints(cluster)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failover worked" in r.stdout


def test_config_watcher_follows_changes(cluster: ProcessCluster) -> None:
    eps = ",".join(native_endpoints(cluster))
    watcher = subprocess.Popen([sys.executable, str(EXAMPLES / "config_watcher.py"), "--endpoints", eps,
                                "--max-events", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    assert watcher.stdout.readline().startswith("config at revision")
    time.sleep(0.3)
    assert run_example("config_watcher.py", "--endpoints", eps, "--set", "timeout", "30").returncode == 0
    assert run_example("config_watcher.py", "--endpoints", eps, "--set", "retries", "5").returncode == 0
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "set timeout = '30'" in out and "set retries = '5'" in out
