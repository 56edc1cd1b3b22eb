"""Filesystem primitives the WAL and the snapshot store share.

Theory of operation: a file is durable only after its data is fsynced; a name in a
directory (a create, a rename, an unlink) is durable only after the directory itself is
fsynced. ``replace_durably`` is the one way a whole file appears under its final name:
write to ``<name>.tmp``, fsync, rename, fsync the directory, so a reader never sees a
half-written file under a final name. Nothing here knows about records or Raft.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TMP_SUFFIX = ".tmp"

# fdatasync is enough for appends (it flushes the size change too) and skips the
# mtime update that fsync would also force; use fsync where it does not exist.
sync_data = getattr(os, "fdatasync", os.fsync)


def fsync_directory(path: Path) -> None:
    """Make creations, renames and removals of names in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written (a regular file may take a short write)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def replace_durably(path: Path, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
    """Write ``chunks`` to ``path`` atomically and durably: tmp name, fsync, rename, dir fsync."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def make_directory(path: Path) -> None:
    """Create ``path`` (and parents) if missing, durably."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_directory(d.parent)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")


def remove_tmp_files(path: Path) -> list[Path]:
    """Remove leftovers of interrupted ``replace_durably`` calls; return what was removed."""
    removed = [p for p in path.iterdir() if p.name.endswith(TMP_SUFFIX)]
    for p in removed:
        p.unlink()
    if removed:
        fsync_directory(path)
    return removed


def is_zero_from(fd: int, offset: int, chunk_bytes: int = 1 << 20) -> bool:
    """Whether every byte of the file from ``offset`` to its end is zero.

    A power cut can leave a file longer than its written data, the gap read back as
    zeros; such a tail is torn, not corrupt.
    """
    while True:
        chunk = os.pread(fd, chunk_bytes, offset)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        offset += len(chunk)
