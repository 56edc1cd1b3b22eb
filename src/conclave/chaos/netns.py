"""Network namespaces for chaos members: one namespace, one veth and one address per member.

Theory of operation. A run with id ``RUN`` (4 hex digits) creates a bridge ``cvbRUN`` in the
harness's namespace holding ``10.213.S.1/24``, and per member ``i`` a namespace
``conclave-chaos-RUN-nI`` whose ``eth0`` (one end of the veth ``cvRUNnI``) holds ``10.213.S.(10+i)``.
Members talk to each other across the bridge; the harness reaches them at their addresses. Faults
are rules inside a member's namespace: an nftables table ``conclave_chaos`` whose input chain drops
packets from the addresses the member is cut off from (silent loss: TCP sees timeouts, not
resets), with an optional random loss rule, and ``tc netem`` for latency where the kernel has it.

Every run writes ``STATE_DIR/RUN.json`` naming its pid; ``cleanup_leftovers`` removes the
namespaces, links and member processes of every run whose harness is gone (a crashed or killed
run), and never touches a live run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = Path(os.environ.get("CONCLAVE_CHAOS_STATE", "/tmp/conclave-chaos"))
NS_PREFIX = "conclave-chaos-"
_NS_RE = re.compile(rf"^{NS_PREFIX}([0-9a-f]{{4}})-n\d+$")
_LINK_RE = re.compile(r"^cv(?:b([0-9a-f]{4})|([0-9a-f]{4})n\d+)$")


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (not root, no ip, no nft): use the proxy mode."""


