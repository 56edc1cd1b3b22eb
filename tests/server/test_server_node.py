"""In-process tests of the member runtime (one asyncio loop, real TCP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.server.backend import NodeBackend
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import Node
from conclave.storage.memory import MemoryStorage


class FailingStorage(MemoryStorage):
    """fsync fails once ``broken`` is set: the member must stop, never serve on."""

    broken = False

    def sync(self) -> None:
        if self.broken:
            raise OSError(5, "Input/output error (injected)")
        super().sync()


def _config(tmp: Path) -> ServerConfig:
    c, p = free_ports(2)
    cfg = ServerConfig(name="solo", data_dir=str(tmp / "solo"), listen_client_urls=[f"http://127.0.0.1:{c}"],
                       listen_peer_urls=[f"http://127.0.0.1:{p}"], heartbeat_interval_ms=20,
                       election_timeout_ms=200)
    cfg.validate()
    return cfg


async def _leader(node: Node) -> None:
    for _ in range(200):
        if node.has_leader():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no leader")


def test_a_failed_fsync_stops_the_member_instead_of_serving(tmp_path: Path) -> None:
    storage = FailingStorage()

    async def scenario() -> None:
        node = Node(_config(tmp_path), storage_factory=lambda _d: storage)
        await node.start()
        try:
            await _leader(node)
            backend = NodeBackend(node)
            await backend.put(kv.PutRequest(key=b"a", value=b"1"))
            storage.broken = True
            with pytest.raises(kverr.EtcdError):
                await backend.put(kv.PutRequest(key=b"a", value=b"2"))
            await asyncio.wait_for(node.stopped.wait(), 5)
            assert node.fatal and "Input/output error" in node.stop_reason
            with pytest.raises(kverr.Stopped):
                await backend.put(kv.PutRequest(key=b"b", value=b"x"))
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_single_member_serves_reads_writes_and_rejects_oversized_requests(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = _config(tmp_path)
        cfg.max_request_bytes = 10_000
        node = Node(cfg, storage_factory=lambda _d: MemoryStorage())
        await node.start()
        try:
            await _leader(node)
            backend = NodeBackend(node)
            puts = [backend.put(kv.PutRequest(key=b"k%d" % i, value=b"v")) for i in range(200)]
            results = await asyncio.gather(*puts)
            assert sorted(r.header.revision for r in results) == list(range(2, 202))
            got = await backend.range(kv.RangeRequest(key=b"k", range_end=b"l", count_only=True))
            assert got.count == 200
            with pytest.raises(kverr.RequestTooLarge):
                await backend.put(kv.PutRequest(key=b"big", value=b"x" * 20_000))
            with pytest.raises(kverr.KeyNotProvided):
                await backend.put(kv.PutRequest(key=b"", value=b"x"))
        finally:
            await node.stop()

    asyncio.run(scenario())


class SlowSyncStorage(MemoryStorage):
    """Each fsync takes ``delay`` seconds once set: commit runs ahead of apply on the leader."""

    delay = 0.0

    def sync(self) -> None:
        if self.delay:
            time.sleep(self.delay)
        super().sync()


def test_keepalive_for_a_lease_committed_but_not_yet_applied_on_the_leader_renews_it(tmp_path: Path) -> None:
    """A keep-alive may reach the leader between the commit and the apply of the grant (the
    leader is inside an fsync, or newly elected): it must wait for apply, not answer "lease
    not found" (which etcd clients turn into "session expired")."""
    storage = SlowSyncStorage()

    async def scenario() -> None:
        node = Node(_config(tmp_path), storage_factory=lambda _d: storage)
        await node.start()
        try:
            await _leader(node)
            backend = NodeBackend(node)
            storage.delay = 0.4
            lease_id = 0x5EED
            grant = asyncio.ensure_future(backend.lease_grant(kv.LeaseGrantRequest(ttl=60, id=lease_id)))
            await asyncio.sleep(0.1)  # the grant's entry is in the first fsync
            # Proposed during that fsync: the next Ready carries the grant as committed and this
            # put's entry to persist, so the grant is applied only after a second slow fsync.
            put = asyncio.ensure_future(backend.put(kv.PutRequest(key=b"k", value=b"v")))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while node.raft.commit_index <= node.applied_index and loop.time() < deadline:
                await asyncio.sleep(0.005)
            assert node.raft.commit_index > node.applied_index, "never saw commit ahead of apply"
            assert lease_id not in node.lessor
            ttl = await backend.lease_keep_alive(lease_id)
            assert ttl == 60
            await grant
            await put
            storage.delay = 0.0
            with pytest.raises(kverr.LeaseNotFound):
                await backend.lease_keep_alive(0xBAD)
        finally:
            storage.delay = 0.0
            await node.stop()

    asyncio.run(scenario())
