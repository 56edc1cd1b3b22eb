"""The write-ahead log: ``DiskStorage``, the durable ``RaftStorage``.

Theory of operation
-------------------
Layout of a data directory::

    <data-dir>/wal/<seq:016x>-<first_index:016x>.wal   append-only segments
    <data-dir>/snap/<term:016x>-<index:016x>.snap       snapshots (see snapshot.py)
    <data-dir>/bootstrap.conf                           initial configuration
    <data-dir>/lock                                     flock: one process per dir

A segment is a sequence of records, each framed as::

    length u32 | type u8 | payload_crc u32 | header_crc u32 | payload[length]

``header_crc`` covers the first nine bytes, so a damaged length is recognised as
damage instead of sending the reader off to a wrong offset; ``payload_crc`` covers the
payload. Checksums are zlib's CRC-32: stdlib, C speed, and it detects every single-bit
error and every burst up to 32 bits, which is what a torn write or a flipped bit on a
disk produces. (CRC-32C would need a C extension from PyPI for the same guarantees.)

Record types: ENTRY (term, index, entry type, data), HARD_STATE (term, vote, commit)
and SNAPSHOT (index, term: a marker saying that snapshot file is part of the log).
Each segment starts with the hard state and the newest snapshot marker at the time it
was cut, so recovery can begin at any segment. A segment's name carries its sequence
number and the index the log would next append when it was cut: no entry at or after
that index existed before the segment, which is what lets a snapshot release every
older segment.

Writing: ``save`` only encodes records into a buffer (cheap, on the caller's thread);
``sync`` writes the buffer with one ``write`` and one fdatasync (group commit), after
first writing any snapshot file durably (a snapshot file is durable before its marker
can be). Then it cuts a new segment if the current one is full and releases segments
and snapshot files beyond retention. Contract: the driver may call ``save`` on the
event loop thread and ``sync`` on one worker thread, but never both at once; a
violation raises ``StorageError`` instead of interleaving bytes. What was saved but
not synced is lost at ``close`` or a crash, exactly like ``MemoryStorage``. The storage
keeps no copy of the log in memory: the first ``load`` hands out what opening
recovered, a later one recovers the directory again (read-only).
An optional ``SyncObserver`` is told, after each sync, the bytes and entries it made durable
and how long the fdatasync and the snapshot files took, timed on the observer's own clock
(this module reads none): that is how the member's metrics see the disk.

Conflicting suffix truncation needs no record of its own: an ENTRY whose index is
not past the end of the log replaces the suffix from that index, in the log and in
recovery alike, so the stale entries are never returned.

Recovery (``recover``): pick the newest snapshot file, verify it, replay the segments
from the one that covers its index, streaming each segment in bounded chunks and
verifying every checksum. A snapshot whose marker never reached the WAL (crash between
the snapshot rename and the WAL fsync) is ignored and the next older one is used.
Damage in the last segment that nothing valid follows (a partial record, or a bad
record that ends the file, or a zero-filled end) is a torn tail: truncated, logged.
Damage anywhere else is ``CorruptionError`` naming the file and byte offset: the node
must refuse to start, since dropping it would drop data that was fsynced.
"""

from __future__ import annotations

import fcntl
import gc
import itertools
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from zlib import crc32

import msgpack

from conclave.raft.codec import conf_state_from_tuple, conf_state_to_tuple
from conclave.raft.types import COUNTER_MAX, U64_MAX, ConfState, Entry, EntryType, HardState, PersistedState, Snapshot
from conclave.storage import snapshot as snapfile
from conclave.storage.base import CorruptionError, RaftStorage, StorageError
from conclave.storage.disk import (
    fsync_directory,
    is_zero_from,
    make_directory,
    remove_tmp_files,
    replace_durably,
    sync_data,
    write_all,
)

log = logging.getLogger("conclave.storage")

