"""Backups: the Maintenance.Snapshot stream and the file format ``snapshot restore`` reads.

A backup file is ``MAGIC | u64 length | msgpack body | zero padding | sha256``: the body
holds the state machine image and the members at one applied index. The padding makes
the size before the digest a multiple of 512 bytes and the digest is the SHA-256 of
everything before it: etcdctl's ``snapshot save`` checks exactly that shape (it expects a
bbolt file of 512-byte pages followed by a sha256), so it accepts and verifies a Conclave
backup. ``conclave snapshot restore`` (not etcdutl) reads it back.
"""

from __future__ import annotations

import hashlib
import struct

import msgpack

MAGIC = b"CONCLAVE-BACKUP\x01"


class BackupError(ValueError):
    pass


def encode_backup(state: bytes, index: int, term: int) -> bytes:
    body = msgpack.packb({"state": state, "index": index, "term": term}, use_bin_type=True)
    head = MAGIC + struct.pack(">Q", len(body))
    raw = head + body
    raw += b"\0" * (-len(raw) % 512)
    return raw + hashlib.sha256(raw).digest()


def decode_backup(data: bytes) -> tuple[bytes, int, int]:
    """Returns (state image, raft index, raft term); raises BackupError on any damage."""
    if len(data) < len(MAGIC) + 8 + 32 or (len(data) - 32) % 512:
        raise BackupError("not a Conclave backup (bad size)")
    raw, digest = data[:-32], data[-32:]
    if hashlib.sha256(raw).digest() != digest:
        raise BackupError("backup checksum mismatch: the file is corrupt")
    if not raw.startswith(MAGIC):
        raise BackupError("not a Conclave backup (bad magic)")
    (length,) = struct.unpack_from(">Q", raw, len(MAGIC))
    body = raw[len(MAGIC) + 8 : len(MAGIC) + 8 + length]
    try:
        obj = msgpack.unpackb(body, raw=False)
        return bytes(obj["state"]), int(obj["index"]), int(obj["term"])
    except Exception as exc:
        raise BackupError(f"backup body is malformed: {exc}") from None

