"""/health, /livez and /readyz on real members: an alarm, and a member whose peers are gone."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.api import pb
from conclave.server.launcher import ProcessCluster
from tests.server.conftest import Etcd, leader_of, wait_for

# etcdserverpb.AlarmRequest.AlarmAction and etcdserverpb.AlarmType values
ACTIVATE, DEACTIVATE = 1, 2
NOSPACE, CORRUPT = 1, 2


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp_path / "c", 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def health(port: int, query: str = "") -> tuple[int, dict[str, str]]:
    status, body = get(port, "/health" + query)
    return status, json.loads(body)


def test_health_follows_an_alarm(cluster: ProcessCluster) -> None:
    c = cluster
    leader = leader_of(c)
    port = leader.client_port
    assert health(port) == (200, {"health": "true", "reason": ""})
    cl = Etcd(leader.endpoint)
    maint_alarm = cl.maint.Alarm
    try:
        member_id = cl.status().header.member_id
        maint_alarm(pb.AlarmRequest(action=ACTIVATE, memberID=member_id,
                                    alarm=NOSPACE), timeout=10)
        for m in c.members:  # the alarm is replicated: every member reports it
            wait_for(lambda m=m: health(m.client_port)[1]["reason"] == "ALARM NOSPACE", 10, f"{m.name} to see it")
        assert health(port)[0] == 503
        assert health(port, "?exclude=NOSPACE") == (200, {"health": "true", "reason": ""})
        assert get(port, "/readyz")[0] == 200  # NOSPACE is not corruption
        maint_alarm(pb.AlarmRequest(action=ACTIVATE, memberID=member_id,
                                    alarm=CORRUPT), timeout=10)
        wait_for(lambda: get(port, "/readyz/data_corruption")[0] == 503, 10, "readyz to see the corruption")
        status, body = get(port, "/readyz?verbose")
        assert status == 503 and "[-]data_corruption failed" in body and "[+]serializable_read ok" in body
        assert get(port, "/readyz?exclude=data_corruption")[0] == 200
        for alarm in (NOSPACE, CORRUPT):
            maint_alarm(pb.AlarmRequest(action=DEACTIVATE, memberID=member_id, alarm=alarm),
                        timeout=10)
        wait_for(lambda: health(port)[0] == 200, 10, "health to come back")
    finally:
        cl.close()


def test_health_false_when_the_leader_is_gone(cluster: ProcessCluster) -> None:
    c = cluster
    leader = leader_of(c)
    survivor = next(m for m in c.members if m is not leader)
    for m in c.members:
        if m is not survivor:
            m.stop()
    port = survivor.client_port
    # check-quorum: with no majority there is no leader within an election timeout or two
    wait_for(lambda: health(port) == (503, {"health": "false", "reason": "RAFT NO LEADER"}), 20, "no leader")
    # serializable: no leader check, a local read: the member itself is fine
    assert health(port, "?serializable=true") == (200, {"health": "true", "reason": ""})
    assert get(port, "/livez") == (200, "ok\n")
    status, body = get(port, "/readyz")
    assert status == 503
    assert "[-]linearizable_read failed: etcdserver: no leader" in body.splitlines()
    assert get(port, "/readyz?exclude=linearizable_read") == (200, "ok\n")
    assert get(port, "/readyz/linearizable_read")[0] == 503
    assert get(port, "/readyz/serializable_read") == (200, "ok\n")
    # the counters of /health saw it
    metrics = get(port, "/metrics")[1]
    failures = next(line for line in metrics.splitlines() if line.startswith("etcd_server_health_failures "))
    assert float(failures.split()[1]) >= 1