MIB = 1024 * 1024
SEGMENT_BYTES_DEFAULT = 64 * MIB
SEGMENT_BYTES_MIN = 1024
RECORD_PAYLOAD_BYTES_MAX = 256 * MIB
READ_CHUNK_BYTES = 1 * MIB

_HEADER_BODY = struct.Struct("<IBI")  # payload length, record type, payload crc
_HEADER = struct.Struct("<IBII")  # ... and the crc of the three fields above
HEADER_SIZE = _HEADER.size
_U32 = struct.Struct("<I")
_ENTRY_HEAD = struct.Struct("<QQB")  # term, index, entry type
_HARD_STATE = struct.Struct("<QQQ")  # term, vote, commit
_SNAP_MARK = struct.Struct("<QQ")  # index, term
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_ENTRY_TYPES = {int(t): t for t in EntryType}
BOOTSTRAP_MAGIC = b"CNBOOT01"


@dataclass(frozen=True, slots=True)
class SyncStats:
    """What one ``sync`` made durable, and how long its parts took (on the observer's clock)."""

    wal_bytes: int
    entries: int
    fsync_s: float
    snapshots: int = 0
    snapshot_s: float = 0.0


class SyncObserver(Protocol):
    """Told about every sync that wrote something (metrics). This module reads no clock: the
    observer lends its own. Called on the thread that runs ``sync``; it must not raise."""

    def now(self) -> float: ...

    def synced(self, stats: SyncStats) -> None: ...


class RecordType(IntEnum):
    ENTRY = 1
    HARD_STATE = 2
    SNAPSHOT = 3


_ENTRY = int(RecordType.ENTRY)
_HARD = int(RecordType.HARD_STATE)
_SNAP = int(RecordType.SNAPSHOT)


# ---------------------------------------------------------------------------------
# Encoding


def encode_record(buf: bytearray, rtype: int, payload: bytes) -> None:
    body = _HEADER_BODY.pack(len(payload), rtype, crc32(payload))
    buf += body
    buf += _U32.pack(crc32(body))
    buf += payload


def _refuse(what: str, values: tuple[int, ...]) -> StorageError:
    return StorageError(
        f"refusing to write {what} {values}: every term and index must be in [0, {COUNTER_MAX}] "
        f"and every node id in [0, {U64_MAX}] (the WAL and the wire share one u64 width)"
    )


def _check_widths(hs: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None) -> None:
    """Refuse (StorageError) what the u64 records cannot hold or the core could never increment."""
    if hs is not None and not (
        0 <= hs.term <= COUNTER_MAX and 0 <= hs.vote <= U64_MAX and 0 <= hs.commit <= COUNTER_MAX
    ):
        raise _refuse("hard state (term, vote, commit)", (hs.term, hs.vote, hs.commit))
    for e in entries:
        if not (0 <= e.term <= COUNTER_MAX and 0 <= e.index <= COUNTER_MAX):
            raise _refuse("entry (term, index)", (e.term, e.index))
    if snapshot is not None:
        meta = snapshot.meta
        if not (0 <= meta.index <= COUNTER_MAX and 0 <= meta.term <= COUNTER_MAX):
            raise _refuse("snapshot (index, term)", (meta.index, meta.term))


def encode_entry(buf: bytearray, e: Entry) -> None:
    # The range check keeps a value the core could never increment out of the log; the
    # struct.error catch turns anything else unencodable into a refusal, not a crash.
    if e.term > COUNTER_MAX or e.index > COUNTER_MAX:
        raise _refuse("entry (term, index)", (e.term, e.index))
    try:
        head = _ENTRY_HEAD.pack(e.term, e.index, e.type)
    except struct.error:
        raise _refuse("entry (term, index)", (e.term, e.index)) from None
    data = e.data
    body = _HEADER_BODY.pack(_ENTRY_HEAD.size + len(data), _ENTRY, crc32(data, crc32(head)))
    buf += body
    buf += _U32.pack(crc32(body))
    buf += head
    buf += data