def sh(*argv: str, check: bool = True, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, input=input_, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
    return r


def available() -> str | None:
    """None when namespaces can be used, else the reason they cannot."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not found (make system-deps installs it)"
    return None


def netem_available(ns: str) -> bool:
    r = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
           check=False)
    if r.returncode == 0:
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root", check=False)
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_state(run_id: str, mode: str, pids: list[int] | None = None) -> Path:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / f"{run_id}.json"
    path.write_text(json.dumps({"run": run_id, "pid": os.getpid(), "mode": mode, "members": pids or []}))
    return path


def _owner_alive(run_id: str) -> bool:
    try:
        st = json.loads((STATE_DIR / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return False
    pid = int(st.get("pid", 0))
    return pid > 0 and _pid_alive(pid)


def _is_member_process(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"conclave" in b" ".join(cmd) and b"serve" in cmd


def cleanup_leftovers(only: set[str] | None = None) -> list[str]:
    """Remove what dead runs left behind (of the runs ``only`` names, if given); returns what was
    removed, for the log. A run is dead when its state file is missing or names a dead pid."""
    removed: list[str] = []

    def skip(run: str) -> bool:
        return (only is not None and run not in only) or _owner_alive(run)

    runs: set[str] = set()
    if shutil.which("ip") and os.geteuid() == 0:
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            m = _NS_RE.match(name)
            if m and not skip(m.group(1)):
                for pid_s in sh("ip", "netns", "pids", name, check=False).stdout.split():
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid_s), signal.SIGCONT)
                        os.kill(int(pid_s), signal.SIGKILL)
                sh("ip", "netns", "del", name, check=False)
                removed.append(f"netns {name}")
                runs.add(m.group(1))
        for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(":")
            if len(parts) < 2:
                continue
            name = parts[1].strip().split("@")[0]
            m = _LINK_RE.match(name)
            if m:
                run = m.group(1) or m.group(2)
                if not skip(run):
                    sh("ip", "link", "del", name, check=False)
                    removed.append(f"link {name}")
                    runs.add(run)
    if STATE_DIR.is_dir():
        for path in STATE_DIR.glob("*.json"):
            run = path.stem
            if skip(run):
                continue
            with contextlib.suppress(OSError, ValueError):
                for pid in json.loads(path.read_text()).get("members", []):
                    if _pid_alive(int(pid)) and _is_member_process(int(pid)):
                        os.kill(int(pid), signal.SIGCONT)
                        os.kill(int(pid), signal.SIGKILL)
                        removed.append(f"process {pid}")
            path.unlink(missing_ok=True)
            removed.append(f"state {path.name}")
    return removed


@dataclass
class NetnsNetwork:
    """The namespaces, bridge and veths of one run, and the fault rules inside them."""

    run_id: str
    size: int
    subnet: int = 0
    created: list[str] = field(default_factory=list)
    netem: bool = False

    def __post_init__(self) -> None:
        if not self.subnet:
            used = set(re.findall(r"10\.213\.(\d+)\.", sh("ip", "-o", "addr", check=False).stdout))
            start = int(self.run_id, 16) % 200 + 20
            self.subnet = next(s for s in [*range(start, 250), *range(20, start)] if str(s) not in used)

    def ns(self, i: int) -> str:
        return f"{NS_PREFIX}{self.run_id}-n{i}"

    def ip(self, i: int) -> str:
        return f"10.213.{self.subnet}.{10 + i}"

    @property
    def bridge(self) -> str:
        return f"cvb{self.run_id}"

    def setup(self) -> None:
        br = self.bridge
        sh("ip", "link", "add", br, "type", "bridge")
        self.created.append(f"link:{br}")
        sh("ip", "addr", "add", f"10.213.{self.subnet}.1/24", "dev", br)
        sh("ip", "link", "set", br, "up")
        for i in range(self.size):
            self.add_member(i)
        self.netem = netem_available(self.ns(0))

    def add_member(self, i: int) -> None:
        ns, veth = self.ns(i), f"cv{self.run_id}n{i}"
        sh("ip", "netns", "add", ns)
        self.created.append(f"netns:{ns}")
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.created.append(f"link:{veth}")
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", veth, "up")
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"]):
            sh("ip", "netns", "exec", ns, *cmd)
        self._reset_rules(i)

    def wrap(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def _nft(self, i: int, script: str) -> None:
        sh("ip", "netns", "exec", self.ns(i), "nft", "-f", "-", input_=script)

    def _reset_rules(self, i: int) -> None:
        sh("ip", "netns", "exec", self.ns(i), "nft", "delete", "table", "inet", "conclave_chaos", check=False)
        self._nft(i, "table inet conclave_chaos {\n chain input { type filter hook input priority 0; }\n"
                     " chain output { type filter hook output priority 0; }\n}\n")

    def apply(self, blocked: dict[int, set[int]], loss_pct: dict[int, int], delay_ms: dict[int, tuple[int, int]],
              members: list[int]) -> None:
        """Make the rules say exactly this: ``blocked[i]`` = members whose packets i drops."""
        for i in members:
            self._reset_rules(i)
            rules = [f"add rule inet conclave_chaos input ip saddr {self.ip(j)} drop"
                     for j in sorted(blocked.get(i, ()))]
            if loss_pct.get(i):
                rules.append(f"add rule inet conclave_chaos input ip saddr 10.213.{self.subnet}.0/24 "
                             f"numgen random mod 100 < {loss_pct[i]} drop")
            if rules:
                self._nft(i, "\n".join(rules) + "\n")
            if self.netem:
                sh("ip", "netns", "exec", self.ns(i), "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
                if delay_ms.get(i):
                    d, j = delay_ms[i]
                    sh("ip", "netns", "exec", self.ns(i), "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                       "delay", f"{d}ms", f"{j}ms")

    def teardown(self) -> None:
        for i in range(self.size + 4):
            ns = self.ns(i)
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid_s in pids:
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_s), signal.SIGCONT)
                    os.kill(int(pid_s), signal.SIGKILL)
        for item in reversed(self.created):
            kind, name = item.split(":", 1)
            if kind == "netns":
                sh("ip", "netns", "del", name, check=False)
            else:
                sh("ip", "link", "del", name, check=False)
        self.created.clear()
