"""Child process for test_wal_crash: appends and syncs batches until it is killed.

Prints ``start <last>`` once recovered, then for each batch ``sync <last>`` before
saving and ``ack <last>`` after ``sync()`` returned (the batch is acknowledged).
Entry data is a function of the index, so the parent can check every byte.
"""

from __future__ import annotations

import random
import sys

from conclave.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from conclave.storage.wal import DiskStorage


def data_for(index: int) -> bytes:
    head = f"{index}|".encode()
    size = 20 + index % 300
    return (head * (size // len(head) + 1))[:size]


def snapshot_data(index: int) -> bytes:
    return f"image@{index};".encode() * 200


def main(data_dir: str, seed: int) -> None:
    storage = DiskStorage(data_dir, segment_bytes=64 * 1024, max_wals=3, max_snapshots=2)
    state = storage.load()
    base = 0 if state.snapshot is None else state.snapshot.meta.index
    last = state.entries[-1].index if state.entries else base
    term = state.hard_state.term + 1
    rng = random.Random(seed)
    print(f"start {last}", flush=True)
    while True:
        n = rng.choice([1, 1, 3, 16, 64, 256])
        hi = last + n
        batch = [Entry(term, i, data=data_for(i)) for i in range(last + 1, hi + 1)]
        snap = None
        if last > 0 and rng.random() < 0.04:
            snap = Snapshot(SnapshotMeta(last, term, ConfState(voters=frozenset({1}))), snapshot_data(last))
        print(f"sync {hi}", flush=True)
        storage.save(HardState(term, 1, hi), batch, snap)
        storage.sync()
        print(f"ack {hi}", flush=True)
        last = hi


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
