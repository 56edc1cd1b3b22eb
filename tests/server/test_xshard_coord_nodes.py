"""server/xshard_coord.py over real in-process server Nodes: one single-member Node per group."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from conclave.kv import types as kt
from conclave.machine import xshard as xs
from conclave.server import xshard_coord as xc
from conclave.server.backend import NodeBackend
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import Node

T = xc.Timeouts(call=1.0, prepare=2.0, lock_wait=0.5, lock_poll=0.01, heartbeat_interval=0.05,
                heartbeat_timeout=0.3, decide=3.0, resolve_wait=2.0, resolve_bound=5.0, backoff=0.01,
                sweep_interval=0.1, decided_grace=0.3, resolve_grace=0.2)
SHARDS = xs.ShardMap((b"b", b"c"), (1, 2, 3))


def _config(tmp: Path, name: str) -> ServerConfig:
    c, p = free_ports(2)
    cfg = ServerConfig(name=name, data_dir=str(tmp / name), listen_client_urls=[f"http://127.0.0.1:{c}"],
                       listen_peer_urls=[f"http://127.0.0.1:{p}"], heartbeat_interval_ms=20,
                       election_timeout_ms=200)
    cfg.validate()
    return cfg


async def _started(cfg: ServerConfig) -> Node:
    node = Node(cfg)
    await node.start()
    for _ in range(250):
        if node.has_leader():
            return node
        await asyncio.sleep(0.02)
    raise AssertionError("no leader")


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.cfgs = {g: _config(tmp, f"g{g}") for g in (1, 2, 3)}
        self.nodes: dict[int, Node] = {}
        self.ports: dict[int, xc.NodeGroupPort] = {}

    async def start(self) -> None:
        for g, cfg in self.cfgs.items():
            self.nodes[g] = await _started(cfg)
            self.ports[g] = xc.NodeGroupPort(lambda g=g: self.nodes[g])

    async def restart(self, g: int) -> None:
        await self.nodes[g].stop()
        self.nodes[g] = await _started(self.cfgs[g])

    async def stop(self) -> None:
        for n in self.nodes.values():
            await n.stop()

    async def put(self, key: bytes, value: bytes) -> None:
        await NodeBackend(self.nodes[SHARDS.group_of(key)]).put(kt.PutRequest(key=key, value=value))

    def value(self, key: bytes) -> bytes:
        kvs = self.nodes[SHARDS.group_of(key)].store.range(kt.RangeRequest(key=key)).kvs
        return kvs[0].value if kvs else b""

    def clean(self) -> bool:
        return all(not n.sm.xshard.intents and not n.sm.xshard.records for n in self.nodes.values())

    async def until_clean(self, bound: float) -> None:
        rec = xc.Recovery(self.ports, T)
        sweeper = xc.Sweeper(self.ports, rec, T)
        sweeper.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + bound
            while not self.clean():
                assert loop.time() < end, [(g, n.sm.xshard.intents, n.sm.xshard.records)
                                           for g, n in self.nodes.items()]
                await asyncio.sleep(0.05)
        finally:
            await sweeper.stop()
            await rec.close()


def _run(tmp: Path, scenario: Any) -> None:
    async def main() -> None:
        c = Cluster(tmp)
        await c.start()
        try:
            await asyncio.wait_for(scenario(c), 60)
        finally:
            await c.stop()

    asyncio.run(main())


KEYS = (b"a1", b"b1", b"c1")


def _txn(value: bytes, expect: bytes) -> kt.TxnRequest:
    return kt.TxnRequest(
        compare=tuple(kt.Compare(kt.CompareResult.EQUAL, kt.CompareTarget.VALUE, k, value=expect) for k in KEYS),
        success=tuple(kt.RequestOp(request_put=kt.PutRequest(key=k, value=value, prev_kv=True)) for k in KEYS),
        failure=tuple(kt.RequestOp(request_range=kt.RangeRequest(key=k)) for k in KEYS),
    )


def test_a_cross_shard_txn_commits_atomically_and_a_failed_compare_aborts_it(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        for k in KEYS:
            await c.put(k, b"0")
        co = xc.Coordinator(9, c.ports, SHARDS, timeouts=T)
        resp = await co.txn(_txn(b"1", b"0"))
        assert resp.succeeded and len(resp.responses) == 3
        for r in resp.responses:
            assert r.response_put is not None and r.response_put.prev_kv is not None
            assert r.response_put.prev_kv.value == b"0"
        assert [c.value(k) for k in KEYS] == [b"1"] * 3
        resp = await co.txn(_txn(b"2", b"0"))  # every compare fails now
        assert not resp.succeeded
        assert [r.response_range.kvs[0].value for r in resp.responses if r.response_range] == [b"1"] * 3
        assert [c.value(k) for k in KEYS] == [b"1"] * 3
        await co.close()
        await c.until_clean(3)

    _run(tmp_path, scenario)


def test_a_bank_keeps_its_total_under_coordinator_cancellations(tmp_path: Path) -> None:
    accounts = [bytes([ch]) + b"%02d" % i for ch in b"abc" for i in range(10)]
    total = 100 * len(accounts)

    async def scenario(c: Cluster) -> None:
        for k in accounts:
            await c.put(k, b"100")
        rec = xc.Recovery(c.ports, T)
        co = xc.Coordinator(9, c.ports, SHARDS, timeouts=T, recovery=rec)
        sweeper = xc.Sweeper(c.ports, rec, T)
        sweeper.start()
        rng = random.Random(16)
        stats: dict[str, int] = {}
        audits: list[int] = []

        def count(what: str) -> None:
            stats[what] = stats.get(what, 0) + 1

        async def read(keys: list[bytes]) -> dict[bytes, bytes]:
            resp = await co.txn(kt.TxnRequest(success=tuple(kt.RequestOp(request_range=kt.RangeRequest(key=k))
                                                            for k in keys)))
            return {r.response_range.kvs[0].key: r.response_range.kvs[0].value
                    for r in resp.responses if r.response_range is not None}

        async def transfer() -> None:
            a, b = rng.sample(accounts, 2)
            got = await read([a, b])
            amount = rng.randint(1, 20)
            eq, val = kt.CompareResult.EQUAL, kt.CompareTarget.VALUE
            req = kt.TxnRequest(
                compare=(kt.Compare(eq, val, a, value=got[a]), kt.Compare(eq, val, b, value=got[b])),
                success=(kt.RequestOp(request_put=kt.PutRequest(key=a, value=b"%d" % (int(got[a]) - amount))),
                         kt.RequestOp(request_put=kt.PutRequest(key=b, value=b"%d" % (int(got[b]) + amount)))))
            task = asyncio.ensure_future(co.txn(req))
            if rng.random() < 0.25:  # the coordinator dies somewhere in the middle
                await asyncio.sleep(rng.uniform(0, 0.02))
                task.cancel()
            try:
                resp = await task
                count("committed" if resp.succeeded else "compare_failed")
            except asyncio.CancelledError:
                count("cancelled")

        async def client(n: int) -> None:
            for _ in range(8):
                try:
                    await transfer()
                except (xc.TxnAborted, xc.LockWaitTimeout, xc.GroupsUnavailable) as exc:
                    count(type(exc).__name__)

        async def auditor() -> None:
            for _ in range(4):
                try:
                    audits.append(sum(int(v) for v in (await read(accounts)).values()))
                except (xc.TxnAborted, xc.LockWaitTimeout) as exc:
                    count("audit_" + type(exc).__name__)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(client(n) for n in range(3)), auditor())
        await sweeper.stop()
        await co.close()
        await c.until_clean(xc.Sweeper(c.ports, rec, T).bound(3) + 2)
        assert audits and all(s == total for s in audits), audits
        assert sum(int(c.value(k)) for k in accounts) == total
        assert stats.get("committed", 0) > 5, stats

    _run(tmp_path, scenario)


class _RestartingPort(xc.NodeGroupPort):
    """Group 2's port: once its Prepare has applied, the member restarts (the intent must survive)."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(lambda: c.nodes[2])
        self.c = c
        self.restarted = False

    async def propose(self, cmd: xs.Command, timeout: float) -> xc.XResult:
        res = await super().propose(cmd, timeout)
        if isinstance(cmd, xs.Prepare) and not self.restarted:
            await self.c.restart(2)
            assert self.c.nodes[2].sm.xshard.intents, "the intent did not survive the restart"
            self.restarted = True
        return res


