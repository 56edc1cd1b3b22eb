"""Snapshots of a large store are serialised off the event loop, and a hung one is killed.

A member restored from a ~100 MB backup (100k keys of 1 KB) takes a ``Maintenance.Snapshot``
and then a periodic Raft snapshot while a writer keeps putting keys. Serialising that store
takes seconds of Python; on the event loop (the code before ``server/snapshotter.py``) the
loop's largest gap between 10 ms sleeps was that long and no write was acknowledged meanwhile,
so both assertions below fail there. Each snapshot must restore to exactly the store at its
revision (``hash_kv`` equal). Then a snapshot child that hangs is killed at its deadline while
the member keeps serving, and the snapshot is retried and succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conclave.api import pb
from conclave.api.grpc_server import Edge, MaintenanceService
from conclave.cli.snapshot import restore as cli_restore
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.kv.mvcc import Store
from conclave.machine import StateMachine
from conclave.server.backend import NodeBackend
from conclave.server.backup import decode_backup, encode_backup
from conclave.server.launcher import free_ports
from conclave.server.node import Node
from tests.server.test_server_datadir import _config, _until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from snapshot_stall import StallMeter

BIG_KEYS = 100_000
VALUE_BYTES = 1000
STALL_LIMIT_S = 1.0


class Writer:
    """Puts small keys one after another; records when each was acknowledged."""

    def __init__(self, backend: NodeBackend) -> None:
        self.backend = backend
        self.acks: list[float] = []
        self.stopping = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        while not self.stopping:
            await self.backend.put(kv.PutRequest(key=b"w/%08d" % i, value=b"x" * 100))
            self.acks.append(loop.time())
            i += 1

    def acked_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.acks if t0 <= t <= t1)


async def _stop(tasks: list[asyncio.Task[Any]], writer: Writer | None) -> None:
    # Python 3.11's wait_for can swallow a cancel that races with its result, so the writer
    # also has a flag; whatever is still running after the wait is left to asyncio.run.
    if writer is not None:
        writer.stopping = True
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=30)


def _big_data_dir(tmp: Path, cfg: Any, keys: int) -> None:
    """A data dir for ``cfg``'s member whose store holds ``keys`` keys of ``VALUE_BYTES`` each."""
    store = Store()
    value = b"v" * VALUE_BYTES
    for i in range(keys):
        store.apply(kv.PutRequest(key=b"big/%08d" % i, value=value), i + 1)
    index = keys + 10
    backup = tmp / "seed.backup"
    backup.write_bytes(encode_backup(StateMachine(1, [], store=store, applied_index=index).snapshot(), index, 2))
    peer = cfg.initial_advertise_peer_urls[0]
    rc = cli_restore(argparse.Namespace(
        file=str(backup), data_dir=cfg.data_dir, name=cfg.name, initial_cluster=f"{cfg.name}={peer}",
        initial_cluster_token=cfg.initial_cluster_token, initial_advertise_peer_urls=peer))
    assert rc == 0
    backup.unlink()


async def _maintenance_snapshot(backend: NodeBackend) -> tuple[bytes, list[int]]:
    service = MaintenanceService(Edge(backend))
    blob = bytearray()
    remaining = []
    async for msg in service.snapshot(pb.SnapshotRequest(), None):
        blob += msg.blob
        remaining.append(msg.remaining_bytes)
    return bytes(blob), remaining


def _assert_image_is_the_store_at_its_revision(image: bytes, index: int, live: Store) -> int:
    restored = StateMachine.restore(image, index=index).store
    rev = restored.revision
    assert rev <= live.revision
    assert restored.hash_kv(0) == (live.hash_kv(rev)[0], live.compact_revision, rev)
    return rev


