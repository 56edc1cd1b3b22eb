"""`conclave user/role/auth` and the security flags print what etcdctl 3.4 prints.

The same script runs twice: etcdctl against a real etcd 3.4, and Conclave's own CLI (native
protocol) against a Conclave member. stdout, the exit code, and the ``Error: ...`` line of stderr
must be equal at every step (clientv3's JSON warning lines, which etcdctl adds to stderr, are not
part of the comparison: Conclave's CLI has no retry logger). The steps avoid the server-side
differences that tests/compat/test_etcdctl_auth.py lists (role root's RoleGet).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.server.launcher import ProcessCluster

from .test_etcdctl_auth import ETCDCTL

REPO_SRC = Path(__file__).resolve().parents[2] / "src"

ROOT = "--user=root:rootpw"
SCRIPT: tuple[tuple[str, ...], ...] = (
    ("auth", "enable"),
    ("user", "add", "root", "--new-user-password=rootpw"),
    ("user", "add", "root", "--new-user-password=rootpw"),
    ("user", "add", "alice:pw"),
    ("user", "add", ":x"),
    ("user", "add", "bob", "--interactive=false"),
    ("user", "list"),
    ("user", "get", "nosuch"),
    ("role", "add", "app"),
    ("role", "add", "app"),
    ("role", "add", "other"),
    ("role", "grant-permission", "app", "--prefix=true", "readwrite", "/service/"),
    ("role", "grant-permission", "app", "read", "/cfg"),
    ("role", "grant-permission", "app", "write", "/a", "/b"),
    ("role", "grant-permission", "app", "--from-key", "read", "/z"),
    ("role", "grant-permission", "app", "--from-key", "--prefix", "read", "/z"),
    ("role", "grant-permission", "app", "--prefix", "read", "/y", "/z"),
    ("role", "grant-permission", "app", "Bogus", "/z"),
    ("role", "grant-permission", "nosuch", "read", "/z"),
    ("role", "get", "app"),
    ("role", "get", "nosuch"),
    ("role", "list"),
    ("role", "revoke-permission", "app", "/cfg"),
    ("role", "revoke-permission", "app", "/a", "/b"),
    ("role", "revoke-permission", "app", "--from-key", "/z"),
    ("role", "revoke-permission", "app", "/nonexist"),
    ("role", "get", "app"),
    ("user", "grant-role", "alice", "app"),
    ("user", "grant-role", "alice", "other"),
    ("user", "grant-role", "alice", "nosuch"),
    ("user", "get", "alice"),
    ("user", "get", "alice", "--detail"),
    ("user", "revoke-role", "alice", "other"),
    ("user", "revoke-role", "alice", "other"),
    ("role", "delete", "other"),
    ("role", "delete", "other"),
    ("user", "passwd", "bob", "--interactive=false"),
    ("user", "delete", "bob"),
    ("user", "delete", "bob"),
    ("auth", "enable"),
    ("auth", "enable"),
    (ROOT, "auth", "enable"),
    ("--user=alice:pw", "put", "/service/x", "1"),
    ("--user=alice:pw", "get", "/service/x"),
    ("--user=alice:pw", "put", "/other", "1"),
    ("--user=alice:bad", "get", "/service/x"),
    ("--user=alice", "--password=pw", "get", "/service/x"),
    ("get", "/service/x"),
    ("--user=alice:pw", "user", "list"),
    (ROOT, "user", "delete", "root"),
    (ROOT, "role", "delete", "root"),
    (ROOT, "user", "revoke-role", "root", "root"),
    (ROOT, "user", "list"),
    (ROOT, "auth", "disable"),
    ("get", "/service/x"),
)
STDIN = {("user", "add", "bob", "--interactive=false"): "bobpw\n",
         ("user", "passwd", "bob", "--interactive=false"): "newpw\n"}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def run(argv: list[str], stdin: str | None, env: dict[str, str]) -> tuple[str, list[str], int]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=env)
    return done.stdout, _error_lines(done.stderr), done.returncode


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    etcd = ProcessCluster(tmp_path_factory.mktemp("etcd"), 1, kind="etcd")
    conclave = ProcessCluster(tmp_path_factory.mktemp("conclave"), 1)
    try:
        etcd.start()
        conclave.start()
        yield etcd.endpoints[0], conclave.members[0].native_endpoint
    finally:
        etcd.stop()
        conclave.stop()


def test_conclave_cli_prints_what_etcdctl_prints(servers: tuple[str, str]) -> None:
    assert ETCDCTL is not None
    etcd_ep, native_ep = servers
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "CONCLAVE_"))}
    etcd_env = {**base, "ETCDCTL_API": "3"}
    conclave_env = {**base, "PYTHONPATH": str(REPO_SRC)}
    mismatches = []
    for argv in SCRIPT:
        stdin = STDIN.get(argv)
        want = run([ETCDCTL, f"--endpoints={etcd_ep}", "--dial-timeout=3s", *argv], stdin, etcd_env)
        got = run([sys.executable, "-m", "conclave", f"--endpoints={native_ep}", *argv], stdin, conclave_env)
        if want != got:
            mismatches.append(f"$ {' '.join(argv)}\n  etcdctl:  {want!r}\n  conclave: {got!r}")
    assert not mismatches, "\n".join(mismatches)
