"""`conclave status --watch`: the quantile it shows, and the view against a live cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from conclave.cli.status_view import quantile
from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, leader_of


def test_quantile_interpolates_inside_a_bucket_as_prometheus() -> None:
    inf = float("inf")
    assert quantile(0.99, []) is None
    assert quantile(0.99, [(0.001, 0), (0.002, 0), (inf, 0)]) is None
    # 100 observations, all in (0.001, 0.002]: p99 is 99% of the way through that bucket
    assert quantile(0.99, [(0.001, 0), (0.002, 100), (inf, 100)]) == pytest.approx(0.00199)
    assert quantile(0.5, [(0.001, 50), (0.002, 100), (inf, 100)]) == pytest.approx(0.001)
    # the top bucket is open: its lower bound is the answer
    assert quantile(0.99, [(0.001, 10), (0.002, 10), (inf, 100)]) == pytest.approx(0.002)


def test_watch_shows_members_leader_ops_and_fsync(cluster_factory: Callable[..., ProcessCluster]) -> None:
    cluster = cluster_factory(3)
    leader = leader_of(cluster)
    c = Etcd(leader.endpoint)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import grpc, time
from conclave.api import pb
from conclave.api.stubs import EtcdStub
kv = EtcdStub(grpc.insecure_channel("{leader.endpoint}"), "etcdserverpb.KV")
end = time.monotonic() + 8
while time.monotonic() < end:
    kv.Put(pb.PutRequest(key=b"w", value=b"x"), timeout=5)
"""])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "conclave", "status", "--watch", "--watch-count", "4", "--protocol", "grpc",
             "--endpoints", ",".join(cluster.endpoints)], capture_output=True, text=True, timeout=60)
    finally:
        writer.kill()
        writer.wait(10)
        c.close()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"leader {leader.name}" in lines[0] or any(f"leader {leader.name}" in ln for ln in lines[:3]), out.stdout
    rows = {m.name: next(ln for ln in lines if ln.startswith(f"│ {m.name} ")) for m in cluster.members}
    assert "leader" in rows[leader.name] and all("follower" in r for n, r in rows.items() if n != leader.name)
    cells = [c.strip() for c in rows[leader.name].split("│")]
    header = [c.strip() for c in next(ln for ln in lines if "OPS/S" in ln).split("┃")]
    ops = cells[header.index("OPS/S")]
    p99 = cells[header.index("FSYNC P99")]
    assert ops != "-" and float(ops.replace(",", "")) > 0, out.stdout
    assert p99.endswith("ms") and float(p99.split()[0]) > 0, out.stdout