def test_a_100_mb_store_snapshots_off_the_loop_while_writes_continue(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "m", free_ports(2))
    cfg.snapshot_count = 10**9  # no periodic snapshot until phase 2
    cfg.request_timeout_ms = 30_000
    _big_data_dir(tmp_path, cfg, BIG_KEYS)

    async def scenario() -> None:
        node = Node(cfg)
        await node.start()
        meter, tasks = StallMeter(), []
        writer: Writer | None = None
        try:
            await _until(node.has_leader, "a leader", timeout_s=30)
            backend = NodeBackend(node)
            writer = Writer(backend)
            tasks = [asyncio.create_task(meter.run()), asyncio.create_task(writer.run())]
            await _until(lambda: len(writer.acks) >= 20, "the first writes", timeout_s=30)
            loop = asyncio.get_running_loop()

            # Phase 1: Maintenance.Snapshot, the path etcdctl snapshot save takes.
            rev_before = node.store.revision
            meter.reset()
            t0 = loop.time()
            blob, remaining = await _maintenance_snapshot(backend)
            t1 = loop.time()
            await asyncio.sleep(0.1)  # let the meter wake up once more: a stall is seen when it ends
            stall, acked = meter.max_gap, writer.acked_between(t0, t1)
            assert len(blob) > 100_000_000
            assert remaining == [len(blob) - 32 * 1024 * (i + 1) for i in range(len(remaining) - 1)] + [0]
            image, index, _term = decode_backup(blob)
            rev = _assert_image_is_the_store_at_its_revision(image, index, node.store)
            assert rev >= rev_before, "the backup is older than the state when it was asked for"
            print(f"Maintenance.Snapshot: {len(blob) / 1e6:.0f} MB in {t1 - t0:.2f} s, "
                  f"max loop stall {stall * 1000:.0f} ms, {acked} writes acked meanwhile")
            assert stall < STALL_LIMIT_S, f"the loop stalled {stall:.2f} s during Maintenance.Snapshot"
            assert acked >= 10, f"only {acked} writes were acknowledged during a {t1 - t0:.1f} s snapshot"

            # Phase 2: the periodic snapshot that compacts the log.
            first_index = node._snapshot_index
            meter.reset()
            t0 = loop.time()
            node.cfg.snapshot_count = 50
            await _until(lambda: node._snapshot_index > first_index, "a periodic snapshot", timeout_s=120)
            t1 = loop.time()
            await asyncio.sleep(0.1)  # let the meter wake up once more: a stall is seen when it ends
            stall, acked = meter.max_gap, writer.acked_between(t0, t1)
            snap = node.raft.log.snapshot
            assert snap is not None and snap.meta.index == node._snapshot_index
            _assert_image_is_the_store_at_its_revision(snap.data, snap.meta.index, node.store)
            print(f"periodic snapshot: {len(snap.data) / 1e6:.0f} MB in {t1 - t0:.2f} s, "
                  f"max loop stall {stall * 1000:.0f} ms, {acked} writes acked meanwhile")
            assert stall < STALL_LIMIT_S, f"the loop stalled {stall:.2f} s during a periodic snapshot"
            assert acked >= 10, f"only {acked} writes were acknowledged during a {t1 - t0:.1f} s snapshot"
        finally:
            await _stop(tasks, writer)
            await node.stop()

    asyncio.run(scenario())


def test_a_hung_snapshot_child_is_killed_at_its_deadline_and_the_member_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path / "m", free_ports(2))
    from conclave.server import snapshotter

    cfg.snapshot_count = 10**9
    original = StateMachine.snapshot

    def hang(self: StateMachine) -> bytes:  # only ever runs in a snapshot child
        time.sleep(3600)
        return b""

    async def scenario() -> None:
        node = Node(cfg)
        await node.start()
        tasks: list[asyncio.Task[Any]] = []
        writer: Writer | None = None
        try:
            await _until(node.has_leader, "a leader")
            backend = NodeBackend(node)
            writer = Writer(backend)
            tasks = [asyncio.create_task(writer.run())]
            node.snapshotter.deadline_override_s = 1.0
            monkeypatch.setattr(snapshotter, "RETRY_FIRST_S", 0.5)
            monkeypatch.setattr(StateMachine, "snapshot", hang)
            loop = asyncio.get_running_loop()

            # A periodic snapshot whose child hangs: killed after 1 s, writes go on meanwhile.
            first_index = node._snapshot_index
            node.cfg.snapshot_count = 20
            await _until(lambda: node.snapshotter.busy, "a snapshot child")
            job = node.snapshotter.job
            assert job is not None
            pid, path = job.pid, job.path
            t0 = loop.time()
            await _until(lambda: node.snapshotter.failures >= 1, "the hung child to be killed", timeout_s=15)
            assert loop.time() - t0 < 8
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # killed and reaped: no zombie left behind
            assert writer.acked_between(t0, loop.time()) >= 5
            assert node._snapshot_index == first_index
            assert not path.exists()  # its unfinished file is gone

            # A Maintenance.Snapshot whose child hangs gets etcd's "request timed out".
            node.cfg.snapshot_count = 10**9
            await _until(lambda: not node.snapshotter.busy, "no child running")
            with pytest.raises(kverr.Timeout):
                await _maintenance_snapshot(backend)
            assert node.has_leader() and not node.fatal
            await backend.put(kv.PutRequest(key=b"still", value=b"serving"))

            # Fixed: the periodic snapshot is retried after its backoff and succeeds.
            monkeypatch.setattr(StateMachine, "snapshot", original)
            node.cfg.snapshot_count = 20
            await _until(lambda: node._snapshot_index > first_index, "the retried snapshot", timeout_s=30)
            snap = node.raft.log.snapshot
            assert snap is not None
            _assert_image_is_the_store_at_its_revision(snap.data, snap.meta.index, node.store)
            node.cfg.snapshot_count = 10**9
            await _until(lambda: not node.snapshotter.busy, "no child running")
            blob, _ = await _maintenance_snapshot(backend)
            image, index, _ = decode_backup(blob)
            _assert_image_is_the_store_at_its_revision(image, index, node.store)
        finally:
            await _stop(tasks, writer)
            await node.stop()

    asyncio.run(scenario())


