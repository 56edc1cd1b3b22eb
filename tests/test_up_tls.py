"""`conclave up --tls`: a local cluster with TLS on every port, reached by etcdctl with the flags it prints."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conclave.server.launcher import port_open

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(ETCDCTL is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")


def _free_offset() -> int:
    for off in range(10020, 12000, 170):
        ports = [b + off + k * 10000 for b in (2379, 2380, 2381) for k in (0, 2, 3)]
        if not any(port_open(p) for p in ports):
            return off
    raise RuntimeError("no free port offset")


def test_up_tls_prints_etcdctl_flags_that_work(tmp_path: Path) -> None:
    assert ETCDCTL is not None
    off = _free_offset()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conclave", "up", "--tls", "--data-dir", str(data), "--port-offset", str(off),
         "--heartbeat-interval", "50", "--election-timeout", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(ln) for ln in stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        ready = ""
        while not ready and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if line.startswith("cluster ready; try: etcdctl "):
                ready = line
        assert ready, "".join(seen)
        m = re.search(r"etcdctl (.*) put foo bar", ready)
        assert m is not None, ready
        flags = m.group(1).split()
        assert any(f.startswith("--endpoints=https://") for f in flags), flags
        for f in ("--cacert=", "--cert=", "--key="):
            assert any(x.startswith(f) for x in flags), flags
        env = {**os.environ, "ETCDCTL_API": "3"}

        def ctl(*args: str, use: list[str] = flags) -> subprocess.CompletedProcess[str]:
            return subprocess.run([ETCDCTL, *use, "--dial-timeout=3s", "--command-timeout=5s", *args],
                                  capture_output=True, text=True, timeout=30, env=env)  # fmt: skip

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ctl("put", "foo", "bar").returncode != 0:
            time.sleep(0.3)
        got = ctl("get", "foo", "--print-value-only")
        assert got.returncode == 0 and got.stdout.strip() == "bar", got.stdout + got.stderr
        status = ctl("endpoint", "status")
        assert status.returncode == 0 and status.stdout.count("https://127.0.0.1:") == 3, status.stdout
        # Without the client certificate the cluster refuses (mutual TLS on the client port).
        no_cert = [f for f in flags if not f.startswith(("--cert=", "--key="))]
        assert ctl("get", "foo", use=no_cert).returncode != 0
        assert (data / "tls" / "ca.pem").is_file() and (data / "tls" / "node1-key.pem").stat().st_mode & 0o077 == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited: the assertion above says why
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(seen)
    assert any("node1 ready: clients https://127.0.0.1:" in ln for ln in seen), seen
