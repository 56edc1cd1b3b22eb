"""Codecs of every entry kind the state machine applies (the data of raft NORMAL entries).

Theory of operation
-------------------
The first byte of an entry's data is a tag naming its kind:

* ``K`` one kv command: ``K | origin u64 | conclave.kv.command encoding (carries seq)``;
* ``B`` a batch of kv commands from one origin: ``B | origin u64 | msgpack [command, ...]``
  (one log entry, one append, one ack for every command that arrived during an fsync);
* ``M`` member attributes (name, peer/client/native URLs): ``M | msgpack [origin, seq, member]``.

A lease expiry is a kv ``LeaseRevokeRequest`` with seq 0 (nobody waits for it). Conf changes
are raft CONF_CHANGE entries; their ``context`` (``encode_conf_context``) carries the
proposer's ``(origin, seq)`` and the attributes of the members it adds.

``seq`` numbers identify a proposer's requests: they must be unique and growing per origin,
across restarts too (``seq_base``), because the machine applies a kv command once per
``(origin, seq)``. Every decoder raises ``EntryError`` on malformed data, never another error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from conclave.kv.command import Command, decode_command, encode_command
from conclave.kv.types import LeaseRevokeRequest

TAG_KV = b"K"
TAG_BATCH = b"B"
TAG_MEMBER = b"M"
# The store sees index ``raft_index * BATCH_SLOTS + position in the batch``: strictly growing and
# the same on every replica, which is all it needs (apply order, lease ids).
BATCH_SLOTS = 1 << 12
BATCH_BYTES_MAX = 512 * 1024
# Bytes an entry adds around an encoded command (tag + origin).
FRAME_OVERHEAD = 9
# A member's sequence numbers start at ``epoch << SEQ_EPOCH_SHIFT``: each start of a member uses a
# new epoch (persisted by the driver), so a restarted member never reuses a sequence number.
SEQ_EPOCH_SHIFT = 40


class EntryError(ValueError):
    """An entry's data does not decode."""


@dataclass(slots=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str] = field(default_factory=list)
    native_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.peer_urls, self.client_urls, self.native_urls, self.is_learner]

    @classmethod
    def from_wire(cls, w: Any) -> Member:
        mid, name, peers, clients, natives, learner = w
        return cls(int(mid), str(name), [str(u) for u in peers], [str(u) for u in clients],
                   [str(u) for u in natives], bool(learner))


def seq_base(epoch: int) -> int:
    """The first sequence number of a member in start number ``epoch`` (>= 1)."""
    if epoch < 1:
        raise ValueError("epoch must be >= 1")
    return epoch << SEQ_EPOCH_SHIFT


def encode_kv(origin: int, seq: int, command: Command) -> bytes:
    return TAG_KV + origin.to_bytes(8, "big") + encode_command(command, seq)


def encode_batch(origin: int, commands: Sequence[tuple[int, Command]]) -> bytes:
    """One log entry holding ``commands`` (``(seq, command)``) proposed by ``origin``."""
    return frame_encoded(origin, [encode_command(c, s) for s, c in commands])


def frame_encoded(origin: int, encoded: Sequence[bytes]) -> bytes:
    """Like ``encode_batch`` for commands already encoded with ``encode_command``."""
    if not encoded:
        raise ValueError("an empty batch")
    head = origin.to_bytes(8, "big")
    if len(encoded) == 1:
        return TAG_KV + head + encoded[0]
    return TAG_BATCH + head + bytes(msgpack.packb(list(encoded), use_bin_type=True))


def split_batches(encoded: Sequence[bytes]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``encoded`` that each fit one entry (slots and bytes bounded)."""
    out: list[tuple[int, int]] = []
    start = 0
    while start < len(encoded):
        end, size = start, 0
        while end < len(encoded) and end - start < BATCH_SLOTS and (end == start or size < BATCH_BYTES_MAX):
            size += len(encoded[end])
            end += 1
        out.append((start, end))
        start = end
    return out


def encode_lease_expiry(lease_id: int, origin: int = 0) -> bytes:
    """The leader's revoke of a lease whose deadline passed (seq 0: nobody waits for it)."""
    return encode_kv(origin, 0, LeaseRevokeRequest(id=lease_id))


def encode_member_attrs(origin: int, seq: int, member: Member) -> bytes:
    return TAG_MEMBER + bytes(msgpack.packb([origin, seq, member.to_wire()], use_bin_type=True))


def encode_conf_context(origin: int, seq: int, members: Iterable[Member]) -> bytes:
    return bytes(msgpack.packb([origin, seq, [m.to_wire() for m in members]], use_bin_type=True))


def decode_conf_context(ctx: bytes) -> tuple[int, int, list[Member]]:
    if not ctx:
        return 0, 0, []
    try:
        origin, seq, wires = msgpack.unpackb(ctx, raw=False)
        return int(origin), int(seq), [Member.from_wire(w) for w in wires]
    except Exception as exc:
        raise EntryError(f"bad conf change context: {exc}") from None


@dataclass(slots=True, frozen=True)
class KvEntry:
    origin: int
    commands: list[tuple[int, Command]]


@dataclass(slots=True, frozen=True)
class MemberEntry:
    origin: int
    seq: int
    member: Member


def decode(data: bytes) -> KvEntry | MemberEntry | None:
    """The kind and contents of a NORMAL entry's data; None for an empty (leader no-op) entry."""
    if not data:
        return None
    tag, body = data[:1], data[1:]
    try:
        if tag == TAG_KV:
            return KvEntry(int.from_bytes(body[:8], "big"), [decode_command(bytes(body[8:]))])
        if tag == TAG_BATCH:
            origin = int.from_bytes(body[:8], "big")
            return KvEntry(origin, [decode_command(bytes(one)) for one in msgpack.unpackb(body[8:], raw=False)])
        if tag == TAG_MEMBER:
            origin, seq, attrs = msgpack.unpackb(body, raw=False)
            return MemberEntry(int(origin), int(seq), Member.from_wire(attrs))
    except EntryError:
        raise
    except Exception as exc:
        raise EntryError(f"entry with tag {tag!r} does not decode: {exc}") from None
    raise EntryError(f"unknown entry tag {tag!r}")