def test_the_streamed_backup_is_the_same_bytes_as_encode_backup(tmp_path: Path) -> None:
    import io

    from conclave.server import snapshotter

    for size in (0, 10, 300, 70_000, 1 << 17):
        image = os.urandom(size)
        f = io.BytesIO()
        snapshotter.write_backup(f, image, 12345, 7)
        assert f.getvalue() == encode_backup(image, 12345, 7)
        assert decode_backup(f.getvalue()) == (image, 12345, 7)


def test_the_snapshotter_runs_one_child_at_a_time_reports_failures_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conclave.server import snapshotter

    leftover = tmp_path / f"snapshot-1-1{snapshotter.BUILDING_SUFFIX}"
    leftover.write_bytes(b"from a crash")

    def ok(f: Any) -> None:
        f.write(b"image")

    def boom(f: Any) -> None:
        raise ValueError("no image today")

    async def scenario() -> None:
        snap = snapshotter.Snapshotter(tmp_path)
        assert leftover.exists()  # not swept before this member starts a child
        job = snap.start(ok, what="snapshot")
        assert not leftover.exists()
        with pytest.raises(snapshotter.SnapshotBusy):
            snap.start(ok, what="snapshot")
        queued = asyncio.create_task(snap.start_when_idle(ok, what="backup"))
        await asyncio.sleep(0)
        assert not queued.done()  # waits behind the running child
        path = await job.wait()
        assert path.read_bytes() == b"image" and snap.may_start()
        path.unlink()
        second = await queued
        (await second.wait()).unlink()

        job = snap.start(boom, what="snapshot")
        with pytest.raises(snapshotter.SnapshotError, match="no image today"):
            await job.wait()
        assert not snap.may_start() and snap.failures == 1  # backoff before the next periodic try
        assert not list(tmp_path.iterdir())  # neither its file nor its error note is left

        # A stream its reader abandons after the first chunk drops its file at aclose.
        snap.not_before = 0.0

        async def start() -> snapshotter.Job:
            return snap.start(lambda f: f.write(b"x" * 100_000), what="backup")

        stream = snapshotter.FileStream(start, 32 * 1024)
        assert len(await anext(stream)) == 32 * 1024 and stream.size == 100_000
        assert len(list(tmp_path.iterdir())) == 1
        await stream.aclose()
        assert not list(tmp_path.iterdir())

        # A fork that fails (no memory, no processes) is an error and a backoff, not a crash.
        def no_fork() -> int:
            raise OSError(12, "Cannot allocate memory")

        snap.failures, snap.not_before = 0, 0.0
        monkeypatch.setattr(os, "fork", no_fork)
        with pytest.raises(snapshotter.SnapshotError, match="cannot fork"):
            snap.start(ok, what="snapshot")
        assert not snap.busy and not snap.may_start() and snap.failures == 1

    asyncio.run(scenario())
