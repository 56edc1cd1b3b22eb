"""bbolt files (etcd's backend and backup format), read and written in pure Python.

Theory of operation
-------------------
An etcd v3 backup (``etcdctl snapshot save``) is a bbolt database file, optionally followed by
the SHA-256 of everything before it. bbolt is a copy-on-write B+tree in fixed-size pages; the
facts this module relies on (little-endian, as bbolt writes on x86 and arm64):

* every page starts with ``id u64 | flags u16 | count u16 | overflow u32``; flags: branch 0x01,
  leaf 0x02, meta 0x04, freelist 0x10; a page of ``overflow`` extra pages is contiguous;
* pages 0 and 1 are meta pages: ``magic 0xED0CDAED | version 2 | page size | flags | root bucket
  (root pgid u64, sequence u64) | freelist pgid | high-water pgid | txid | checksum``; the checksum
  is FNV-1a 64 of the meta's first 56 bytes; the valid meta with the higher txid is current;
* a leaf element is ``flags u32 | pos u32 | ksize u32 | vsize u32`` with ``pos`` counted from the
  element itself, the key then the value at that position; flag 0x01 marks a nested bucket,
  whose value is ``root pgid u64 | sequence u64`` followed, when the root is 0, by an inline page;
* a branch element is ``pos u32 | ksize u32 | pgid u64`` (the child's first key at ``pos``);
* the freelist page lists free pgids as u64 (``count`` 0xFFFF: the first u64 is the count).

``read_buckets(data)`` returns the top-level buckets (etcd uses no nested buckets) as ordered
``(key, value)`` lists; every offset is bounds-checked, so a damaged or foreign file raises
``BboltError`` with a reason and never a bare ``IndexError`` or a loop. ``write_buckets``
builds a fresh, compact file that bbolt opens and whose ``tx.Check()`` passes: every page is
reachable exactly once, the freelist is empty, keys are sorted.

Rules for this module: no I/O (bytes in, bytes out), no clocks, no randomness.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Mapping

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_HEADER = struct.Struct("<QHHI")
META = struct.Struct("<IIIIQQQQQ")  # magic version page_size flags root seq freelist pgid txid
META_CHECKSUM = struct.Struct("<Q")
LEAF_ELEMENT = struct.Struct("<IIII")
BRANCH_ELEMENT = struct.Struct("<IIQ")
BUCKET_HEADER = struct.Struct("<QQ")
BRANCH, LEAF, META_PAGE, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
DEFAULT_PAGE_SIZE = 4096
MAX_DEPTH = 64

Items = list[tuple[bytes, bytes]]


class BboltError(ValueError):
    """Bytes that are not a readable bbolt database; the message says what is wrong."""


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def looks_like_bbolt(data: bytes) -> bool:
    """True when the first meta page carries bbolt's magic number (cheap sniffing)."""
    if len(data) < PAGE_HEADER.size + META.size:
        return False
    (magic,) = struct.unpack_from("<I", data, PAGE_HEADER.size)
    return bool(magic == MAGIC)


