"""A member refuses to start on a corrupted WAL and says which file and where."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, wait_for


def test_member_refuses_a_corrupted_log(cluster_factory: Callable[..., ProcessCluster]) -> None:
    c = cluster_factory(1)
    cl = Etcd(c.endpoints[0])
    wait_for(lambda: cl.put(b"warm", b"up") is not None, 20, "first write")
    for i in range(200):
        cl.put(b"k%03d" % i, b"v" * 100)
    cl.close()
    m = c.members[0]
    assert m.stop() == 0
    segments = sorted((m.data_dir / "wal").glob("*.wal"))
    assert segments, "no WAL segment written"
    seg = segments[-1]
    data = bytearray(seg.read_bytes())
    middle = len(data) // 2  # well before the tail: damage there is corruption, not a torn write
    data[middle] ^= 0xFF
    seg.write_bytes(bytes(data))
    done = subprocess.run(m.argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "corrupt" in done.stderr and seg.name in done.stderr and "offset" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
