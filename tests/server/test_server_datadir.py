"""The data dir wins over the bootstrap flags, as in etcd (server/datadir.py).

etcd 3.4, checked by hand on this machine: a member restarted with another --initial-cluster-token
or --initial-cluster keeps its id, cluster and data; one restarted with another --name keeps its id
and publishes the new name (member list shows it), even when --initial-cluster does not list it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from conclave.kv import types as kv
from conclave.server import datadir
from conclave.server.backend import NodeBackend
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import Node


def _config(data_dir: Path, ports: list[int], *, name: str = "solo", token: str = "t1",
            cluster: dict[str, list[str]] | None = None) -> ServerConfig:
    c, p = ports
    peer = f"http://127.0.0.1:{p}"
    cfg = ServerConfig(
        name=name, data_dir=str(data_dir), listen_client_urls=[f"http://127.0.0.1:{c}"],
        listen_peer_urls=[peer], initial_cluster=cluster or {name: [peer]}, initial_cluster_token=token,
        heartbeat_interval_ms=20, election_timeout_ms=200,
    )
    cfg.validate()
    return cfg


async def _until(predicate: object, what: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def _run(cfg: ServerConfig, body: object) -> tuple[int, int]:
    node = Node(cfg)
    await node.start()
    try:
        await _until(node.has_leader, "a leader")
        await body(NodeBackend(node))  # type: ignore[operator]
        return node.member_id, node.cluster_id
    finally:
        await node.stop()


def test_restart_with_other_token_and_initial_cluster_keeps_identity_and_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ports = free_ports(2)
    d = tmp_path / "m"

    async def write(b: NodeBackend) -> None:
        await b.put(kv.PutRequest(key=b"k", value=b"before"))

    async def read(b: NodeBackend) -> None:
        r = await b.range(kv.RangeRequest(key=b"k"))
        assert [x.value for x in r.kvs] == [b"before"]
        await b.put(kv.PutRequest(key=b"k", value=b"after"))  # and it is writable: a leader of its own cluster

    first = asyncio.run(_run(_config(d, ports), write))
    peer = f"http://127.0.0.1:{ports[1]}"
    changed = _config(d, ports, token="t2", cluster={"solo": [peer], "ghost": ["http://127.0.0.1:1"]})
    assert changed.member_id != first[0]  # what the flags alone would make of it
    with caplog.at_level(logging.WARNING, logger="conclave.datadir"):
        again = asyncio.run(_run(changed, read))
    assert again == first, "the data dir's member and cluster ids win over the flags"
    warning = " ".join(r.getMessage() for r in caplog.records if r.name == "conclave.datadir")
    assert "--initial-cluster-token=t2" in warning and "--initial-cluster=" in warning and "ghost" in warning
    assert changed.initial_cluster_token == "t1"  # later uses (member add ids) see the data dir's token


def test_restart_under_another_name_keeps_the_id_and_publishes_the_name(tmp_path: Path) -> None:
    ports = free_ports(2)
    d = tmp_path / "m"

    async def nothing(b: NodeBackend) -> None:
        await b.put(kv.PutRequest(key=b"k", value=b"v"))

    async def renamed(b: NodeBackend) -> None:
        async def listed() -> list[str]:
            return [m.name for m in await b.member_list()]

        names: list[str] = []
        for _ in range(250):
            names = await listed()
            if names == ["renamed"]:
                break
            await asyncio.sleep(0.02)
        assert names == ["renamed"]
        assert (await b.range(kv.RangeRequest(key=b"k"))).kvs[0].value == b"v"

    first = asyncio.run(_run(_config(d, ports, name="solo"), nothing))
    # etcd accepts a new --name even when --initial-cluster does not list it: the data dir says who it is.
    other = _config(d, ports, name="renamed", cluster={"solo": [f"http://127.0.0.1:{ports[1]}"]})
    assert asyncio.run(_run(other, renamed)) == first


def test_validate_skips_bootstrap_checks_once_the_data_dir_exists(tmp_path: Path) -> None:
    from conclave.server.config import ConfigError

    cfg = ServerConfig(name="b", data_dir=str(tmp_path), initial_cluster={"a": ["http://127.0.0.1:2380"]})
    with pytest.raises(ConfigError, match="no member named 'b'"):
        cfg.validate()
    (tmp_path / "member.json").write_text(json.dumps({"name": "a", "member_id": 5, "cluster_id": 6, "token": "t"}))
    cfg.validate()  # bootstrapped: --initial-cluster is not read


def test_recover_reports_only_flags_that_differ(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cluster = {"a": ["http://127.0.0.1:2380"]}
    (tmp_path / "member.json").write_text(json.dumps({
        "name": "a", "member_id": 5, "cluster_id": 6, "token": "tok", "initial_cluster": cluster,
    }))
    same = ServerConfig(name="a", data_dir=str(tmp_path), initial_cluster=dict(cluster), initial_cluster_token="tok")
    with caplog.at_level(logging.WARNING, logger="conclave.datadir"):
        ident = datadir.recover(same)
    assert ident is not None and (ident.member_id, ident.cluster_id) == (5, 6)
    assert not caplog.records
    assert datadir.read(tmp_path / "new") is None
    (tmp_path / "member.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        datadir.read(tmp_path)