# ---------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.page_size, self.root, self.pgid_max = self._meta()

    def _meta(self) -> tuple[int, int, int]:
        data = self.data
        if len(data) < PAGE_HEADER.size + META.size + META_CHECKSUM.size:
            raise BboltError("invalid database: too short to hold a meta page")
        best: tuple[int, int, int, int] | None = None  # txid, page size, root, pgid
        reasons: list[str] = []
        page_size = struct.unpack_from("<I", data, PAGE_HEADER.size + 8)[0]
        for n in (0, 1):
            off = n * page_size
            start = off + PAGE_HEADER.size
            if page_size < 512 or start + META.size + 8 > len(data):
                reasons.append(f"meta page {n} is outside the file")
                continue
            magic, version, psize, _flags, root, _seq, _free, pgid, txid = META.unpack_from(data, start)
            (checksum,) = META_CHECKSUM.unpack_from(data, start + META.size)
            if magic != MAGIC:
                reasons.append(f"meta page {n}: bad magic {magic:#x}")
            elif version != VERSION:
                reasons.append(f"meta page {n}: version {version}, expected {VERSION}")
            elif checksum != fnv1a64(data[start:start + META.size]):
                reasons.append(f"meta page {n}: checksum mismatch")
            elif psize != page_size:
                reasons.append(f"meta page {n}: page size {psize} differs from meta 0's {page_size}")
            elif best is None or txid > best[0]:
                best = (txid, psize, root, pgid)
        if best is None:
            raise BboltError("invalid database: " + "; ".join(reasons))
        _, psize, root, pgid = best
        if not 2 <= root < pgid:
            raise BboltError(f"invalid database: root page {root} outside 2..{pgid - 1}")
        return psize, root, pgid

    def page(self, pgid: int) -> tuple[int, int, int, int]:
        """(offset, flags, count, overflow) of page ``pgid``, bounds-checked."""
        if not 2 <= pgid < self.pgid_max:
            raise BboltError(f"page id {pgid} outside the database (high-water mark {self.pgid_max})")
        off = pgid * self.page_size
        if off + PAGE_HEADER.size > len(self.data):
            raise BboltError(f"page {pgid} lies beyond the end of the file (truncated?)")
        pid, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, off)
        if pid != pgid:
            raise BboltError(f"page {pgid} says it is page {pid}")
        if off + (overflow + 1) * self.page_size > len(self.data):
            raise BboltError(f"page {pgid} (+{overflow} overflow pages) runs past the end of the file")
        return off, flags, count, overflow

    def _slice(self, start: int, size: int, end: int, what: str) -> bytes:
        if size < 0 or start < 0 or start + size > end:
            raise BboltError(f"{what} runs outside its page")
        return self.data[start:start + size]

    def items(self, pgid: int, depth: int = 0, seen: set[int] | None = None) -> Items:
        """Every (key, value) under the page tree rooted at ``pgid`` (nested buckets refused)."""
        out: Items = []
        self._walk(pgid, depth, seen if seen is not None else set(), out)
        return out

    def _walk(self, pgid: int, depth: int, seen: set[int], out: Items) -> None:
        if depth > MAX_DEPTH:
            raise BboltError("page tree deeper than any real database (a cycle?)")
        if pgid in seen:
            raise BboltError(f"page {pgid} is referenced twice")
        seen.add(pgid)
        off, flags, count, overflow = self.page(pgid)
        end = off + (overflow + 1) * self.page_size
        if flags == LEAF:
            self._leaf(off, count, end, out)
        elif flags == BRANCH:
            for i in range(count):
                el = off + PAGE_HEADER.size + i * BRANCH_ELEMENT.size
                if el + BRANCH_ELEMENT.size > end:
                    raise BboltError(f"branch page {pgid}: element {i} outside the page")
                _pos, _ksize, child = BRANCH_ELEMENT.unpack_from(self.data, el)
                self._walk(child, depth + 1, seen, out)
        else:
            raise BboltError(f"page {pgid}: expected a branch or leaf page, found flags {flags:#x}")

    def _leaf(self, off: int, count: int, end: int, out: Items, *, buckets: bool = False) -> None:
        for i in range(count):
            el = off + PAGE_HEADER.size + i * LEAF_ELEMENT.size
            if el + LEAF_ELEMENT.size > end:
                raise BboltError(f"leaf element {i} outside its page")
            flags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(self.data, el)
            key = self._slice(el + pos, ksize, end, "a leaf key")
            value = self._slice(el + pos + ksize, vsize, end, "a leaf value")
            if bool(flags & BUCKET_LEAF_FLAG) != buckets:
                what = "a nested bucket" if flags & BUCKET_LEAF_FLAG else "a plain key"
                raise BboltError(f"{what} ({key[:40]!r}) where {'buckets' if buckets else 'keys'} were expected")
            if out and key <= out[-1][0]:
                raise BboltError("keys out of order")
            out.append((key, value))

    def buckets(self) -> dict[bytes, Items]:
        root_items: Items = []
        off, flags, count, overflow = self.page(self.root)
        end = off + (overflow + 1) * self.page_size
        if flags == LEAF:
            self._leaf(off, count, end, root_items, buckets=True)
        elif flags == BRANCH:  # thousands of top-level buckets: not etcd, but legal bbolt
            raise BboltError("a branch page as the root bucket: not an etcd database")
        else:
            raise BboltError(f"root page {self.root} has flags {flags:#x}")
        seen = {self.root}
        result: dict[bytes, Items] = {}
        for name, header in root_items:
            if len(header) < BUCKET_HEADER.size:
                raise BboltError(f"bucket {name!r}: header too short")
            root, _seq = BUCKET_HEADER.unpack_from(header, 0)
            if root == 0:
                result[name] = self._inline(header[BUCKET_HEADER.size:], name)
            else:
                result[name] = self.items(root, 1, seen)
        return result

    def _inline(self, page: bytes, name: bytes) -> Items:
        if len(page) < PAGE_HEADER.size:
            raise BboltError(f"bucket {name!r}: inline page too short")
        _pid, flags, count, _ = PAGE_HEADER.unpack_from(page, 0)
        if flags != LEAF:
            raise BboltError(f"bucket {name!r}: inline page is not a leaf")
        out: Items = []
        sub = _Reader.__new__(_Reader)
        sub.data = page
        sub._leaf(0, count, len(page), out)
        return out


