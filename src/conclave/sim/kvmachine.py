"""The replicated state machine each simulated member runs: the real MVCC store.

Theory of operation: this adapter is the seam between the simulated driver and the
state machine the server runs. It frames proposals exactly as the server does (one
log entry carries a batch of ``conclave.kv.command`` commands from one origin member,
each tagged with that member's sequence number; a lease expiry is a revoke proposed by
the leader with origin 0), and applies committed entries to ``conclave.kv.mvcc.Store``
at the server's store index (``raft index * BATCH_SLOTS + position``). Apply returns,
per command, ``(origin, seq, response or None, EtcdError or None, events)``; the driver
resolves its own requests (origin == its id) and feeds the events to its watchers.

Once-only apply: a batch can reach the log twice (a forwarded proposal duplicated on
the wire, a driver that re-proposes after a leader change), so a command whose
``(origin, seq)`` was already applied is skipped; that table is replicated state and
part of the snapshot image. ``dedupe=False`` switches this off (a broken rule for the
teeth tests). Time never enters here: lease deadlines live in the driver's ``Lessor``.

When ``conclave.machine`` lands, this module shrinks to a call of its ``StateMachine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from conclave.kv import errors as kverr
from conclave.kv.command import Command, decode_command, encode_command
from conclave.kv.mvcc import Response, Store
from conclave.kv.types import Event, LeaseRevokeRequest
from conclave.raft.types import Entry, EntryType

TAG_KV = b"K"
TAG_BATCH = b"B"
BATCH_SLOTS = 1 << 12


def encode_batch(origin: int, commands: list[tuple[int, Command]]) -> bytes:
    """One log entry holding ``commands`` (``(seq, command)``) proposed by ``origin``."""
    head = origin.to_bytes(8, "big")
    if len(commands) == 1:
        seq, cmd = commands[0]
        return TAG_KV + head + encode_command(cmd, seq)
    return TAG_BATCH + head + bytes(msgpack.packb([encode_command(c, s) for s, c in commands], use_bin_type=True))


def encode_lease_expiry(lease_id: int) -> bytes:
    """The leader's revoke of a lease whose deadline passed (origin 0: nobody waits for it)."""
    return TAG_KV + bytes(8) + encode_command(LeaseRevokeRequest(id=lease_id), 0)


def decode_entry(data: bytes) -> tuple[int, list[tuple[int, Command]]]:
    """(origin, [(seq, command)]) of a kv entry; (0, []) for anything else."""
    tag, body = data[:1], data[1:]
    if tag == TAG_KV:
        return int.from_bytes(body[:8], "big"), [decode_command(body[8:])]
    if tag == TAG_BATCH:
        origin = int.from_bytes(body[:8], "big")
        return origin, [decode_command(bytes(one)) for one in msgpack.unpackb(body[8:], raw=False)]
    return 0, []


@dataclass(slots=True)
class Result:
    origin: int
    seq: int
    command: Command
    response: Response
    error: kverr.EtcdError | None
    events: tuple[Event, ...]


class KvMachine:
    def __init__(self, dedupe: bool = True) -> None:
        self.store = Store()
        self.applied_index = 0
        self.dedupe = dedupe
        self._done: set[tuple[int, int]] = set()  # (origin, seq) already applied

    def apply(self, entry: Entry) -> list[Result]:
        if entry.index != self.applied_index + 1:
            raise ValueError(f"entry {entry.index} applied after {self.applied_index} (entries must apply in order)")
        self.applied_index = entry.index
        if entry.type != EntryType.NORMAL or not entry.data:
            return []
        origin, commands = decode_entry(entry.data)
        out: list[Result] = []
        for i, (seq, cmd) in enumerate(commands):
            if seq and origin:
                if (origin, seq) in self._done and self.dedupe:
                    continue
                self._done.add((origin, seq))
            response: Response = None
            error: kverr.EtcdError | None = None
            try:
                response = self.store.apply(cmd, entry.index * BATCH_SLOTS + i)
            except kverr.EtcdError as e:
                error = e
            out.append(Result(origin, seq, cmd, response, error, self.store.last_events if error is None else ()))
        return out

    def hash(self) -> int:
        return self.store.hash()

    def image(self) -> bytes:
        done = sorted(self._done)
        return bytes(msgpack.packb([self.store.snapshot(), done], use_bin_type=True))

    def restore(self, index: int, data: bytes) -> None:
        body: Any = msgpack.unpackb(data, raw=False)
        self.store = Store.restore(body[0])
        self._done = {(int(o), int(s)) for o, s in body[1]}
        self.applied_index = index
