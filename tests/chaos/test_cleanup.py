"""A crashed run's leftovers (namespaces, links, member processes, state) are removed; a live
run's are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conclave.chaos import netns

FAKE_MEMBER = [sys.executable, "-c", "import time; time.sleep(120)", "conclave", "serve"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _state(run: str, pid: int, members: list[int]) -> Path:
    # The real state dir, with fresh run ids, and cleanup limited to them: a cleanup that saw
    # every run would remove the runs of any chaos test running beside this one.
    netns.STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = netns.STATE_DIR / f"{run}.json"
    path.write_text(json.dumps({"run": run, "pid": pid, "mode": "proxy", "members": members}))
    return path


def _run_id() -> str:
    return os.urandom(2).hex()


def test_proxy_mode_leftovers_of_a_dead_run_are_killed() -> None:
    dead = subprocess.Popen(FAKE_MEMBER)
    live = subprocess.Popen(FAKE_MEMBER)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead_run, live_run = _run_id(), _run_id()
        dead_state = _state(dead_run, _dead_pid(), [dead.pid])
        live_state = _state(live_run, owner.pid, [live.pid])
        removed = netns.cleanup_leftovers(only={dead_run, live_run})
        assert f"process {dead.pid}" in removed
        assert dead.wait(timeout=10) != 0
        assert live.poll() is None, "a live run's member must be left alone"
        assert not dead_state.exists() and live_state.exists()
        live_state.unlink()
    finally:
        for p in (dead, live, owner):
            p.kill()
            p.wait()


def test_a_reused_pid_that_is_not_a_member_is_not_killed() -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = _run_id()
        _state(run, _dead_pid(), [other.pid])
        netns.cleanup_leftovers(only={run})
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(netns.available() is not None, reason=f"needs root, ip and nft: {netns.available()}")
def test_namespaces_of_a_crashed_run_are_removed() -> None:
    run = _run_id()
    net = netns.NetnsNetwork(run, 2)
    try:
        net.setup()
        member = subprocess.Popen(net.wrap(0, FAKE_MEMBER))
        # the harness "crashed": its state names a pid that is gone
        _state(run, _dead_pid(), [member.pid])
        removed = netns.cleanup_leftovers(only={run})
        assert f"netns {net.ns(0)}" in removed and f"netns {net.ns(1)}" in removed
        assert member.wait(timeout=10) != 0
        names = netns.sh("ip", "netns", "list").stdout
        links = netns.sh("ip", "-o", "link", "show").stdout
        assert net.ns(0) not in names and net.ns(1) not in names
        assert f"cv{run}n0" not in links and net.bridge not in links
    finally:
        net.teardown()