def encode_hard_state(buf: bytearray, hs: HardState) -> None:
    values = (hs.term, hs.vote, hs.commit)
    if hs.term > COUNTER_MAX or hs.commit > COUNTER_MAX:
        raise _refuse("hard state (term, vote, commit)", values)
    try:
        payload = _HARD_STATE.pack(*values)
    except struct.error:
        raise _refuse("hard state (term, vote, commit)", values) from None
    encode_record(buf, _HARD, payload)


def encode_snapshot_marker(buf: bytearray, index: int, term: int) -> None:
    if index > COUNTER_MAX or term > COUNTER_MAX:
        raise _refuse("snapshot marker (index, term)", (index, term))
    try:
        payload = _SNAP_MARK.pack(index, term)
    except struct.error:
        raise _refuse("snapshot marker (index, term)", (index, term)) from None
    encode_record(buf, _SNAP, payload)


# ---------------------------------------------------------------------------------
# Segments and scanning


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    seq: int
    first_index: int
    path: Path

    @staticmethod
    def name(seq: int, first_index: int) -> str:
        return f"{seq:016x}-{first_index:016x}.wal"


def list_segments(wal_dir: Path) -> list[Segment]:
    """Segments in ``wal_dir`` in sequence order; checks the sequence has no hole."""
    found: list[Segment] = []
    for p in wal_dir.iterdir():
        m = _SEGMENT_NAME.match(p.name)
        if m:
            found.append(Segment(int(m.group(1), 16), int(m.group(2), 16), p))
    found.sort()
    for a, b in itertools.pairwise(found):
        if b.seq != a.seq + 1:
            raise CorruptionError(
                f"corrupt WAL in {wal_dir} at byte offset 0 of {b.path.name}: "
                f"segment sequence jumps from {a.path.name} (segments missing)"
            )
    return found


@dataclass(slots=True)
class Damage:
    """Where a scan stopped early, and whether that place can be a torn tail."""

    offset: int
    reason: str
    tail_like: bool


