"""`conclave up`: a local cluster in one command, stopped cleanly by Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
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
        # "cluster ready" comes once `up` itself has seen a leader (its own probe, a moment later)
        wait_for(lambda: any("cluster ready" in line for line in lines), 20, "up to say the cluster is ready")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
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


def test_up_says_promptly_which_member_died_and_how(tmp_path: Path) -> None:
    import queue
    import threading

    off = _free_offset()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conclave", "up", "--nodes", "1", "--data-dir", str(data), "--port-offset", str(off),
         "--heartbeat-interval", "50", "--election-timeout", "500", "--ready-timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in stdout], daemon=True)
    reader.start()
    seen: list[str] = []

    def wait_line(part: str, timeout_s: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            try:
                ln = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(ln)
            if part in ln:
                return time.monotonic() - start
        raise AssertionError(f"no line with {part!r} in {timeout_s}s; saw {seen}")

    try:
        wait_line("cluster ready", 40)
        time.sleep(2.5)  # longer than --ready-timeout: the old code then blamed "members not ready"
        member = next(int(p) for p in subprocess.run(["pgrep", "-f", f"serve --name node1 --data-dir {data}"],
                                                     capture_output=True, text=True).stdout.split())
        os.kill(member, signal.SIGKILL)
        took = wait_line("node1 was killed by SIGKILL", 5)
        assert took < 3, f"reported after {took:.1f}s"
        wait_line("restarting node1", 5)
        wait_line("all members ready again", 40)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(5)
    while not lines.empty():
        seen.append(lines.get())
    text = "".join(seen)
    assert "not ready" not in text and "not accepting clients" not in text, text
