"""Real etcdctl 3.4 against the gRPC edge (fake backend): proves the wire, the headers and the errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from .conftest import ServedBackend
from .fake_backend import CLUSTER_ID, MEMBER_ID

ETCDCTL = shutil.which("etcdctl")
if ETCDCTL is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("etcdctl is required in CI (make system-deps installs it)")
    pytest.skip("etcdctl is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def etcd() -> Iterator[ServedBackend]:
    s = ServedBackend()
    try:
        yield s
    finally:
        s.close()


def ctl(s: ServedBackend, *args: str, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert ETCDCTL is not None
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={s.endpoint}", "--dial-timeout=3s", "--command-timeout=5s", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_put_get_del(etcd: ServedBackend) -> None:
    assert ctl(etcd, "put", "foo", "bar").stdout == "OK\n"
    assert ctl(etcd, "get", "foo").stdout == "foo\nbar\n"
    got = json.loads(ctl(etcd, "get", "foo", "-w", "json").stdout)
    assert got["header"]["cluster_id"] == CLUSTER_ID and got["header"]["member_id"] == MEMBER_ID
    assert got["header"]["raft_term"] == 2 and got["count"] == 1
    ctl(etcd, "put", "foo/2", "x")
    assert ctl(etcd, "get", "--prefix", "foo", "--keys-only").stdout.split() == ["foo", "foo/2"]
    assert ctl(etcd, "del", "foo/2").stdout == "1\n"
    assert ctl(etcd, "get", "foo/2").stdout == ""


def test_txn_and_compaction(etcd: ServedBackend) -> None:
    ctl(etcd, "put", "t", "bar")
    out = ctl(etcd, "txn", stdin='value("t") = "bar"\n\nput t baz\n\nput t qux\n\n').stdout
    assert out.split() == ["SUCCESS", "OK"]
    out = ctl(etcd, "txn", stdin='value("t") = "bar"\n\nput t baz\n\nput t qux\n\n').stdout
    assert out.split() == ["FAILURE", "OK"]
    assert ctl(etcd, "get", "t", "--print-value-only").stdout == "qux\n"
    rev = json.loads(ctl(etcd, "get", "t", "-w", "json").stdout)["header"]["revision"]
    assert ctl(etcd, "compaction", str(rev)).stdout == f"compacted revision {rev}\n"
    again = ctl(etcd, "compaction", str(rev), ok=False)
    assert again.returncode != 0 and "required revision has been compacted" in again.stderr


def test_endpoint_status_health_and_member_list(etcd: ServedBackend) -> None:
    status = json.loads(ctl(etcd, "endpoint", "status", "--cluster", "-w", "json").stdout)
    assert status[0]["Endpoint"] == f"http://{etcd.endpoint}"
    assert status[0]["Status"]["version"] == "3.6.0" and status[0]["Status"]["leader"] == MEMBER_ID
    assert "is healthy" in ctl(etcd, "endpoint", "health", "--cluster").stderr + ctl(etcd, "endpoint", "health").stdout
    assert ctl(etcd, "member", "list").stdout == (
        f"{MEMBER_ID:x}, started, fake, http://127.0.0.1:2380, http://{etcd.endpoint}, false\n"
    )


def test_lease_lock_and_watch_history(etcd: ServedBackend) -> None:
    assert "granted with TTL(30s)" in ctl(etcd, "lease", "grant", "30").stdout
    # etcdctl lock is clientv3's client-side mutex: lease + keep-alive stream + txn + range + watch.
    assert ctl(etcd, "lock", "mylock", "echo", "held").stdout == "held\n"
    ctl(etcd, "put", "w", "1")
    rev = json.loads(ctl(etcd, "get", "w", "-w", "json").stdout)["kvs"][0]["mod_revision"]
    assert ETCDCTL is not None
    watcher = subprocess.Popen(
        [ETCDCTL, f"--endpoints={etcd.endpoint}", "watch", "w", f"--rev={rev}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    guard = threading.Timer(10, watcher.kill)  # bounded: a silent watcher must not hang the test
    guard.start()
    try:
        assert watcher.stdout is not None
        lines = [watcher.stdout.readline() for _ in range(3)]
        assert lines == ["PUT\n", "w\n", "1\n"]
    finally:
        guard.cancel()
        watcher.kill()
        watcher.wait(5)


def test_unimplemented_rpc_fails_cleanly(etcd: ServedBackend) -> None:
    done = ctl(etcd, "user", "add", "alice:pw", ok=False)
    assert done.returncode != 0 and "Unimplemented" in done.stderr
