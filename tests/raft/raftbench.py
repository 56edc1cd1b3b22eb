"""Throughput of the pure core in the in-memory test network (not collected by pytest).

Run: .venv/bin/python tests/raft/raftbench.py [entries] [batch]
"""

from __future__ import annotations

import sys
import time

from raftnet import Network, compact


def main(entries: int = 3000, batch: int = 10) -> None:
    nw = Network(ids=(1, 2, 3))
    nw.campaign(1)
    t0 = time.perf_counter()
    for i in range(entries):
        nw.nodes[1].propose(b"v%d" % i)
        if (i + 1) % batch == 0:
            nw.deliver_all()
        if (i + 1) % 1000 == 0:
            for j in nw.nodes:
                compact(nw, j)
    nw.deliver_all()
    dt = time.perf_counter() - t0
    assert all(len(nw.data(j)) == entries for j in nw.nodes)
    print(f"{entries} entries in batches of {batch}, 3 nodes, one process: {dt:.2f} s, {entries / dt:,.0f} entries/s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
