"""Compact msgpack encoding of Raft values, for the peer transport and the simulator.

Theory of operation: every value is flattened to a tuple of primitives in field order,
so the wire form is small and decoding is a direct constructor call. Decoding validates
shape and raises ``CodecError`` (the peer broke the protocol) instead of crashing.
"""

from __future__ import annotations

from typing import Any

import msgpack

from conclave.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)


class CodecError(ValueError):
    """Bytes that do not decode to a valid Raft value."""


def entry_to_tuple(e: Entry) -> tuple[int, int, int, bytes]:
    return (e.term, e.index, int(e.type), e.data)


def entry_from_tuple(t: Any) -> Entry:
    term, index, typ, data = t
    return Entry(term=int(term), index=int(index), type=EntryType(typ), data=bytes(data))


def conf_state_to_tuple(c: ConfState) -> tuple[list[int], list[int], list[int], list[int], bool]:
    return (
        sorted(c.voters),
        sorted(c.learners),
        sorted(c.voters_outgoing),
        sorted(c.learners_next),
        c.auto_leave,
    )


def conf_state_from_tuple(t: Any) -> ConfState:
    v, ln, vo, lnx, auto = t
    return ConfState(frozenset(v), frozenset(ln), frozenset(vo), frozenset(lnx), bool(auto))


def snapshot_to_tuple(s: Snapshot) -> tuple[int, int, Any, bytes]:
    return (s.meta.index, s.meta.term, conf_state_to_tuple(s.meta.conf_state), s.data)


def snapshot_from_tuple(t: Any) -> Snapshot:
    index, term, cs, data = t
    return Snapshot(SnapshotMeta(int(index), int(term), conf_state_from_tuple(cs)), bytes(data))


def message_to_tuple(m: Message) -> tuple[Any, ...]:
    return (
        int(m.type),
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [entry_to_tuple(e) for e in m.entries],
        m.commit,
        None if m.snapshot is None else snapshot_to_tuple(m.snapshot),
        m.reject,
        m.reject_hint,
        m.context,
    )


def message_from_tuple(t: Any) -> Message:
    try:
        typ, to, frm, term, log_term, index, entries, commit, snap, reject, hint, ctx = t
        return Message(
            type=MessageType(typ),
            to=int(to),
            frm=int(frm),
            term=int(term),
            log_term=int(log_term),
            index=int(index),
            entries=tuple(entry_from_tuple(e) for e in entries),
            commit=int(commit),
            snapshot=None if snap is None else snapshot_from_tuple(snap),
            reject=bool(reject),
            reject_hint=int(hint),
            context=bytes(ctx),
        )
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed raft message: {exc}") from exc


def encode_messages(msgs: list[Message] | tuple[Message, ...]) -> bytes:
    return msgpack.packb([message_to_tuple(m) for m in msgs], use_bin_type=True)


def decode_messages(data: bytes) -> list[Message]:
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"malformed raft frame: {exc}") from exc
    if not isinstance(raw, list):
        raise CodecError("malformed raft frame: not a list")
    return [message_from_tuple(t) for t in raw]


def encode_hard_state(h: HardState) -> bytes:
    return msgpack.packb((h.term, h.vote, h.commit))


def decode_hard_state(data: bytes) -> HardState:
    term, vote, commit = msgpack.unpackb(data)
    return HardState(int(term), int(vote), int(commit))


def encode_conf_change(cc: ConfChange) -> bytes:
    return msgpack.packb(
        ([(int(c.type), c.node_id) for c in cc.changes], int(cc.transition), cc.context),
        use_bin_type=True,
    )


def decode_conf_change(data: bytes) -> ConfChange:
    try:
        changes, transition, ctx = msgpack.unpackb(data, raw=False)
        return ConfChange(
            changes=tuple(ConfChangeSingle(ConfChangeType(t), int(n)) for t, n in changes),
            transition=ConfChangeTransition(transition),
            context=bytes(ctx),
        )
    except Exception as exc:
        raise CodecError(f"malformed conf change: {exc}") from exc
