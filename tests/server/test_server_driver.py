"""The member's driver (server/node.py): virtual time, failure isolation, the peer RPC table,
and leadership transfer that races a leadership change. In-process members (one asyncio loop,
MemoryStorage, real TCP on 127.0.0.1 for the peer port)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.raft.errors import LocalProtocolError
from conclave.server.backend import NodeBackend
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import LeaderTransferTimeout, Node, RequestFailed
from conclave.server.transport import HELLO, RPC_REQ, RPC_RESP, encode_frame, read_frame
from conclave.storage.memory import MemoryStorage

HB_MS, ET_MS = 20, 200


class FakeClock:
    """Virtual time: ``now_ms`` moves only when the test calls ``advance_to``; sleepers wake in order."""

    def __init__(self, start_ms: int = 1_000_000) -> None:
        self.now = start_ms
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._n = itertools.count()

    def now_ms(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0, round(seconds * 1000)), next(self._n), fut))
        await fut

    async def advance_to(self, target_ms: int) -> None:
        while self._sleepers and self._sleepers[0][0] <= target_ms:
            due, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not fut.done():
                fut.set_result(None)
            for _ in range(5):  # let the sleeper run and go back to sleep
                await asyncio.sleep(0)
        self.now = max(self.now, target_ms)


def _config(tmp: Path, name: str = "solo", hb: int = HB_MS, et: int = ET_MS) -> ServerConfig:
    c, p = free_ports(2)
    cfg = ServerConfig(name=name, data_dir=str(tmp / name), listen_client_urls=[f"http://127.0.0.1:{c}"],
                       listen_peer_urls=[f"http://127.0.0.1:{p}"], heartbeat_interval_ms=hb,
                       election_timeout_ms=et)
    cfg.validate()
    return cfg


async def _settle(node: Node) -> None:
    """Wait (real time) until the member has handled everything it was given."""
    quiet = 0
    for _ in range(5000):
        quiet = quiet + 1 if node.idle() else 0
        if quiet >= 3:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"the member never became idle (stop reason: {node.stop_reason!r})")


async def _run_until(clock: FakeClock, node: Node, target_ms: int) -> None:
    """Advance virtual time tick by tick to ``target_ms``, letting the member handle each tick."""
    while clock.now < target_ms:
        await clock.advance_to(min(target_ms, clock.now + HB_MS))
        await _settle(node)


async def _virtual_leader(clock: FakeClock, node: Node) -> int:
    """Tick until the single member leads; returns the virtual time it was promoted at."""
    for _ in range(200):
        await _run_until(clock, node, clock.now + HB_MS)
        if node.is_leader():
            return clock.now
    raise AssertionError("no leader on virtual time")


def test_leases_expire_on_virtual_time_after_their_ttl_never_when_kept_alive_and_with_slack_on_promotion(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    storage = MemoryStorage()
    cfg = _config(tmp_path)
    ttl_ms = 2_000

    async def scenario() -> None:
        node = Node(cfg, storage_factory=lambda _d: storage, clock=clock)
        await node.start()
        try:
            await _virtual_leader(clock, node)
            backend = NodeBackend(node)
            granted_at = clock.now  # virtual time stands still while the grants are applied
            await backend.lease_grant(kv.LeaseGrantRequest(ttl=ttl_ms // 1000, id=0xA))
            await backend.lease_grant(kv.LeaseGrantRequest(ttl=ttl_ms // 1000, id=0xB))
            assert clock.now == granted_at
            # Up to one tick before the deadline: nothing is proposed for expiry.
            while clock.now < granted_at + ttl_ms - HB_MS:
                await _run_until(clock, node, min(clock.now + 500, granted_at + ttl_ms - HB_MS))
                assert await backend.lease_keep_alive(0xB) == ttl_ms // 1000
                assert 0xA in node.lessor and 0xA in node.store.lease_ids()
            # At the deadline's tick the leader proposes the revoke; it is applied at once.
            await _run_until(clock, node, granted_at + ttl_ms + HB_MS)
            assert 0xA not in node.lessor and 0xA not in node.store.lease_ids()
            # The lease kept alive outlives three of its TTLs.
            while clock.now < granted_at + 3 * ttl_ms:
                await _run_until(clock, node, clock.now + 500)
                assert await backend.lease_keep_alive(0xB) == ttl_ms // 1000
                assert 0xB in node.store.lease_ids()
        finally:
            await node.stop()

        # A restarted member that becomes leader restarts every deadline at promotion + the
        # election timeout + the TTL (keep-alives are not replicated: no lease may expire
        # because leadership moved).
        node = Node(cfg, storage_factory=lambda _d: storage, clock=clock)
        await node.start()
        try:
            promoted_at = await _virtual_leader(clock, node)
            assert 0xB in node.lessor
            await _run_until(clock, node, promoted_at + ET_MS + ttl_ms - HB_MS)
            assert 0xB in node.store.lease_ids(), "expired within the election-timeout slack"
            await _run_until(clock, node, promoted_at + ET_MS + ttl_ms + HB_MS)
            assert 0xB not in node.store.lease_ids(), "not expired after the slack and its TTL"
        finally:
            await node.stop()

    asyncio.run(scenario())


async def _real_leader(node: Node) -> None:
    for _ in range(500):
        if node.has_leader():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no leader")


def _with_solo(tmp_path: Path, body: Callable[[Node, NodeBackend], Awaitable[None]]) -> None:
    async def scenario() -> None:
        node = Node(_config(tmp_path), storage_factory=lambda _d: MemoryStorage())
        await node.start()
        try:
            await _real_leader(node)
            await body(node, NodeBackend(node))
        finally:
            await node.stop()

    asyncio.run(scenario())


def _poison_proposals(node: Node, exc: BaseException) -> None:
    """Make the core raise ``exc`` for any entry that carries the key ``poison``."""
    propose = node.raft.propose

    def poisoned(data: bytes) -> None:
        if b"poison" in data:
            raise exc
        propose(data)

    node.raft.propose = poisoned  # type: ignore[method-assign]


@pytest.mark.parametrize("exc", [RuntimeError("injected"), LocalProtocolError("injected misuse")])
def test_a_request_that_raises_inside_the_loop_fails_alone_and_the_member_serves_on(
    tmp_path: Path, exc: Exception,
) -> None:
    async def body(node: Node, backend: NodeBackend) -> None:
        await backend.put(kv.PutRequest(key=b"before", value=b"1"))
        _poison_proposals(node, exc)
        with pytest.raises(RequestFailed):
            await backend.put(kv.PutRequest(key=b"poison", value=b"x"))
        assert node.loop_errors["Propose"] == 1
        # The member goes on: writes, linearizable reads, leases.
        puts = await asyncio.gather(*(backend.put(kv.PutRequest(key=b"k%d" % i, value=b"v")) for i in range(20)))
        assert len({p.header.revision for p in puts}) == 20
        got = await backend.range(kv.RangeRequest(key=b"k", range_end=b"l", count_only=True))
        assert got.count == 20
        assert (await backend.range(kv.RangeRequest(key=b"poison"))).kvs == ()
        await backend.lease_grant(kv.LeaseGrantRequest(ttl=10, id=7))
        assert not node.fatal and not node.stopped.is_set()

    _with_solo(tmp_path, body)


def test_a_read_that_raises_inside_the_loop_fails_alone(tmp_path: Path) -> None:
    async def body(node: Node, backend: NodeBackend) -> None:
        read_index = node.raft.read_index
        calls = []

        def once(ctx: bytes) -> None:
            calls.append(ctx)
            if len(calls) == 1:
                raise KeyError("injected")
            read_index(ctx)

        node.raft.read_index = once  # type: ignore[method-assign]
        with pytest.raises(RequestFailed):
            await backend.range(kv.RangeRequest(key=b"a"))
        await backend.put(kv.PutRequest(key=b"a", value=b"1"))
        assert (await backend.range(kv.RangeRequest(key=b"a"))).kvs[0].value == b"1"
        assert node.loop_errors["ReadRound"] == 1 and not node.fatal

    _with_solo(tmp_path, body)


def test_a_broken_core_invariant_still_stops_the_member(tmp_path: Path) -> None:
    async def body(node: Node, backend: NodeBackend) -> None:
        _poison_proposals(node, AssertionError("invariant broken (injected)"))
        with pytest.raises(kverr.Stopped):
            await backend.put(kv.PutRequest(key=b"poison", value=b"x"))
        await asyncio.wait_for(node.stopped.wait(), 5)
        assert node.fatal and "invariant broken" in node.stop_reason

    _with_solo(tmp_path, body)


async def _peer_rpc(node: Node, method: Any, args: Any) -> list[Any]:
    port = int(node.cfg.listen_peer_urls[0].rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_frame(HELLO, [0x1234, node.cluster_id]) + encode_frame(RPC_REQ, [9, method, args]))
        await writer.drain()
        kind, body = await asyncio.wait_for(read_frame(reader), 5)
        assert kind == RPC_RESP and body[0] == 9
        return list(body)
    finally:
        writer.close()


def test_peer_rpcs_come_from_one_table_and_an_unknown_method_is_an_error_for_the_caller(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = Node(_config(tmp_path), storage_factory=lambda _d: MemoryStorage())
        await node.start()
        try:
            await _real_leader(node)
            # Before the backend registers its handlers only cluster_info is served.
            _, ok, (kind, _msg) = await _peer_rpc(node, "keepalive", 1)
            assert not ok and kind == "UnknownPeerRpc"
            _, ok, info = await _peer_rpc(node, "cluster_info", None)
            assert ok and info[0] == node.cluster_id
            backend = NodeBackend(node)
            await backend.lease_grant(kv.LeaseGrantRequest(ttl=10, id=5))
            assert await _peer_rpc(node, "keepalive", 5) == [9, True, 10]
            for method, args in (("_rpc_keepalive", 5), ("__init__", None), ("no_such_rpc", [1, 2])):
                _, ok, (kind, _msg) = await _peer_rpc(node, method, args)
                assert not ok and kind == "UnknownPeerRpc", method
            _, ok, (kind, msg) = await _peer_rpc(node, "ttl", "not-an-id")
            assert not ok and "takes an integer" in msg
            assert not node.fatal and node.loop_errors.total() == 0
            await backend.put(kv.PutRequest(key=b"still", value=b"serving"))
        finally:
            await node.stop()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- move-leader


def _cluster_configs(tmp: Path, n: int = 3) -> list[ServerConfig]:
    ports = free_ports(2 * n)
    names = [f"m{i}" for i in range(n)]
    initial = {name: [f"http://127.0.0.1:{ports[2 * i + 1]}"] for i, name in enumerate(names)}
    cfgs = []
    for i, name in enumerate(names):
        cfg = ServerConfig(name=name, data_dir=str(tmp / name), listen_client_urls=[f"http://127.0.0.1:{ports[2 * i]}"],
                           listen_peer_urls=initial[name], initial_cluster=initial,
                           heartbeat_interval_ms=50, election_timeout_ms=500)
        cfg.validate()
        cfgs.append(cfg)
    return cfgs


async def _cluster_leader(nodes: list[Node]) -> Node:
    for _ in range(500):
        leaders = [n for n in nodes if n.is_leader()]
        if len(leaders) == 1 and all(n.leader_id() == leaders[0].member_id for n in nodes):
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no agreed leader")


async def _write_somewhere(nodes: list[Node]) -> None:
    leader = await _cluster_leader(nodes)
    await NodeBackend(leader).put(kv.PutRequest(key=b"after", value=b"ok"))


def _with_cluster(tmp_path: Path, body: Callable[[list[Node]], Awaitable[None]]) -> None:
    async def scenario() -> None:
        nodes = [Node(cfg, storage_factory=lambda _d: MemoryStorage()) for cfg in _cluster_configs(tmp_path)]
        for n in nodes:
            await n.start()
        try:
            await _cluster_leader(nodes)
            await body(nodes)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(scenario())


def test_move_leader_to_a_stopped_member_returns_an_error_and_the_leader_keeps_serving(tmp_path: Path) -> None:
    async def body(nodes: list[Node]) -> None:
        for attempt in range(3):  # the ordinary case succeeds (retried only if an election intervenes)
            leader = await _cluster_leader(nodes)
            target = next(n for n in nodes if n is not leader)
            try:
                await NodeBackend(leader).move_leader(target.member_id)
                break
            except (kverr.LeaderChanged, kverr.NotLeader):
                if attempt == 2:
                    raise
        leader = await _cluster_leader(nodes)
        assert leader is target
        gone = next(n for n in nodes if n is not leader)
        await gone.stop()
        live = [n for n in nodes if n is not gone]
        t0 = time.monotonic()
        with pytest.raises((LeaderTransferTimeout, kverr.LeaderChanged, kverr.NotLeader)):
            await NodeBackend(leader).move_leader(gone.member_id)
        # The core gives a transfer up after one election timeout: no wait for the request timeout.
        assert time.monotonic() - t0 < leader.cfg.request_timeout_s / 2
        await _write_somewhere(live)

    _with_cluster(tmp_path, body)


def test_move_leader_racing_another_leadership_change_fails_instead_of_hanging_or_succeeding(
    tmp_path: Path,
) -> None:
    async def body(nodes: list[Node]) -> None:
        leader = await _cluster_leader(nodes)
        a, b = (n for n in nodes if n is not leader)
        backend = NodeBackend(leader)
        t0 = time.monotonic()
        results = await asyncio.gather(backend.move_leader(a.member_id), backend.move_leader(b.member_id),
                                       return_exceptions=True)
        elapsed = time.monotonic() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) >= 1, results  # both cannot have won
        for e in errors:
            assert isinstance(e, (kverr.LeaderChanged, LeaderTransferTimeout, kverr.NotLeader)), repr(e)
        assert elapsed < leader.cfg.request_timeout_s / 2
        await _write_somewhere(nodes)

    _with_cluster(tmp_path, body)
