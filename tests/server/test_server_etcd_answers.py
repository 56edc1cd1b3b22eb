"""NodeBackend answers where etcd 3.4 was found to answer differently (each checked against a real
etcd 3.4 on this machine; tests/server/test_server_etcdctl.py compares etcdctl's output too)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.server.backend import NodeBackend
from conclave.server.config import BACKEND_EMPTY_BYTES, BACKEND_EMPTY_IN_USE_BYTES, ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import Node
from conclave.storage.memory import MemoryStorage


def scenario(tmp: Path, body: object) -> None:
    async def main() -> None:
        c, p = free_ports(2)
        cfg = ServerConfig(name="solo", data_dir=str(tmp / "solo"), listen_client_urls=[f"http://127.0.0.1:{c}"],
                           listen_peer_urls=[f"http://127.0.0.1:{p}"], heartbeat_interval_ms=20,
                           election_timeout_ms=200)
        cfg.validate()
        node = Node(cfg, storage_factory=lambda _d: MemoryStorage())
        await node.start()
        try:
            for _ in range(250):
                if node.has_leader():
                    break
                await asyncio.sleep(0.02)
            await asyncio.wait_for(body(NodeBackend(node)), 30)  # type: ignore[operator]
        finally:
            await node.stop()

    asyncio.run(main())


def test_a_second_learner_racing_the_first_gets_etcds_refusal(tmp_path: Path) -> None:
    async def body(b: NodeBackend) -> None:
        # Both reach the leader while the first change is pending: the second used to fail with
        # "proposal dropped: a configuration change is already pending" (code UNKNOWN).
        results = await asyncio.gather(
            b.member_add(["http://127.0.0.1:1"], True), b.member_add(["http://127.0.0.1:2"], True),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], kverr.TooManyLearners), errors
        assert errors[0].message == "etcdserver: too many learner members in cluster"
        assert sum(m.is_learner for m in await b.member_list()) == 1

    scenario(tmp_path, body)


def test_racing_membership_changes_are_serialised_and_checked_again(tmp_path: Path) -> None:
    async def body(b: NodeBackend) -> None:
        # Two removals of one member: the second is checked after the first and finds no member.
        learner, _ = await b.member_add(["http://127.0.0.1:3"], True)
        results = await asyncio.gather(b.member_remove(learner.id), b.member_remove(learner.id),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["MemberNotFound", "list"], results
        # A removal and an add that race both go through, one after the other (the voter never
        # starts, so this is the last change this one-member cluster can commit).
        learner, _ = await b.member_add(["http://127.0.0.1:4"], True)
        results = await asyncio.gather(b.member_remove(learner.id), b.member_add(["http://127.0.0.1:5"], False),
                                       return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results

    scenario(tmp_path, body)


def test_move_leader_to_the_leader_is_a_no_op(tmp_path: Path) -> None:
    async def body(b: NodeBackend) -> None:
        await b.move_leader(b.member_id)  # etcdctl prints "Leadership transferred from X to X"
        with pytest.raises(kverr.BadLeaderTransferee):
            await b.move_leader(12345)

    scenario(tmp_path, body)


def test_hash_kv_at_the_compact_revision_is_compacted(tmp_path: Path) -> None:
    async def body(b: NodeBackend) -> None:
        for i in range(3):
            await b.put(kv.PutRequest(key=b"k", value=b"%d" % i))
        await b.compact(kv.CompactionRequest(revision=3))
        for rev in (2, 3):
            with pytest.raises(kverr.Compacted):
                await b.hash_kv(rev)
        assert (await b.hash_kv(4)).hash_revision == 4
        with pytest.raises(kverr.FutureRevision):
            await b.hash_kv(5)

    scenario(tmp_path, body)


def test_status_reports_etcds_db_sizes(tmp_path: Path) -> None:
    async def body(b: NodeBackend) -> None:
        fresh = await b.status()
        assert (fresh.db_size, fresh.db_size_in_use) == (BACKEND_EMPTY_BYTES, BACKEND_EMPTY_IN_USE_BYTES)
        await b.put(kv.PutRequest(key=b"k", value=b"x" * 1000))
        after = await b.status()
        assert after.db_size > fresh.db_size + 1000 and after.db_size_in_use > fresh.db_size_in_use + 1000

    scenario(tmp_path, body)
