"""Fixtures for integration tests against real ``conclave serve`` processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import ProcessCluster, ProcessMember


class Etcd:
    """A tiny synchronous etcd v3 client over the private descriptor pool (tests only)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = EtcdStub(self.channel, "etcdserverpb.KV")
        self.maint = EtcdStub(self.channel, "etcdserverpb.Maintenance")
        self.cluster = EtcdStub(self.channel, "etcdserverpb.Cluster")
        self.lease = EtcdStub(self.channel, "etcdserverpb.Lease")

    def put(self, key: bytes, value: bytes, timeout: float = 10.0, **kw: Any) -> Any:
        return self.kv.Put(pb.PutRequest(key=key, value=value, **kw), timeout=timeout)

    def get(self, key: bytes, serializable: bool = False, timeout: float = 10.0, **kw: Any) -> Any:
        return self.kv.Range(pb.RangeRequest(key=key, serializable=serializable, **kw), timeout=timeout)

    def value(self, key: bytes, serializable: bool = False) -> bytes | None:
        r = self.get(key, serializable)
        return bytes(r.kvs[0].value) if r.kvs else None

    def status(self) -> Any:
        return self.maint.Status(pb.StatusRequest(), timeout=5)

    def hash_kv(self, rev: int = 0) -> Any:
        return self.maint.HashKV(pb.HashKVRequest(revision=rev), timeout=10)

    def close(self) -> None:
        self.channel.close()


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def leader_of(cluster: ProcessCluster) -> ProcessMember:
    ids: dict[int, ProcessMember] = {}
    leader = 0

    def found() -> bool:
        nonlocal leader
        for m in cluster.members:
            if not m.alive():
                continue
            c = Etcd(m.endpoint)
            try:
                st = c.status()
                ids[st.header.member_id] = m
                leader = st.leader
            finally:
                c.close()
        return leader in ids

    wait_for(found, 20, "a leader")
    return ids[leader]


def etcdctl_path() -> str | None:
    path = shutil.which("etcdctl")
    if path is None and os.environ.get("CI") == "true":
        raise RuntimeError("etcdctl is required in CI (make system-deps installs it)")
    return path


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., ProcessCluster]]:
    made: list[ProcessCluster] = []

    def make(size: int = 3, **kw: Any) -> ProcessCluster:
        c = ProcessCluster(tmp_path / f"c{len(made)}", size, **kw)
        made.append(c)
        c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """One 3-member cluster with a leader, shared by the tests of a module."""
    c = ProcessCluster(tmp_path_factory.mktemp("cluster"), 3)
    c.start()
    cl = Etcd(c.endpoints[0])
    try:
        wait_for(lambda: cl.status().leader != 0, 20, "a leader")
    finally:
        cl.close()
    try:
        yield c
    finally:
        c.stop()
