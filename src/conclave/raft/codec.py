"""Compact msgpack encoding of Raft values, for the peer transport and the simulator.

Theory of operation: every value is flattened to a tuple of primitives in field order,
so the wire form is small and decoding is a direct constructor call. Decoding validates
shape, types and ranges and raises ``CodecError`` (the peer broke the protocol) instead
of crashing: ids must fit the u64 width (``U64_MAX``), terms and indexes must be at most
``COUNTER_MAX`` (so a value at the width's limit, which could never be incremented, is
refused here and never reaches the core or the WAL), byte fields must be bytes (``bytes(n)``
of a forged integer would allocate n bytes), enums must be known values.
"""

from __future__ import annotations

from typing import Any

import msgpack

from conclave.raft.types import (
    COUNTER_MAX,
    U64_MAX,
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


def _counter(v: Any, what: str) -> int:
    """A term or index: a plain int in ``[0, COUNTER_MAX]``."""
    if type(v) is not int or not 0 <= v <= COUNTER_MAX:
        raise CodecError(f"{what} {v!r:.40} is not an integer in [0, {COUNTER_MAX}]")
    return v


def _id(v: Any, what: str) -> int:
    """A node id: a plain int in ``[0, U64_MAX]``."""
    if type(v) is not int or not 0 <= v <= U64_MAX:
        raise CodecError(f"{what} {v!r:.40} is not an integer in [0, {U64_MAX}]")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes):
        raise CodecError(f"{what} is {type(v).__name__}, not bytes")
    return v


def _ids(v: Any, what: str) -> frozenset[int]:
    if not isinstance(v, list | tuple):
        raise CodecError(f"{what} is {type(v).__name__}, not a list")
    return frozenset(_id(i, what) for i in v)


_ENTRY_TYPES = {int(t): t for t in EntryType}


def entry_from_tuple(t: Any) -> Entry:
    term, index, typ, data = t
    # Hot (every replicated entry): one inline test, the named checks only to word the error.
    if (
        type(term) is int
        and type(index) is int
        and 0 <= term <= COUNTER_MAX
        and 0 <= index <= COUNTER_MAX
        and type(data) is bytes
        and type(typ) is int
        and typ in _ENTRY_TYPES
    ):
        return Entry(term, index, _ENTRY_TYPES[typ], data)
    return Entry(
        term=_counter(term, "entry term"),
        index=_counter(index, "entry index"),
        type=EntryType(typ),
        data=_bytes(data, "entry data"),
    )


def conf_state_to_tuple(c: ConfState) -> tuple[list[int], list[int], list[int], list[int], bool]:
    return (
        sorted(c.voters),
        sorted(c.learners),
        sorted(c.voters_outgoing),
        sorted(c.learners_next),
        c.auto_leave,
    )


def conf_state_from_tuple(t: Any) -> ConfState:
    try:
        v, ln, vo, lnx, auto = t
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed conf state: {exc}") from exc
    return ConfState(
        _ids(v, "voter id"), _ids(ln, "learner id"), _ids(vo, "outgoing voter id"),
        _ids(lnx, "next learner id"), bool(auto),
    )


def snapshot_to_tuple(s: Snapshot) -> tuple[int, int, Any, bytes]:
    return (s.meta.index, s.meta.term, conf_state_to_tuple(s.meta.conf_state), s.data)


def snapshot_from_tuple(t: Any) -> Snapshot:
    index, term, cs, data = t
    meta = SnapshotMeta(_counter(index, "snapshot index"), _counter(term, "snapshot term"), conf_state_from_tuple(cs))
    return Snapshot(meta, _bytes(data, "snapshot data"))


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
        if not isinstance(entries, list | tuple):
            raise CodecError(f"entries is {type(entries).__name__}, not a list")
        return Message(
            type=MessageType(typ),
            to=_id(to, "to"),
            frm=_id(frm, "from"),
            term=_counter(term, "term"),
            log_term=_counter(log_term, "log term"),
            index=_counter(index, "index"),
            entries=tuple(entry_from_tuple(e) for e in entries),
            commit=_counter(commit, "commit"),
            snapshot=None if snap is None else snapshot_from_tuple(snap),
            reject=bool(reject),
            reject_hint=_counter(hint, "reject hint"),
            context=_bytes(ctx, "context"),
        )
    except CodecError:
        raise
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
    try:
        term, vote, commit = msgpack.unpackb(data)
    except Exception as exc:
        raise CodecError(f"malformed hard state: {exc}") from exc
    return HardState(_counter(term, "term"), _id(vote, "vote"), _counter(commit, "commit"))


def encode_conf_change(cc: ConfChange) -> bytes:
    return msgpack.packb(
        ([(int(c.type), c.node_id) for c in cc.changes], int(cc.transition), cc.context),
        use_bin_type=True,
    )


def decode_conf_change(data: bytes) -> ConfChange:
    try:
        changes, transition, ctx = msgpack.unpackb(data, raw=False)
        return ConfChange(
            changes=tuple(ConfChangeSingle(ConfChangeType(t), _id(n, "node id")) for t, n in changes),
            transition=ConfChangeTransition(transition),
            context=_bytes(ctx, "context"),
        )
    except Exception as exc:
        raise CodecError(f"malformed conf change: {exc}") from exc
