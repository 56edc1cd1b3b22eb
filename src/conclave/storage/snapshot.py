"""Snapshot files under ``<data-dir>/snap/``.

Theory of operation
-------------------
One file per snapshot, named ``<term:016x>-<index:016x>.snap`` (etcd's naming) so a
listing sorts and tells what each file covers without opening it. Layout::

    header  "CNSNAP01" | index u64 | term u64 | meta_len u32 | data_len u64
            | meta_crc u32 | data_crc u32 | header_crc u32        (all little-endian)
    meta    msgpack of the ConfState
    data    the state-machine image, opaque

A file appears under its final name only through ``replace_durably`` (tmp, fsync,
rename, directory fsync), so a final name always holds a complete write; a checksum
that does not match on load is corruption, never a torn write. The data part can be
tens of MB: it is checksummed in place and written straight from the caller's bytes,
never concatenated into a second buffer.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

from conclave.raft.codec import conf_state_from_tuple, conf_state_to_tuple
from conclave.raft.types import Snapshot, SnapshotMeta
from conclave.storage.base import CorruptionError
from conclave.storage.disk import fsync_directory, replace_durably

MAGIC = b"CNSNAP01"
_HEAD = struct.Struct("<8sQQIQII")
_U32 = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _U32.size
SUFFIX = ".snap"
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


@dataclass(frozen=True, slots=True, order=True)
class SnapshotFile:
    """A snapshot file found in the directory (ordered by index, then term)."""

    index: int
    term: int
    path: Path


def file_name(index: int, term: int) -> str:
    return f"{term:016x}-{index:016x}{SUFFIX}"


def list_snapshots(snap_dir: Path) -> list[SnapshotFile]:
    """Snapshot files in ``snap_dir``, oldest first. Names that do not parse are ignored."""
    found: list[SnapshotFile] = []
    for p in snap_dir.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append(SnapshotFile(int(m.group(2), 16), int(m.group(1), 16), p))
    found.sort()
    return found


def write_snapshot(snap_dir: Path, snapshot: Snapshot) -> Path:
    """Write ``snapshot`` durably under its final name and return the path."""
    meta = msgpack.packb(conf_state_to_tuple(snapshot.meta.conf_state))
    data = snapshot.data
    head = _HEAD.pack(
        MAGIC,
        snapshot.meta.index,
        snapshot.meta.term,
        len(meta),
        len(data),
        zlib.crc32(meta),
        zlib.crc32(data),
    )
    path = snap_dir / file_name(snapshot.meta.index, snapshot.meta.term)
    replace_durably(path, (head, _U32.pack(zlib.crc32(head)), meta, data))
    return path


def read_snapshot(path: Path) -> Snapshot:
    """Load and verify one snapshot file; any mismatch is ``CorruptionError``."""

    def corrupt(offset: int, why: str) -> CorruptionError:
        return CorruptionError(f"corrupt snapshot file {path} at byte offset {offset}: {why}")

    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise corrupt(len(raw), "file shorter than its header")
        (header_crc,) = _U32.unpack_from(raw, _HEAD.size)
        if zlib.crc32(memoryview(raw)[: _HEAD.size]) != header_crc:
            raise corrupt(0, "header checksum mismatch")
        magic, index, term, meta_len, data_len, meta_crc, data_crc = _HEAD.unpack_from(raw)
        if magic != MAGIC:
            raise corrupt(0, f"bad magic {magic!r}")
        meta = f.read(meta_len)
        if len(meta) != meta_len or zlib.crc32(meta) != meta_crc:
            raise corrupt(HEADER_SIZE, "configuration checksum mismatch or short read")
        data = f.read(data_len)
        data_offset = HEADER_SIZE + meta_len
        if len(data) != data_len:
            raise corrupt(data_offset + len(data), f"data truncated ({len(data)} of {data_len} bytes)")
        if zlib.crc32(data) != data_crc:
            raise corrupt(data_offset, "data checksum mismatch")
        if f.read(1):
            raise corrupt(data_offset + data_len, "trailing bytes after the data")
    try:
        conf_state = conf_state_from_tuple(msgpack.unpackb(meta))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise corrupt(HEADER_SIZE, f"undecodable configuration: {exc}") from exc
    return Snapshot(SnapshotMeta(index, term, conf_state), data)


def retain_snapshots(snap_dir: Path, max_snapshots: int) -> list[Path]:
    """Delete the oldest snapshot files beyond ``max_snapshots`` (0 keeps all)."""
    if max_snapshots <= 0:
        return []
    files = list_snapshots(snap_dir)
    doomed = [s.path for s in files[: max(0, len(files) - max_snapshots)]]
    for p in doomed:
        p.unlink()
    if doomed:
        fsync_directory(snap_dir)
    return doomed