@pytest.mark.parametrize("crash", [False, True], ids=["coordinator_lives", "coordinator_dies"])
def test_a_member_restart_mid_transaction_is_recovered(tmp_path: Path, crash: bool) -> None:
    async def scenario(c: Cluster) -> None:
        for k in KEYS:
            await c.put(k, b"0")
        ports = dict(c.ports)
        ports[2] = _RestartingPort(c)
        co = xc.Coordinator(9, ports, SHARDS, timeouts=T)
        if crash:
            task = asyncio.ensure_future(co.txn(_txn(b"5", b"0")))
            while not ports[2].restarted:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            task.cancel()
            await co.close()
            await c.until_clean(xc.Sweeper(c.ports, xc.Recovery(c.ports, T), T).bound(3) + 2)
            assert [c.value(k) for k in KEYS] in ([b"0"] * 3, [b"5"] * 3)
        else:
            resp = await co.txn(_txn(b"5", b"0"))
            assert resp.succeeded
            assert [c.value(k) for k in KEYS] == [b"5"] * 3
            await co.close()
            await c.until_clean(3)

    _run(tmp_path, scenario)


def test_wired_into_a_sharded_member(tmp_path: Path) -> None:
    """How the sharded backend wires it: one port per data group of a MemberGroups."""
    from conclave.server.groups import MemberGroups
    from conclave.server.sharded import ShardedBackend

    async def main() -> None:
        cfg = _config(tmp_path, "m1")
        groups = MemberGroups(cfg, [b"b", b"c"])
        await groups.start()
        try:
            ports = {g: xc.NodeGroupPort(lambda g=g: groups.node(g)) for g in groups.data_group_ids()}
            rec = xc.Recovery(ports, T)
            co = xc.Coordinator(groups.meta.member_id, ports, groups.shard_map,
                                seq_base=xc.txn_seq_base(cfg.data_dir), timeouts=T, recovery=rec)
            sweeper = xc.Sweeper(ports, rec, T)
            sweeper.start()
            backend = ShardedBackend(groups)
            backend.coordinator = co
            for _ in range(250):
                if all(groups.node(g).is_leader() for g in groups.data_group_ids()):
                    break
                await asyncio.sleep(0.02)
            for k in KEYS:
                await backend.put(kt.PutRequest(key=k, value=b"0"))
            resp = await backend.txn(_txn(b"3", b"0"))
            assert resp.succeeded
            got = await backend.range(kt.RangeRequest(key=b"a", range_end=b"d"))
            assert [kv.value for kv in got.kvs] == [b"3"] * 3
            await sweeper.stop()
            await co.close()
        finally:
            await groups.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
