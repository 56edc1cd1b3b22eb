"""`conclave up`: a local cluster in one command, stopped cleanly by Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conclave.api import pb
from conclave.server.launcher import port_open

from .conftest import Etcd, wait_for


def _free_offset() -> int:
    for off in range(10010, 12000, 130):
        ports = [b + off + k * 10000 for b in (2379, 2380, 2381) for k in (0, 2, 3)]
        if not any(port_open(p) for p in ports):
            return off
    raise RuntimeError("no free port offset")


def test_up_starts_three_members_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    off = _free_offset()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conclave", "up", "--nodes", "3", "--data-dir", str(tmp_path / "data"),
         "--port-offset", str(off), "--heartbeat-interval", "50", "--election-timeout", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        eps = [f"127.0.0.1:{p + off}" for p in (2379, 22379, 32379)]
        wait_for(lambda: all(port_open(int(e.split(":")[1])) for e in eps), 30, "the members")
        cl = Etcd(eps[0])
        wait_for(lambda: cl.put(b"up", b"works") is not None, 20, "a write")
        other = Etcd(eps[2])
        assert other.value(b"up") == b"works"
        assert len(other.cluster.MemberList(pb.MemberListRequest(), timeout=5).members) == 3
        cl.close()
        other.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    for i in (1, 2, 3):
        assert f"node{i} ready: clients http://127.0.0.1:" in out
    assert "cluster ready" in out and out.rstrip().endswith("stopped")
    time.sleep(0.2)
    assert not any(port_open(int(e.split(":")[1])) for e in eps), "members must be gone after Ctrl-C"


def test_up_refuses_bad_options(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "conclave", "up", "--nodes", "9"], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2 and "--nodes must be between 1 and 5" in done.stderr
    done = subprocess.run([sys.executable, "-m", "conclave", "up", "--port-offset", "3"], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2 and "multiple of 10" in done.stderr