class SegmentScan:
    """Streams the records of one segment; after iteration ``end`` and ``damage`` tell
    where and why it stopped. Holds at most one read chunk plus the current record.

    ``records()`` yields ``(offset, type, buf, start, end)``: the payload is
    ``buf[start:end]``, valid until the next step.
    """

    def __init__(self, path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.end = 0
        self.damage: Damage | None = None

    def records(self) -> Iterator[tuple[int, int, bytes, int, int]]:
        with open(self.path, "rb", buffering=0) as f:
            yield from self._scan(f)

    def _scan(self, f: BinaryIO) -> Iterator[tuple[int, int, bytes, int, int]]:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        chunk = self.chunk_bytes
        buf = b""
        mv = memoryview(buf)
        base = 0  # file offset of buf[0]
        pos = 0
        header_size = HEADER_SIZE
        unpack = _HEADER.unpack_from
        while True:
            if len(buf) - pos < header_size:
                buf = buf[pos:] + _read(f, chunk)
                mv = memoryview(buf)
                base += pos
                pos = 0
                if len(buf) < header_size:
                    self.end = base
                    if buf:
                        self.damage = Damage(base, f"partial record header ({len(buf)} bytes)", True)
                    return
            length, rtype, payload_crc, header_crc = unpack(buf, pos)
            if crc32(mv[pos : pos + 9]) != header_crc:
                self.end = base + pos
                zero = is_zero_from(fd, base + pos)
                self.damage = Damage(base + pos, "record header checksum mismatch", zero)
                return
            if length > RECORD_PAYLOAD_BYTES_MAX:
                self.end = base + pos
                self.damage = Damage(base + pos, f"record length {length} over the limit", False)
                return
            start = pos + header_size
            end = start + length
            if end > len(buf):
                buf = buf[pos:] + _read(f, max(chunk, end - pos - (len(buf) - pos)))
                mv = memoryview(buf)
                base += pos
                pos = 0
                start = header_size
                end = start + length
                if end > len(buf):
                    self.end = base
                    self.damage = Damage(base, f"partial record ({len(buf)} of {end} bytes)", True)
                    return
            if crc32(mv[start:end]) != payload_crc:
                self.end = base + pos
                tail = base + end == size or is_zero_from(fd, base + end)
                self.damage = Damage(base + pos, "record payload checksum mismatch", tail)
                return
            yield base + pos, rtype, buf, start, end
            pos = end


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# ---------------------------------------------------------------------------------
# The log image: what load() returns


@dataclass(slots=True)
class LogImage:
    """What recovery rebuilt: hard state, snapshot, the entries after it, bootstrap config."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    conf_state: ConfState = ConfState()

    @property
    def snapshot_index(self) -> int:
        return 0 if self.snapshot is None else self.snapshot.meta.index

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    def persisted(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries), self.conf_state)


# ---------------------------------------------------------------------------------
# Recovery


@dataclass(slots=True)
class Recovery:
    """What ``recover`` found: the image, the segments, and a torn tail to cut off."""

    image: LogImage
    segments: list[Segment]
    torn_offset: int | None = None
    torn_reason: str = ""
    ignored_snapshots: list[Path] = field(default_factory=list)


def wal_dir_of(data_dir: Path) -> Path:
    return data_dir / "wal"


def snap_dir_of(data_dir: Path) -> Path:
    return data_dir / "snap"


def bootstrap_path_of(data_dir: Path) -> Path:
    return data_dir / "bootstrap.conf"


def recover(data_dir: Path) -> Recovery:
    """Read what the directory holds, without changing it. Raises ``CorruptionError``."""
    wal_dir = wal_dir_of(data_dir)
    snap_dir = snap_dir_of(data_dir)
    conf_state = read_bootstrap(bootstrap_path_of(data_dir))
    segments = list_segments(wal_dir) if wal_dir.is_dir() else []
    snaps = snapfile.list_snapshots(snap_dir) if snap_dir.is_dir() else []
    if not segments:
        if snaps:
            raise CorruptionError(f"corrupt data dir {data_dir}: snapshots exist but the WAL in {wal_dir} is missing")
        return Recovery(LogImage(conf_state=conf_state), [])
    ignored: list[Path] = []
    for candidate in reversed(snaps):
        snap = snapfile.read_snapshot(candidate.path)
        if (snap.meta.index, snap.meta.term) != (candidate.index, candidate.term):
            raise CorruptionError(
                f"corrupt snapshot file {candidate.path} at byte offset 0: it holds index {snap.meta.index} "
                f"term {snap.meta.term}, not what its name says"
            )
        found = _replay(segments, snap)
        if found is not None:
            found.image.conf_state = conf_state
            found.ignored_snapshots = ignored
            return found
        log.warning("snapshot %s has no marker in the WAL (crash before the WAL sync); ignoring it", candidate.path)
        ignored.append(candidate.path)
    found = _replay(segments, None)
    assert found is not None
    found.image.conf_state = conf_state
    found.ignored_snapshots = ignored
    return found


def _replay(segments: list[Segment], snap: Snapshot | None) -> Recovery | None:
    """Replay from the segment covering ``snap``; None if ``snap``'s marker is absent."""
    # A million new Entry objects would trigger dozens of full collections that find
    # nothing to free (about a third of the recovery time); none are cyclic garbage.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _replay_segments(segments, snap)
    finally:
        if was_enabled:
            gc.enable()


def _replay_segments(segments: list[Segment], snap: Snapshot | None) -> Recovery | None:
    snap_index = 0 if snap is None else snap.meta.index
    start = 0
    for i, seg in enumerate(segments):
        if seg.first_index <= snap_index + 1:
            start = i
    first_seg = segments[start]
    if first_seg.first_index > snap_index + 1:
        what = "no snapshot" if snap is None else f"the snapshot at index {snap_index}"
        raise CorruptionError(
            f"corrupt WAL: {first_seg.path} at byte offset 0 begins at index {first_seg.first_index} "
            f"but {what} covers the entries before it (segments missing)"
        )
    image = LogImage(snapshot=snap)
    entries = image.entries
    append = entries.append
    hard_state = image.hard_state
    marker_seen = snap is None
    last = snap_index
    first_kept = snap_index + 1
    entry_head = _ENTRY_HEAD.unpack_from
    entry_head_size = _ENTRY_HEAD.size
    entry_types = _ENTRY_TYPES
    torn_offset: int | None = None
    torn_reason = ""
    replayed = segments[start:]
    for n, seg in enumerate(replayed):
        scan = SegmentScan(seg.path)
        for offset, rtype, buf, start_b, end_b in scan.records():
            if rtype == _ENTRY:
                if end_b - start_b < entry_head_size:
                    raise _corrupt(seg.path, offset, "entry record too short")
                term, index, etype = entry_head(buf, start_b)
                if index <= snap_index:
                    # Covered by the snapshot, but writing it truncated the suffix after it:
                    # every entry replayed so far (all past the snapshot) is stale.
                    if entries:
                        entries.clear()
                        last = snap_index
                    continue
                et = entry_types.get(etype)
                if et is None:
                    raise _corrupt(seg.path, offset, f"unknown entry type {etype}")
                e = Entry(term, index, et, buf[start_b + entry_head_size : end_b])
                if index == last + 1:
                    append(e)
                elif index <= last:
                    # A conflicting suffix was overwritten: drop the stale entries.
                    del entries[index - first_kept :]
                    append(e)
                else:
                    raise _corrupt(seg.path, offset, f"entry index {index} leaves a gap after {last}")
                last = index
            elif rtype == _HARD:
                if end_b - start_b != _HARD_STATE.size:
                    raise _corrupt(seg.path, offset, "hard state record of the wrong size")
                hs = HardState(*_HARD_STATE.unpack_from(buf, start_b))
                if hs.term > COUNTER_MAX or hs.commit > COUNTER_MAX:
                    # Written before terms were range-checked (a forged huge term): a member
                    # holding it could never campaign again, so say so instead of stalling.
                    raise _corrupt(
                        seg.path, offset,
                        f"hard state {hs} holds a term or commit beyond {COUNTER_MAX}, the largest a member accepts",
                    )
                if offset == 0 and n > 0 and hs != hard_state:
                    # A segment starts with the hard state its predecessor ended with.
                    prev = replayed[n - 1].path
                    raise _corrupt(
                        prev,
                        prev.stat().st_size,
                        f"ends with hard state {hard_state} but {seg.path.name} begins with {hs}: records missing",
                    )
                hard_state = hs
            elif rtype == _SNAP:
                if end_b - start_b != _SNAP_MARK.size:
                    raise _corrupt(seg.path, offset, "snapshot marker of the wrong size")
                m_index, m_term = _SNAP_MARK.unpack_from(buf, start_b)
                if m_index > snap_index:
                    raise CorruptionError(
                        f"corrupt data dir: {seg.path} at byte offset {offset} marks a snapshot at index "
                        f"{m_index} term {m_term} whose file is missing or unreadable"
                    )
                if snap is not None and (m_index, m_term) == (snap.meta.index, snap.meta.term):
                    marker_seen = True
            else:
                raise _corrupt(seg.path, offset, f"unknown record type {rtype}")
        damage = scan.damage
        if damage is not None:
            if n != len(replayed) - 1 or not damage.tail_like:
                raise _corrupt(seg.path, damage.offset, damage.reason)
            torn_offset = damage.offset
            torn_reason = damage.reason
        elif n != len(replayed) - 1 and last != replayed[n + 1].first_index - 1:
            # The next segment was cut when the log ended at its first index - 1.
            raise _corrupt(
                seg.path,
                scan.end,
                f"segment ends at log index {last} but {replayed[n + 1].path.name} was cut at "
                f"{replayed[n + 1].first_index - 1}: records missing at its end",
            )
    if not marker_seen:
        return None
    image.hard_state = hard_state
    return Recovery(image, segments, torn_offset, torn_reason)


def _corrupt(path: Path, offset: int, why: str) -> CorruptionError:
    return CorruptionError(f"corrupt WAL record in {path} at byte offset {offset}: {why}")


# ---------------------------------------------------------------------------------
# Bootstrap configuration


def read_bootstrap(path: Path) -> ConfState:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ConfState()
    head = len(BOOTSTRAP_MAGIC) + _U32.size
    if len(raw) < head or raw[: len(BOOTSTRAP_MAGIC)] != BOOTSTRAP_MAGIC:
        raise CorruptionError(f"corrupt bootstrap file {path} at byte offset 0: bad header")
    (want,) = _U32.unpack_from(raw, len(BOOTSTRAP_MAGIC))
    body = raw[head:]
    if crc32(body) != want:
        raise CorruptionError(f"corrupt bootstrap file {path} at byte offset {head}: checksum mismatch")
    try:
        return conf_state_from_tuple(msgpack.unpackb(body))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptionError(f"corrupt bootstrap file {path} at byte offset {head}: {exc}") from exc


def write_bootstrap(path: Path, conf_state: ConfState) -> None:
    body = msgpack.packb(conf_state_to_tuple(conf_state))
    replace_durably(path, (BOOTSTRAP_MAGIC, _U32.pack(crc32(body)), body))


# ---------------------------------------------------------------------------------
# DiskStorage


class DiskStorage:
    """Segmented, checksummed WAL plus snapshot files; satisfies ``RaftStorage``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        segment_bytes: int = SEGMENT_BYTES_DEFAULT,
        max_snapshots: int = 5,
        max_wals: int = 5,
        observer: SyncObserver | None = None,
    ) -> None:
        if segment_bytes < SEGMENT_BYTES_MIN:
            raise ValueError(f"segment_bytes must be at least {SEGMENT_BYTES_MIN}, got {segment_bytes}")
        if max_snapshots < 0 or max_wals < 0:
            raise ValueError("max_snapshots and max_wals must be >= 0 (0 keeps everything)")
        self._data_dir = Path(data_dir)
        if self._data_dir.exists() and not self._data_dir.is_dir():
            raise StorageError(f"data dir {self._data_dir} exists and is not a directory")
        self._wal_dir = wal_dir_of(self._data_dir)
        self._snap_dir = snap_dir_of(self._data_dir)
        self._segment_bytes = segment_bytes
        self._max_snapshots = max_snapshots
        self._max_wals = max_wals
        self._guard = threading.Lock()
        self._fd = -1
        self._lock_fd = -1
        self._failed: str | None = None
        self._closed = False
        self._observer = observer
        self._unsynced_entries = 0

        try:
            make_directory(self._wal_dir)
            make_directory(self._snap_dir)
            self._lock_fd = os.open(self._data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot use data dir {self._data_dir}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StorageError(f"data dir {self._data_dir} is in use by another DiskStorage") from None
        try:
            self._open()
        except OSError as exc:
            self._release_fds()
            raise StorageError(f"cannot recover data dir {self._data_dir}: {exc}") from exc
        except BaseException:
            self._release_fds()
            raise

    def _open(self) -> None:
        for p in remove_tmp_files(self._wal_dir) + remove_tmp_files(self._snap_dir):
            log.warning("removed leftover temporary file %s", p)
        found = recover(self._data_dir)
        for p in found.ignored_snapshots:
            p.unlink()
        if found.ignored_snapshots:
            fsync_directory(self._snap_dir)
        image = found.image
        # Handed out by the first load(); later loads read the directory again, so the
        # storage never pins a second copy of the log in memory.
        self._recovered: PersistedState | None = image.persisted()
        # What the disk holds once every pending save is synced ("tip") and what it holds
        # now ("durable"): enough to check new saves and to write segment headers.
        self._hard_state = self._durable_hard_state = image.hard_state
        self._snapshot_meta = self._durable_snapshot_meta = None if image.snapshot is None else image.snapshot.meta
        self._last_index = self._durable_last_index = image.last_index
        self._segments = found.segments
        if not self._segments:
            self._create_segment(0, self._last_index + 1)
        last = self._segments[-1]
        if found.torn_offset is not None:
            dropped = last.path.stat().st_size - found.torn_offset
            log.warning(
                "truncating torn tail of %s at byte offset %d (%d bytes dropped): %s",
                last.path,
                found.torn_offset,
                dropped,
                found.torn_reason,
            )
            os.truncate(last.path, found.torn_offset)
        self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        if found.torn_offset is not None:
            os.fsync(self._fd)
        self._segment_size = os.fstat(self._fd).st_size
        # What save() has buffered and sync() has not yet made durable.
        self._buffer = bytearray()
        self._dirty = False
        self._pending_snapshots: list[Snapshot] = []

    # -- RaftStorage -------------------------------------------------------------

    def load(self) -> PersistedState:
        """What the disk holds (the synced saves). The first call returns what opening
        recovered; later calls recover the directory again (read-only), at that cost."""
        self._check_usable()
        state, self._recovered = self._recovered, None
        if state is not None:
            return state
        try:
            return recover(self._data_dir).image.persisted()
        except OSError as exc:
            raise StorageError(f"cannot read data dir {self._data_dir}: {exc}") from exc

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        if not self._guard.acquire(blocking=False):
            raise StorageError("DiskStorage.save ran concurrently with save or sync")
        try:
            self._check_usable()
            snap_index = 0 if self._snapshot_meta is None else self._snapshot_meta.index
            take_snapshot = snapshot is not None and snapshot.meta.index > snap_index
            kept: Sequence[Entry] = entries
            floor = snapshot.meta.index if snapshot is not None and take_snapshot else snap_index
            if kept and kept[0].index <= floor:
                kept = [e for e in kept if e.index > floor]  # a snapshot covers the rest
            last = max(self._last_index, floor)
            # Check everything before encoding anything: a refused save leaves no trace.
            _check_widths(hard_state, kept, snapshot if take_snapshot else None)
            if kept:
                first = kept[0].index
                if first > last + 1:
                    raise ValueError(f"entries start at index {first} but the log ends at {last}")
                prev = first - 1
                data_max = RECORD_PAYLOAD_BYTES_MAX - _ENTRY_HEAD.size
                for e in kept:
                    if e.index != prev + 1:
                        raise ValueError(f"entries are not contiguous: {e.index} follows {prev}")
                    if len(e.data) > data_max:
                        raise ValueError(f"entry {e.index} is {len(e.data)} bytes, over the record limit")
                    prev = e.index
                last = prev
            buf = self._buffer
            if snapshot is not None and take_snapshot:
                encode_snapshot_marker(buf, snapshot.meta.index, snapshot.meta.term)
                self._pending_snapshots.append(snapshot)
                self._snapshot_meta = snapshot.meta
                self._dirty = True
            if kept:
                for e in kept:
                    encode_entry(buf, e)
                self._dirty = True
                self._unsynced_entries += len(kept)
            self._last_index = last
            if hard_state is not None:
                encode_hard_state(buf, hard_state)
                self._hard_state = hard_state
                self._dirty = True
        finally:
            self._guard.release()

    def sync(self) -> None:
        if not self._guard.acquire(blocking=False):
            raise StorageError("DiskStorage.sync ran concurrently with save or sync")
        try:
            self._check_usable()
            if not self._dirty:
                return
            obs = self._observer
            t0 = ts = t1 = t2 = 0.0
            try:
                if obs is not None and self._pending_snapshots:
                    t0 = obs.now()
                for snap in self._pending_snapshots:
                    snapfile.write_snapshot(self._snap_dir, snap)
                if obs is not None and self._pending_snapshots:
                    ts = obs.now()
                write_all(self._fd, self._buffer)
                if obs is not None:
                    t1 = obs.now()
                sync_data(self._fd)
                if obs is not None:
                    t2 = obs.now()
            except OSError as exc:
                # After a failed fsync the kernel may have dropped the dirty pages: what is
                # on disk is unknown, so this storage must not be used again (fsyncgate).
                self._failed = f"write or fsync failed: {exc}"
                raise StorageError(f"WAL {self._segments[-1].path}: {self._failed}") from exc
            self._segment_size += len(self._buffer)
            snapshotted = bool(self._pending_snapshots)
            if obs is not None:
                # fsync_s is the fdatasync alone (etcd's wal_fsync); the snapshot files' writes apart.
                obs.synced(SyncStats(len(self._buffer), self._unsynced_entries, t2 - t1, len(self._pending_snapshots),
                                     ts - t0))
            self._unsynced_entries = 0
            self._durable_hard_state = self._hard_state
            self._durable_snapshot_meta = self._snapshot_meta
            self._durable_last_index = self._last_index
            self._buffer = bytearray()
            self._dirty = False
            self._pending_snapshots.clear()
            self._recovered = None
            cut = self._segment_size >= self._segment_bytes
            if cut:
                self._cut()
            if snapshotted or (cut and self._snapshot_meta is not None):
                self._release_segments()
            if snapshotted:
                snapfile.retain_snapshots(self._snap_dir, self._max_snapshots)
        finally:
            self._guard.release()

    def save_bootstrap(self, conf_state: ConfState) -> None:
        self._check_usable()
        write_bootstrap(bootstrap_path_of(self._data_dir), conf_state)
        if self._recovered is not None:
            self._recovered = replace(self._recovered, conf_state=conf_state)

    def close(self) -> None:
        """Release the files. Saves that were not synced are dropped, as at a crash.
        Waits for a ``sync`` running on another thread to finish first."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._buffer = bytearray()
            self._dirty = False
            self._recovered = None
            self._pending_snapshots.clear()
            self._release_fds()

    def crash(self) -> None:
        """What a process death does: lose the unsynced saves (same as ``close``)."""
        self.close()

    # -- segments ----------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def _create_segment(self, seq: int, first_index: int) -> None:
        head = bytearray()
        encode_hard_state(head, self._durable_hard_state)
        meta = self._durable_snapshot_meta
        if meta is not None:
            encode_snapshot_marker(head, meta.index, meta.term)
        path = self._wal_dir / Segment.name(seq, first_index)
        replace_durably(path, (head,))
        self._segments.append(Segment(seq, first_index, path))

    def _cut(self) -> None:
        """Start a new segment once the current one is full (everything is synced here)."""
        assert not self._buffer
        try:
            self._create_segment(self._segments[-1].seq + 1, self._durable_last_index + 1)
        except OSError as exc:
            self._failed = f"could not cut a new segment: {exc}"
            raise StorageError(self._failed) from exc
        os.close(self._fd)
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._segment_size = os.fstat(self._fd).st_size

    def _release_segments(self) -> None:
        """Delete the oldest segments the newest snapshot covers, beyond ``max_wals``."""
        meta = self._durable_snapshot_meta
        snap_index = 0 if meta is None else meta.index
        needed_from = 0
        for i, seg in enumerate(self._segments):
            if seg.first_index <= snap_index + 1:
                needed_from = i
        if self._max_wals > 0:
            doomed = self._segments[: min(needed_from, max(0, len(self._segments) - self._max_wals))]
            for seg in doomed:
                seg.path.unlink()
            if doomed:
                fsync_directory(self._wal_dir)
                del self._segments[: len(doomed)]

    # -- misc --------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError("DiskStorage is closed")
        if self._failed is not None:
            raise StorageError(f"DiskStorage is unusable after an I/O failure: {self._failed}")

    def _release_fds(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # mypy --strict proves DiskStorage satisfies the shared contract

    def _satisfies_contract(storage: DiskStorage) -> RaftStorage:
        return storage
