"""Run real Patroni nodes (PostgreSQL high availability) against a DCS started by the test.

Theory of operation: a DCS is a 3-member cluster from ``ProcessCluster`` (Debian's etcd 3.4 or
Conclave) on free 127.0.0.1 ports. Each Patroni node gets its own directory under one throw-away
base directory in /tmp (not pytest's tmp_path: that sits under a 0700 directory the ``postgres``
user cannot enter). PostgreSQL refuses to run as root and the tests run as root, so when the test
is root every Patroni process is started as the ``postgres`` user (``Popen(user=...)``, which execs
Patroni itself, so the pid we hold is Patroni's and SIGKILL reaches it), and Patroni starts
PostgreSQL as that user too. The interpreter must be one that ``postgres`` may execute: the
venv's when it can (a normal checkout), else the system python of the same version with the venv's
site-packages on PYTHONPATH and ``-S`` (so Debian's own dist-packages cannot shadow them).

Patroni starts the postmaster in a session of its own (setsid), so "kill -9 of PostgreSQL" is a
SIGKILL to the postmaster's process group, read from ``postmaster.pid``; the teardown does the same
for whatever is left, checking ``/proc/<pid>/cmdline`` names the node's data directory first.

Tools missing (PostgreSQL's server binaries, Patroni, psycopg, etcd) skip the tests, and fail
them under CI=true: ``make system-deps`` installs the Debian packages, ``make venv`` the rest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import ProcessCluster, ProcessMember, free_ports

PG_ROOT = Path("/usr/lib/postgresql")


def missing(what: str) -> None:
    """Skip the test, or fail it under CI=true where every tool must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: `make system-deps` and `make venv` install it)")
    pytest.skip(what)


def pg_bin_dir() -> Path | None:
    """Debian's newest PostgreSQL server: /usr/lib/postgresql/<major>/bin with postgres and initdb."""
    found = []
    for d in PG_ROOT.glob("*/bin") if PG_ROOT.is_dir() else []:
        if d.parent.name.isdigit() and (d / "postgres").is_file() and (d / "initdb").is_file():
            found.append((int(d.parent.name), d))
    return max(found)[1] if found else None


@dataclass
class Runner:
    """How to start Patroni: the argv prefix, the environment and the user to run it as."""

    argv: list[str]
    env: dict[str, str]
    user: str | None  # None: as ourselves (not root)

    def owner(self) -> tuple[int, int]:
        if self.user is None:
            return os.getuid(), os.getgid()
        pw = pwd.getpwnam(self.user)
        return pw.pw_uid, pw.pw_gid


