"""`conclave bench --protocol native|grpc` against a real member: the report is sane."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, wait_for


@pytest.mark.parametrize(("protocol", "op"), [("native", "put"), ("native", "range"), ("grpc", "txn-put")])
def test_bench_reports_plausible_numbers(
    cluster_factory: Callable[..., ProcessCluster], protocol: str, op: str
) -> None:
    c = cluster_factory(1)
    cl = Etcd(c.endpoints[0])
    wait_for(lambda: cl.put(b"warm", b"up") is not None, 20, "first write")
    cl.close()
    m = c.members[0]
    endpoint = m.native_endpoint if protocol == "native" else m.endpoint
    done = subprocess.run(
        [sys.executable, "-m", "conclave", "bench", op, "--protocol", protocol, "--endpoints", endpoint,
         "--clients", "8", "--duration", "1", "--key-space", "50", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["protocol"] == protocol and rep["op"] == op
    assert rep["ops"] > 10 and rep["errors"] == {}
    assert 0 < rep["latency_ms_p50"] <= rep["latency_ms_p99"] <= rep["latency_ms_max"]


def test_bench_native_refuses_unreachable_endpoint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conclave", "bench", "put", "--protocol", "native", "--endpoints", "127.0.0.1:1",
         "--duration", "1"], capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1 and "conclave bench:" in done.stderr and "Traceback" not in done.stderr
