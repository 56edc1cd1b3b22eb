"""How long a snapshot of a large store stops the event loop: on the loop (old) vs a child (new).

Builds a store of ``--keys`` keys of ``--value-bytes`` each (100k x 1 KB = ~100 MB image) in
this process, then, with a task measuring the largest gap between 10 ms sleeps:

* old: the Maintenance.Snapshot path before ``server/snapshotter.py``: serialise the state
  machine and encode the backup on the loop;
* new: ``Snapshotter.start`` forks a child that writes the backup file, the loop waits on a
  pidfd, then the file is read in a worker thread (as Maintenance.Snapshot streams it).

Prints one line per path: wall time, max loop stall, and for the new path the ``fork()`` call.
Usage: .venv/bin/python bench/snapshot_stall.py [--keys 100000] [--value-bytes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from conclave.kv import types as kv
from conclave.kv.mvcc import Store
from conclave.machine import StateMachine
from conclave.server.backup import decode_backup, encode_backup
from conclave.server.snapshotter import Snapshotter, read_file, write_backup


class StallMeter:
    """The largest gap between the wake-ups of a task sleeping 10 ms, since ``reset`` (also used by
    tests/server/test_server_snapshot_offloop.py)."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._last = 0.0

    def reset(self) -> None:
        """Start a new window now (a gap in progress before it does not count)."""
        self.max_gap = 0.0
        self._last = asyncio.get_running_loop().time()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            self.max_gap = max(self.max_gap, now - self._last - 0.01)
            self._last = now


def build(keys: int, value_bytes: int) -> StateMachine:
    store = Store()
    value = b"v" * value_bytes
    for i in range(keys):
        store.apply(kv.PutRequest(key=b"big/%08d" % i, value=value), i + 1)
    return StateMachine(1, [], store=store, applied_index=keys)


async def measure(sm: StateMachine, work_dir: Path) -> None:
    meter = StallMeter()
    task = asyncio.create_task(meter.run())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()

    meter.reset()
    t0 = loop.time()
    old = encode_backup(sm.snapshot(), sm.applied_index, 1)
    wall = loop.time() - t0
    await asyncio.sleep(0.05)
    print(f"old (on the loop): {len(old) / 1e6:.0f} MB backup in {wall:.2f} s, "
          f"max loop stall {meter.max_gap * 1000:.0f} ms")

    snap = Snapshotter(work_dir)

    def write(f: object) -> None:
        write_backup(f, sm.snapshot(), sm.applied_index, 1)  # type: ignore[arg-type]

    meter.reset()
    t0 = loop.time()
    f0 = time.perf_counter()
    job = snap.start(write, what="backup")
    fork_ms = 1000 * (time.perf_counter() - f0)
    path = await job.wait()
    new = await read_file(path)
    path.unlink()
    wall = loop.time() - t0
    await asyncio.sleep(0.05)
    print(f"new (forked child): {len(new) / 1e6:.0f} MB backup in {wall:.2f} s, max loop stall "
          f"{meter.max_gap * 1000:.0f} ms (fork() itself {fork_ms:.0f} ms)")
    assert new == old and decode_backup(new)[1] == sm.applied_index
    task.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-bytes", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sm = build(args.keys, args.value_bytes)
    print(f"built {args.keys} keys x {args.value_bytes} B in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(measure(sm, Path(d)))


if __name__ == "__main__":
    main()