def read_buckets(data: bytes) -> dict[bytes, Items]:
    """The top-level buckets of a bbolt file, each as its ordered (key, value) list.

    ``data`` is the file without a trailing digest (strip etcd's SHA-256 first). Raises
    ``BboltError`` for anything that is not a sound bbolt database.
    """
    return _Reader(data).buckets()


# ---------------------------------------------------------------------- writing


class _Writer:
    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.pages: list[bytes] = [b"", b"", b""]  # meta 0, meta 1, freelist: filled last

    def _add(self, flags: int, count: int, body: bytes) -> int:
        pgid = len(self.pages)
        size = PAGE_HEADER.size + len(body)
        span = max(1, -(-size // self.page_size))
        raw = PAGE_HEADER.pack(pgid, flags, count, span - 1) + body
        raw += b"\0" * (span * self.page_size - len(raw))
        self.pages.append(raw)
        self.pages.extend([b""] * (span - 1))  # overflow pages are part of ``raw``
        return pgid

    def _chunks(self, items: list[tuple[bytes, bytes, int]], element: int) -> list[list[tuple[bytes, bytes, int]]]:
        chunks: list[list[tuple[bytes, bytes, int]]] = [[]]
        used = PAGE_HEADER.size
        for item in items:
            need = element + len(item[0]) + len(item[1])
            if chunks[-1] and (used + need > self.page_size or len(chunks[-1]) == 0xFFFF):
                chunks.append([])
                used = PAGE_HEADER.size
            chunks[-1].append(item)
            used += need
        return chunks

    def _leaf(self, chunk: list[tuple[bytes, bytes, int]]) -> int:
        heads, data = bytearray(), bytearray()
        base = len(chunk) * LEAF_ELEMENT.size
        for i, (key, value, flags) in enumerate(chunk):
            pos = base + len(data) - i * LEAF_ELEMENT.size
            heads += LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
            data += key + value
        return self._add(LEAF, len(chunk), bytes(heads + data))

    def _branch(self, chunk: list[tuple[bytes, bytes, int]]) -> int:
        heads, data = bytearray(), bytearray()
        base = len(chunk) * BRANCH_ELEMENT.size
        for i, (key, _unused, child) in enumerate(chunk):
            pos = base + len(data) - i * BRANCH_ELEMENT.size
            heads += BRANCH_ELEMENT.pack(pos, len(key), child)
            data += key
        return self._add(BRANCH, len(chunk), bytes(heads + data))

    def tree(self, items: list[tuple[bytes, bytes, int]]) -> int:
        """Pages for ``items`` (sorted); the root pgid."""
        level = [(chunk[0][0] if chunk else b"", b"", self._leaf(chunk))
                 for chunk in self._chunks(items, LEAF_ELEMENT.size)]
        while len(level) > 1:
            level = [(chunk[0][0], b"", self._branch(chunk)) for chunk in self._chunks(level, BRANCH_ELEMENT.size)]
        return level[0][2]

    def finish(self, root: int, txid: int) -> bytes:
        high = len(self.pages)
        self.pages[2] = PAGE_HEADER.pack(2, FREELIST, 0, 0) + b"\0" * (self.page_size - PAGE_HEADER.size)
        for n in (0, 1):
            meta = META.pack(MAGIC, VERSION, self.page_size, 0, root, 0, 2, high, txid + n)
            raw = PAGE_HEADER.pack(n, META_PAGE, 0, 0) + meta + META_CHECKSUM.pack(fnv1a64(meta))
            self.pages[n] = raw + b"\0" * (self.page_size - len(raw))
        return b"".join(self.pages)


def write_buckets(buckets: Mapping[bytes, Iterable[tuple[bytes, bytes]]], *,
                  page_size: int = DEFAULT_PAGE_SIZE, txid: int = 2) -> bytes:
    """A bbolt file holding exactly these top-level buckets (keys are sorted here)."""
    if page_size < 1024 or page_size & (page_size - 1):
        raise ValueError(f"page size must be a power of two >= 1024, got {page_size}")
    w = _Writer(page_size)
    roots: list[tuple[bytes, bytes, int]] = []
    for name in sorted(buckets):
        if not name:
            raise ValueError("a bucket name must not be empty")
        items = sorted(buckets[name])
        for (a, _), (b, _) in itertools.pairwise(items):
            if a == b:
                raise ValueError(f"bucket {name!r}: key {a!r} appears twice")
        if any(not k for k, _ in items):
            raise ValueError(f"bucket {name!r}: empty key")
        root = w.tree([(k, v, 0) for k, v in items])
        roots.append((name, BUCKET_HEADER.pack(root, 0), BUCKET_LEAF_FLAG))
    root = w.tree(roots)
    return w.finish(root, txid - txid % 2)


def database_size(data: bytes) -> int:
    """The database's size as bbolt's ``tx.Size()`` reports it: high-water page id x page size."""
    r = _Reader(data)
    return r.pgid_max * r.page_size
