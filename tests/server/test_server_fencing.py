"""The fencing-token demo of docs/fencing.md, run against a real cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, wait_for

DEMO = Path(__file__).resolve().parents[2] / "examples" / "fencing_demo.py"


def test_stale_holder_is_fenced_off(cluster_factory: Callable[..., ProcessCluster]) -> None:
    c = cluster_factory(3)
    cl = Etcd(c.endpoints[0])
    wait_for(lambda: cl.put(b"warm", b"up") is not None, 20, "first write")
    cl.close()
    done = subprocess.run([sys.executable, str(DEMO), "--endpoint", c.endpoints[1]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # Without fencing the paused holder's write is accepted and B's update is lost ...
    assert "accepted A's write 'written by A (stale)'" in out
    # ... with fencing it is rejected because its token is lower.
    assert "REJECTED A's write" in out
    assert "without fencing B's update was LOST; with fencing it was kept" in out