def _probe(argv: list[str], env: dict[str, str], user: str | None) -> bool:
    try:
        done = subprocess.run([*argv, "-c", "import patroni.__main__, psycopg, etcd"], env=env, user=user,
                              capture_output=True, timeout=60, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def patroni_runner() -> Runner:
    absent = [m for m in ("patroni", "psycopg", "etcd", "yaml") if importlib.util.find_spec(m) is None]
    if absent:
        missing(f"not installed in this venv: {absent} (pyproject's dev extras: patroni[etcd3], psycopg[binary])")
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("no postgres user (Debian's postgresql package creates it)")
        user = "postgres"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI_", "PG"))}
    base_env.pop("PYTHONPATH", None)
    base_env["PYTHONNOUSERSITE"] = "1"
    if _probe([sys.executable], base_env, user):
        return Runner([sys.executable], base_env, user)
    # The venv's interpreter lives where postgres may not enter (e.g. a pyenv under /root):
    # the system python of the same version, with the venv's packages and no site directory.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    site = sysconfig.get_paths()["purelib"]
    env = {**base_env, "PYTHONPATH": site}
    for cand in (f"/usr/bin/python{version}", shutil.which(f"python{version}")):
        if cand and os.access(cand, os.X_OK) and _probe([cand, "-S"], env, user):
            return Runner([cand, "-S"], env, user)
    missing(f"no python {version} the {user or 'current'} user can run Patroni with (venv at {sys.prefix})")
    raise AssertionError("unreachable")


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a Patroni REST endpoint: (status, parsed body), (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (OSError, ValueError):
        return 0, None


def wait_until(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> float:
    """Poll pred until it holds; returns the monotonic time it first held. Bounded by timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class PatroniNode:
    name: str
    root: Path
    runner: Runner
    bin_dir: Path
    rest_port: int
    pg_port: int
    proc: subprocess.Popen[bytes] | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # the DCS gateway addresses it is configured with

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "patroni.log"

    def write_config(self, scope: str, namespace: str, hosts: list[str], timing: dict[str, int],
                     use_proxies: bool = False) -> None:
        import yaml

        pw = self.passwords
        self.hosts = list(hosts)
        cfg = {
            "scope": scope,
            "namespace": namespace,
            "name": self.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{self.rest_port}", "connect_address": f"127.0.0.1:{self.rest_port}"},
            "etcd3": {"hosts": hosts, "use_proxies": use_proxies},
            "bootstrap": {
                "dcs": {
                    **timing,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on",
                                       "max_wal_senders": 5, "max_replication_slots": 5},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(self.bin_dir),
                "pgpass": str(self.root / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": pw["superuser"]},
                    "replication": {"username": "replicator", "password": pw["replication"]},
                    "rewind": {"username": "rewinder", "password": pw["rewind"]},
                },
                "parameters": {"unix_socket_directories": str(self.root), "shared_buffers": "16MB",
                               "fsync": "off"},
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
            },
        }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.chown(self.config_path, *self.runner.owner())
        self.config_path.chmod(0o600)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.runner.argv, "-m", "patroni", str(self.config_path)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.runner.env, user=self.runner.user, cwd=self.root,
                start_new_session=True,
            )

    def rest(self, path: str) -> tuple[int, Any]:
        return http_json(f"http://127.0.0.1:{self.rest_port}{path}")

    def dcs_member_in_use(self, cluster: ProcessCluster) -> ProcessMember | None:
        """The DCS member this Patroni sends its requests to: Patroni keeps one base URI and logs
        "Selected new etcd server <url>" each time it changes it (the last such line is current);
        before any change it uses the first configured host (python-etcd's client takes it)."""
        chosen = f"http://{self.hosts[0]}" if self.hosts else None
        for line in self.log_tail(1 << 22).splitlines():
            if "Selected new etcd server" in line:
                chosen = line.rsplit(" ", 1)[-1].strip()
        urls = [f"http://{h}" for h in self.hosts]  # hosts[i] is members[i]'s gateway (client port or its own)
        return cluster.members[urls.index(chosen)] if chosen in urls else None

    def postmaster_pid(self) -> int | None:
        """The postmaster of this node's data directory, if one runs (checked against /proc)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.data_dir).encode() in cmdline else None

    def kill_patroni(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill_postgres(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            # bounded wait for the postmaster to be gone or a zombie (it is not our child: poll /proc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if ") Z " in Path(f"/proc/{pid}/stat").read_text(errors="replace"):
                        break
                except OSError:
                    break
                time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> bool:
        """Graceful (SIGTERM: Patroni stops PostgreSQL), then SIGKILL of whatever is left after
        timeout; true when nothing had to be killed."""
        graceful = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                graceful = False
                self.kill_patroni()
        if self.postmaster_pid() is not None:
            graceful = False
            self.kill_postgres()
        return graceful

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _shared_tmp(runner: Runner) -> str:
    """The temp directory, if the Patroni user can reach into it (every ancestor searchable); else /tmp."""
    tmp = Path(tempfile.gettempdir()).resolve()
    if runner.user is None or all(p.stat().st_mode & 0o001 for p in [tmp, *tmp.parents]):
        return str(tmp)
    return "/tmp"


@pytest.fixture
def patroni_base() -> Iterator[tuple[Path, Runner, Path]]:
    """(base directory owned by the Patroni user, runner, PostgreSQL bin dir); removed afterwards
    unless CONCLAVE_KEEP_PATRONI=1 (then its path is printed: each node's patroni.log and data)."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        missing(f"PostgreSQL's server binaries are not installed under {PG_ROOT} (Debian's postgresql)")
    assert bin_dir is not None
    runner = patroni_runner()
    base = Path(tempfile.mkdtemp(prefix="conclave-patroni-", dir=_shared_tmp(runner)))
    os.chown(base, *runner.owner())
    try:
        yield base, runner, bin_dir
    finally:
        if os.environ.get("CONCLAVE_KEEP_PATRONI") == "1":
            print(f"\nPatroni nodes' directories (logs, data) kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def make_node(base: Path, runner: Runner, bin_dir: Path, name: str) -> PatroniNode:
    root = base / name
    root.mkdir(mode=0o700)
    os.chown(root, *runner.owner())
    rest, pg = free_ports(2)
    return PatroniNode(name, root, runner, bin_dir, rest, pg,
                       passwords={"superuser": "su-secret", "replication": "rep-secret", "rewind": "rw-secret"})


def dcs_leader(cluster: ProcessCluster, timeout: float = 20.0) -> ProcessMember:
    """The DCS member that is the Raft leader now, over gRPC Maintenance.Status (etcd and Conclave alike)."""
    found: list[ProcessMember] = []

    def ask() -> bool:
        ids: dict[int, ProcessMember] = {}
        leader = 0
        for m in cluster.members:
            if not m.alive():
                continue
            with grpc.insecure_channel(m.endpoint) as ch:
                try:
                    st = EtcdStub(ch, "etcdserverpb.Maintenance").Status(pb.StatusRequest(), timeout=2)
                except grpc.RpcError:
                    continue
            ids[st.header.member_id] = m
            leader = leader or st.leader
        if leader in ids:
            found.append(ids[leader])
            return True
        return False

    wait_until(ask, timeout, "a DCS leader", every=0.2)
    return found[0]


def dcs_member_id(m: ProcessMember) -> int:
    with grpc.insecure_channel(m.endpoint) as ch:
        st = EtcdStub(ch, "etcdserverpb.Maintenance").Status(pb.StatusRequest(), timeout=5)
    return int(st.header.member_id)


def dcs_move_leader(cluster: ProcessCluster, target: ProcessMember) -> ProcessMember:
    """Make target the Raft leader (Maintenance.MoveLeader, sent to the current leader); returns the leader."""
    leader = dcs_leader(cluster)
    if leader is target:
        return leader
    with grpc.insecure_channel(leader.endpoint) as ch:
        EtcdStub(ch, "etcdserverpb.Maintenance").MoveLeader(
            pb.MoveLeaderRequest(targetID=dcs_member_id(target)), timeout=10)
    return dcs_leader(cluster)


def dcs_get(cluster: ProcessCluster, key: str) -> Any | None:
    """The KeyValue at key from the first live member that answers a linearizable read, else None."""
    for m in cluster.members:
        if not m.alive():
            continue
        with grpc.insecure_channel(m.endpoint) as ch:
            try:
                r = EtcdStub(ch, "etcdserverpb.KV").Range(pb.RangeRequest(key=key.encode()), timeout=2)
            except grpc.RpcError:
                continue
        return r.kvs[0] if r.kvs else None
    return None
