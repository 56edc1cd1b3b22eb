"""Fixtures for the client tests: one real 3-member cluster shared by the whole package."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conclave import Client
from conclave.client import ClientError
from conclave.server.launcher import ProcessCluster, ProcessMember

WORKER = Path(__file__).with_name("worker.py")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp_path_factory.mktemp("client-cluster"), 3)
    c.start()
    try:
        with Client([m.native_endpoint for m in c.members], timeout=20) as client:
            client.put("warm", "up")
        yield c
    finally:
        c.stop()


def native_endpoints(c: ProcessCluster) -> list[str]:
    return [m.native_endpoint for m in c.members]


def leader_member(c: ProcessCluster, timeout: float = 20.0) -> ProcessMember:
    """The member that every live member agrees is the leader."""
    deadline = time.monotonic() + timeout
    with Client(native_endpoints(c), timeout=2) as client:
        while time.monotonic() < deadline:
            ids: dict[int, ProcessMember] = {}
            leaders = set()
            for m in c.members:
                if not m.alive():
                    continue
                try:
                    st = client.status(m.native_endpoint, timeout=1)
                except (ClientError, OSError):
                    continue
                ids[st.member_id] = m
                leaders.add(st.leader)
            if len(leaders) == 1 and (lid := leaders.pop()) in ids:
                return ids[lid]
            time.sleep(0.1)
    raise AssertionError("no agreed leader")


def restore(c: ProcessCluster) -> None:
    """Restart members a test killed, so the next test finds three."""
    dead = [m for m in c.members if not m.alive()]
    for m in dead:
        m.start()
    if dead:
        c.wait_ready(30, dead)
        leader_member(c)


def spawn(role: str, endpoints: list[str], *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), role, ",".join(endpoints), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker timed out:\n{err[-2000:]}") from None
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err[-3000:]}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]
