"""The python gRPC engine (grpc.aio) stays correct beside the default rust one: a focused etcdctl
subset (KV, txn, watch, lease, lock, errors) on a cluster started with ``--grpc-engine python``,
and the KV/txn script's outputs byte-equal to a rust-engine cluster's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.api import edge_server
from conclave.server.launcher import ProcessCluster

from .conftest import wait_for
from .test_server_etcdctl import ctl, mask, run_script
from .test_server_etcdctl_coord import read_lines, spawn, stop


def python_cluster(root: Path) -> ProcessCluster:
    return ProcessCluster(root, 3, extra_args=["--grpc-engine", "python"])


@pytest.fixture(scope="module")
def pycluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = python_cluster(tmp_path_factory.mktemp("py-engine"))
    c.start()
    try:
        wait_for(lambda: ctl(c.endpoints, "endpoint", "health")[0] == 0, 30, "health")
        yield c
    finally:
        c.stop()


def test_members_log_the_python_engine(pycluster: ProcessCluster) -> None:
    for m in pycluster.members:
        assert "gRPC engine: python (grpc.aio)" in m.log_text()


@pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")
def test_kv_and_txn_script_answers_equal_the_rust_engine(tmp_path: Path) -> None:
    outputs = []
    for engine in ("python", "rust"):
        c = ProcessCluster(tmp_path / engine, 3, extra_args=["--grpc-engine", engine])
        c.start()
        try:
            wait_for(lambda c=c: ctl(c.endpoints, "endpoint", "health")[0] == 0, 30, "health")
            assert f"gRPC engine: {engine}" in c.members[0].log_text()
            outputs.append([mask(o) for o in run_script(c.endpoints)])
        finally:
            c.stop()
    diffs = [f"--- python\n{p}\n--- rust\n{r}" for p, r in zip(*outputs, strict=True) if p != r]
    assert not diffs, "\n\n".join(diffs)


def test_watch_lease_and_lock(pycluster: ProcessCluster) -> None:
    eps = pycluster.endpoints
    assert ctl(eps, "put", "pw/a", "1")[0] == 0
    w = spawn(eps[1:2], "watch", "pw/", "--prefix", "--rev", "1")  # from history, then live
    try:
        assert read_lines(w, 3) == ["PUT", "pw/a", "1"]
        assert ctl(eps, "put", "pw/b", "2")[0] == 0
        assert read_lines(w, 3) == ["PUT", "pw/b", "2"]
    finally:
        stop(w)
    rc, out = ctl(eps, "lease", "grant", "60")
    assert rc == 0 and "granted with TTL(60s)" in out, out
    lease = out.split()[1]
    assert ctl(eps, "put", "pl", "v", "--lease", lease)[0] == 0
    rc, out = ctl(eps, "lease", "timetolive", lease, "--keys")
    assert rc == 0 and "attached keys([pl])" in out, out
    rc, out = ctl(eps, "lease", "keep-alive", "--once", lease)
    assert rc == 0 and "keepalived with TTL(60)" in out, out
    rc, out = ctl(eps, "lease", "revoke", lease)
    assert rc == 0 and "revoked" in out, out
    rc, out = ctl(eps, "get", "pl", "-w", "json")
    assert rc == 0 and "kvs" not in json.loads(out), out
    rc, out = ctl(eps, "lock", "plock", "echo", "held-it")
    assert rc == 0 and "held-it" in out, out


def test_errors_use_etcds_words(pycluster: ProcessCluster) -> None:
    eps = pycluster.endpoints
    rc, out = ctl(eps, "put", "big", stdin="x" * (1700 * 1024))
    assert rc != 0 and "request is too large" in out, out
    ops = "".join(f"put k{i} v\n" for i in range(129))
    rc, out = ctl(eps, "txn", stdin=f"\n{ops}\n\n")
    assert rc != 0 and "too many operations in txn request" in out, out
    rc, out = ctl(eps, "lease", "revoke", "1234")
    assert rc != 0 and "requested lease not found" in out, out
