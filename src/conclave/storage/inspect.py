"""``python -m conclave.storage.inspect DATA_DIR``: what a node would recover, read-only.

Prints the segments, the snapshot, the hard state and a summary of the entries that a
restart would load, without changing anything (a torn tail is reported, not cut).
Exit status: 0 recovered, 1 corruption (the message names file and byte offset), 2 bad
usage or an unreadable directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from conclave.storage.base import CorruptionError
from conclave.storage.wal import recover, wal_dir_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conclave.storage.inspect",
        description="Show what a Conclave node would recover from DATA_DIR (read-only).",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="a node's data directory (holds wal/ and snap/)")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if not wal_dir_of(data_dir).is_dir():
        print(f"error: {data_dir} holds no wal/ directory", file=sys.stderr)
        return 2
    try:
        found = recover(data_dir)
    except CorruptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {data_dir}: {exc}", file=sys.stderr)
        return 2
    image = found.image
    print(f"data dir:   {data_dir}")
    for seg in found.segments:
        print(f"segment:    {seg.path.name}  {seg.path.stat().st_size} bytes")
    if found.torn_offset is not None:
        print(f"torn tail:  {found.segments[-1].path.name} at byte offset {found.torn_offset} ({found.torn_reason})")
    for p in found.ignored_snapshots:
        print(f"ignored:    {p.name} (no marker in the WAL)")
    snap = image.snapshot
    if snap is None:
        print("snapshot:   none")
    else:
        print(f"snapshot:   index {snap.meta.index} term {snap.meta.term} ({len(snap.data)} bytes)")
    hs = image.hard_state
    print(f"hard state: term {hs.term} vote {hs.vote} commit {hs.commit}")
    ents = image.entries
    if ents:
        print(f"entries:    {len(ents)} (index {ents[0].index}..{ents[-1].index}, last term {ents[-1].term})")
    else:
        print("entries:    0")
    cs = image.conf_state
    print(f"bootstrap:  voters {sorted(cs.voters)} learners {sorted(cs.learners)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
