"""The members of a chaos run: ``conclave serve`` subprocesses, in namespaces or behind the proxy.

Theory of operation. ``ChaosCluster`` starts one process per member (``python -m conclave serve``,
wrapped in ``ip netns exec`` in the namespace mode) with its own data dir and log, and keeps the
process handle so the nemesis can SIGKILL, SIGSTOP/SIGCONT and restart it on the same data and
addresses. The network is ``NetnsNetwork`` (root) or ``PeerProxy`` (anyone); both take the same
rules (``set_network``: which directed links are cut, latency, loss per member). Member ids are
learned from the cluster itself after it starts (the proxy needs them to tell who dialled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conclave.chaos.netns import NetnsNetwork, available, sh, write_state
from conclave.chaos.proxy import LinkRules, PeerProxy
from conclave.client import AsyncClient

TOKEN = "conclave-chaos"


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


@dataclass
class Member:
    index: int
    name: str
    host: str
    client_port: int
    native_port: int
    peer_port: int  # the port it listens on for peers
    peer_url: str  # the peer URL the others dial (the proxy's listener in the proxy mode)
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    removed: bool = False
    member_id: int = 0
    starts: int = 0
    argv: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def native_endpoint(self) -> str:
        return f"{self.host}:{self.native_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ChaosCluster:
    root: Path
    size: int = 3
    run_id: str = ""
    mode: str = "auto"  # auto | netns | proxy
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_count: int = 2000
    members: list[Member] = field(default_factory=list)
    net: NetnsNetwork | None = None
    proxy: PeerProxy | None = None
    log: list[str] = field(default_factory=list)
    fallback_reason: str = ""
    extra_args: list[str] = field(default_factory=list)
    grpc_engine: str = "python"  # python | rust | mixed (even members rust, odd python)
    tmpfs_mb: int = 0  # > 0: each member's data dir is a tmpfs of this size (the disk nemesis; root only)
    mounts: list[Path] = field(default_factory=list)
    shards: int = 1  # the data groups the members were started with (extra_args carries the flag)

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = os.urandom(2).hex()
        if self.mode == "auto":
            why = available()
            self.mode = "netns" if why is None else "proxy"
            self.fallback_reason = why or ""

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_state(self.run_id, self.mode)
        if self.mode == "netns":
            self.net = NetnsNetwork(self.run_id, self.size)
            try:
                self.net.setup()
            except Exception:
                self.net.teardown()
                raise
            for i in range(self.size):
                self.members.append(self._netns_member(i))
        else:
            ports = free_ports(4 * self.size)
            hidden = [ports[4 * i + 2] for i in range(self.size)]
            public = [ports[4 * i + 3] for i in range(self.size)]
            self.proxy = PeerProxy(hidden, public)
            self.proxy.start()
            for i in range(self.size):
                c, n, h, p = ports[4 * i: 4 * i + 4]
                self.members.append(Member(i, f"n{i}", "127.0.0.1", c, n, h, f"http://127.0.0.1:{p}",
                                           self.root / f"n{i}", self.root / f"n{i}.log"))

    def _netns_member(self, i: int) -> Member:
        assert self.net is not None
        ip = self.net.ip(i)
        return Member(i, f"n{i}", ip, 2379, 2381, 2380, f"http://{ip}:2380", self.root / f"n{i}",
                      self.root / f"n{i}.log")

    def _prepare_data_dir(self, m: Member) -> None:
        m.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tmpfs_mb and self.mode == "netns":
            sh("mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_mb}m", f"conclave-chaos-{self.run_id}", str(m.data_dir))
            self.mounts.append(m.data_dir)

    def initial_cluster(self, members: list[Member]) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in members)

    def argv(self, m: Member, cluster: str, state: str) -> list[str]:
        argv = [
            sys.executable, "-m", "conclave", "serve", "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", f"http://{m.host}:{m.client_port}",
            "--advertise-client-urls", f"http://{m.host}:{m.client_port}",
            "--listen-peer-urls", f"http://{m.host}:{m.peer_port}",
            "--initial-advertise-peer-urls", m.peer_url,
            "--listen-native-urls", f"http://{m.host}:{m.native_port}",
            "--initial-cluster", cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", TOKEN,
            "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
            "--snapshot-count", str(self.snapshot_count), "--grpc-engine", self.engine_of(m), *self.extra_args,
        ]  # fmt: skip
        if self.net is not None:
            argv = self.net.wrap(m.index, argv)
        return argv

    def engine_of(self, m: Member) -> str:
        if self.grpc_engine == "mixed":
            return "rust" if m.index % 2 == 0 else "python"
        return self.grpc_engine

    def start(self, timeout: float = 60.0) -> None:
        cluster = self.initial_cluster(self.members)
        for m in self.members:
            self._spawn(m, self.argv(m, cluster, "new"))
        self.wait_ready(self.members, timeout)
        self._learn_ids(timeout)

    def _spawn(self, m: Member, argv: list[str]) -> None:
        if m.starts == 0:
            self._prepare_data_dir(m)
        m.argv = argv
        with open(m.log_path, "ab") as out:
            out.write(f"\n=== chaos: start {m.name} ({time.strftime('%H:%M:%S')}) ===\n".encode())
            out.flush()
            m.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        m.starts += 1
        m.paused = False
        write_state(self.run_id, self.mode, [x.proc.pid for x in self.members if x.proc is not None])

    def wait_ready(self, members: list[Member], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending and time.monotonic() < deadline:
            for m in list(pending):
                if not m.alive():
                    raise RuntimeError(f"{m.name} exited early (see {m.log_path}):\n{_tail(m.log_path)}")
                if port_open(m.host, m.client_port):
                    pending.remove(m)
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"members not ready in {timeout:.0f}s: {[m.name for m in pending]}")

    def _learn_ids(self, timeout: float) -> None:
        async def ask() -> None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    async with AsyncClient(self.native_endpoints(), timeout=3.0) as c:
                        found = {mm.name: mm.id for mm in await c.members()}
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.3)
            for m in self.members:
                m.member_id = found.get(m.name, m.member_id)
        asyncio.run(ask())
        if self.proxy is not None:
            self.proxy.ids = {m.member_id: m.index for m in self.members}

    # ------------------------------------------------------------------ addresses

    def live(self) -> list[Member]:
        return [m for m in self.members if not m.removed]

    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.live()]

    def native_endpoints(self) -> list[str]:
        return [m.native_endpoint for m in self.live()]

    # ------------------------------------------------------------------ process faults

    def kill(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
        m.paused = False

    def restart(self, m: Member) -> None:
        if m.alive() or m.removed:
            return
        self._spawn(m, m.argv)

    def pause(self, m: Member) -> None:
        if m.alive():
            assert m.proc is not None
            os.kill(m.proc.pid, signal.SIGSTOP)
            m.paused = True

    def resume(self, m: Member) -> None:
        if m.alive() and m.paused:
            assert m.proc is not None
            os.kill(m.proc.pid, signal.SIGCONT)
        m.paused = False

    # ------------------------------------------------------------------ network faults

    def set_network(self, blocked: set[tuple[int, int]], delay_ms: dict[int, tuple[int, int]] | None = None,
                    loss_pct: dict[int, int] | None = None) -> None:
        """``blocked``: directed (src, dst) links whose packets are lost; the rest flow."""
        delay_ms, loss_pct = delay_ms or {}, loss_pct or {}
        if self.net is not None:
            incoming: dict[int, set[int]] = {}
            for src, dst in blocked:
                incoming.setdefault(dst, set()).add(src)
            self.net.apply(incoming, loss_pct, delay_ms, [m.index for m in self.members])
        elif self.proxy is not None:
            self.proxy.set_rules(LinkRules(set(blocked), dict(delay_ms), dict(loss_pct)))

    @property
    def latency_supported(self) -> bool:
        return self.proxy is not None or (self.net is not None and self.net.netem)

    # ------------------------------------------------------------------ membership

    def new_member(self) -> Member:
        """A fresh member (not started) with a new index, name, data dir and address."""
        i = len(self.members)
        if self.net is not None:
            self.net.add_member(i)
            m = self._netns_member(i)
        else:
            assert self.proxy is not None
            c, n, h, p = free_ports(4)
            self.proxy.add_member(h, p)
            m = Member(i, f"n{i}", "127.0.0.1", c, n, h, f"http://127.0.0.1:{p}", self.root / f"n{i}",
                       self.root / f"n{i}.log")
        m.name = f"n{i}"
        self.members.append(m)
        return m

    def start_joining(self, m: Member) -> None:
        cluster = self.initial_cluster([x for x in self.members if not x.removed])
        self._spawn(m, self.argv(m, cluster, "existing"))

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        for m in self.members:
            if m.alive():
                assert m.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGCONT)
                    os.kill(m.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait(timeout=10)

    def teardown(self) -> None:
        """Stop every member and remove every namespace, link, proxy and state file of the run."""
        try:
            self.stop()
        finally:
            if self.net is not None:
                self.net.teardown()
            if self.proxy is not None:
                self.proxy.stop()
            for path in self.mounts:
                sh("umount", "-l", str(path), check=False)
            self.mounts.clear()
            from conclave.chaos.netns import STATE_DIR
            (STATE_DIR / f"{self.run_id}.json").unlink(missing_ok=True)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


__all__ = ["ChaosCluster", "Member", "free_ports", "port_open", "sh"]
