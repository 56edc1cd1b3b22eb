"""The server drives conclave.machine: a restarted member never reuses a sequence number.

The machine applies a kv command once per (origin, seq). A member counts its starts in the data
dir (seq-epoch) and starts its sequence numbers at ``entry.seq_base(epoch)``: fails if a restarted
member's writes are mistaken for ones already applied (they would time out or be lost).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conclave.kv import types as kv
from conclave.machine import entry
from conclave.server.backend import NodeBackend
from conclave.server.launcher import free_ports
from conclave.server.node import SEQ_EPOCH_FILE, Node
from tests.server.test_server_datadir import _config, _until


def test_a_restarted_member_proposes_with_new_sequence_numbers(tmp_path: Path) -> None:
    ports = free_ports(2)
    d = tmp_path / "m"

    async def run(value: bytes) -> tuple[int, list[bytes]]:
        cfg = _config(d, ports)
        cfg.snapshot_count = 2  # the once-only table also travels through a snapshot
        cfg.request_timeout_ms = 3000
        node = Node(cfg)
        await node.start()
        try:
            await _until(node.has_leader, "a leader")
            b = NodeBackend(node)
            for i in range(4):
                await b.put(kv.PutRequest(key=b"k%d" % i, value=value))
            got = [x.value for x in (await b.range(kv.RangeRequest(key=b"k", range_end=b"l"))).kvs]
            return node.sm.applied_index, got
        finally:
            await node.stop()

    _, first = asyncio.run(run(b"one"))
    assert first == [b"one"] * 4 and (d / SEQ_EPOCH_FILE).read_text() == "1"
    _, second = asyncio.run(run(b"two"))
    assert second == [b"two"] * 4, "a restarted member's writes were taken for duplicates"
    assert (d / SEQ_EPOCH_FILE).read_text() == "2"
    assert entry.seq_base(2) > entry.seq_base(1)
