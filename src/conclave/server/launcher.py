"""Start and stop a cluster of real ``conclave serve`` processes on 127.0.0.1.

Used by the integration tests, the benchmarks and fault injection: every member is a
child process on free ports, with its own data dir; members can be killed (SIGKILL),
paused (SIGSTOP/SIGCONT), stopped gracefully and restarted on the same ports and data.
Also starts real etcd (``/usr/bin/etcd``) clusters the same way, for side-by-side runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ProcessMember:
    name: str
    client_port: int
    peer_port: int
    native_port: int
    data_dir: Path
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    peer_scheme: str = "http"
    client_scheme: str = "http"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def native_endpoint(self) -> str:
        return f"127.0.0.1:{self.native_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.peer_scheme}://127.0.0.1:{self.peer_port}"

    @property
    def client_url(self) -> str:
        return f"{self.client_scheme}://127.0.0.1:{self.client_port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if not self.alive():
            return None if self.proc is None else self.proc.returncode
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class ProcessCluster:
    """N members of Conclave (``kind="conclave"``) or of real etcd (``kind="etcd"``)."""

    root: Path
    size: int = 3
    kind: str = "conclave"
    heartbeat_ms: int = 50
    election_ms: int = 500
    snapshot_count: int = 10_000
    extra_args: list[str] = field(default_factory=list)
    token: str = "test-cluster"
    members: list[ProcessMember] = field(default_factory=list)
    # TLS (the flags, e.g. --peer-cert-file, go in extra_args or member_args): https:// URLs for the
    # peer port (peer_tls) and for the client and native ports (client_tls).
    peer_tls: bool = False
    client_tls: bool = False
    member_args: dict[str, list[str]] = field(default_factory=dict)
    """Flags for one member only, by name (e.g. its own certificate)."""

    @property
    def peer_scheme(self) -> str:
        return "https" if self.peer_tls else "http"

    @property
    def client_scheme(self) -> str:
        return "https" if self.client_tls else "http"

    def __post_init__(self) -> None:
        ports = free_ports(3 * self.size)
        names = [f"m{i + 1}" for i in range(self.size)]
        cluster = ",".join(f"{names[i]}={self.peer_scheme}://127.0.0.1:{ports[3 * i + 1]}" for i in range(self.size))
        for i in range(self.size):
            c, p, n = ports[3 * i : 3 * i + 3]
            data = self.root / names[i]
            self.members.append(ProcessMember(
                names[i], c, p, n, data, self._argv(names[i], c, p, n, data, cluster, "new"),
                self.root / f"{names[i]}.log", peer_scheme=self.peer_scheme, client_scheme=self.client_scheme,
            ))

    def _argv(self, name: str, c: int, p: int, n: int, data: Path, cluster: str, state: str) -> list[str]:
        cs, ps = self.client_scheme, self.peer_scheme
        common = [
            "--name", name, "--data-dir", str(data),
            "--listen-client-urls", f"{cs}://127.0.0.1:{c}", "--advertise-client-urls", f"{cs}://127.0.0.1:{c}",
            "--listen-peer-urls", f"{ps}://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"{ps}://127.0.0.1:{p}",
            "--initial-cluster", cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
            "--snapshot-count", str(self.snapshot_count),
        ]  # fmt: skip
        if self.kind == "etcd":
            etcd = shutil.which("etcd") or "/usr/bin/etcd"
            return [etcd, *common, "--logger", "zap", "--log-level", "error", *self.extra_args,
                    *self.member_args.get(name, [])]  # fmt: skip
        return [sys.executable, "-m", "conclave", "serve", *common,
                "--listen-native-urls", f"{cs}://127.0.0.1:{n}", *self.extra_args, *self.member_args.get(name, [])]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            m.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0, members: list[ProcessMember] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members or [m for m in self.members if m.alive()])
        while pending and time.monotonic() < deadline:
            for m in list(pending):
                if not m.alive():
                    raise RuntimeError(f"{m.name} exited early:\n{m.log_text()[-3000:]}")
                if port_open(m.client_port):
                    pending.remove(m)
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"members not ready in {timeout}s: {[m.name for m in pending]}")

    def add_member_process(self, name: str, learner: bool = False) -> ProcessMember:
        """Prepare (not start) a new member joining this cluster as 'existing'."""
        c, p, n = free_ports(3)
        names = [m.name for m in self.members] + [name]
        urls = [m.peer_url for m in self.members] + [f"{self.peer_scheme}://127.0.0.1:{p}"]
        cluster = ",".join(f"{a}={u}" for a, u in zip(names, urls, strict=True))
        data = self.root / name
        m = ProcessMember(name, c, p, n, data, self._argv(name, c, p, n, data, cluster, "existing"),
                          self.root / f"{name}.log", peer_scheme=self.peer_scheme, client_scheme=self.client_scheme)
        self.members.append(m)
        return m

    def stop(self) -> None:
        for m in self.members:
            if m.alive():
                assert m.proc is not None
                with_suppress_resume(m)
                m.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)

    def __enter__(self) -> ProcessCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_suppress_resume(m: ProcessMember) -> None:
    """A paused (SIGSTOPped) member cannot handle SIGTERM: resume it first."""
    if m.proc is not None and m.proc.poll() is None:
        m.proc.send_signal(signal.SIGCONT)
