import pytest

from conclave.raft.codec import CodecError, decode_messages, encode_messages
from conclave.raft.types import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMeta


def test_messages_round_trip() -> None:
    snap = Snapshot(SnapshotMeta(7, 2, ConfState(voters=frozenset({1, 2, 3}))), b"state")
    msgs = [
        Message(MessageType.APP, to=2, frm=1, term=3, log_term=2, index=5,
                entries=(Entry(3, 6, data=b"x"),), commit=5),
        Message(MessageType.SNAP, to=3, frm=1, term=3, snapshot=snap),
        Message(MessageType.APP_RESP, to=1, frm=2, term=3, reject=True, reject_hint=4, context=b"c"),
    ]
    assert decode_messages(encode_messages(msgs)) == msgs


@pytest.mark.parametrize("junk", [b"", b"\xc1", b"\x92\x01\x02", b"\x91\x93\x01\x02\x03"])
def test_garbage_is_a_codec_error(junk: bytes) -> None:
    with pytest.raises(CodecError):
        decode_messages(junk)


# -- range and type checks at decode (issue 10 section 3) ------------------------------

import msgpack  # noqa: E402

from conclave.raft.codec import (  # noqa: E402
    conf_state_from_tuple,
    decode_conf_change,
    decode_hard_state,
    message_to_tuple,
)
from conclave.raft.types import COUNTER_MAX, U64_MAX  # noqa: E402


def _wire(m: Message, **override: object) -> bytes:
    """One message as the wire carries it, with some tuple fields replaced."""
    fields = ["type", "to", "frm", "term", "log_term", "index", "entries", "commit", "snapshot", "reject",
              "reject_hint", "context"]
    t = list(message_to_tuple(m))
    for name, value in override.items():
        t[fields.index(name)] = value
    return msgpack.packb([t], use_bin_type=True)


HB = Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, commit=4)


def test_the_largest_accepted_counter_and_id_round_trip() -> None:
    m = Message(MessageType.APP, to=U64_MAX, frm=U64_MAX - 1, term=COUNTER_MAX, log_term=COUNTER_MAX,
                index=COUNTER_MAX - 1, entries=(Entry(COUNTER_MAX, COUNTER_MAX),), commit=COUNTER_MAX)
    assert decode_messages(encode_messages([m])) == [m]


@pytest.mark.parametrize("field", ["term", "log_term", "index", "commit", "reject_hint"])
@pytest.mark.parametrize("value", [COUNTER_MAX + 1, U64_MAX, -1])
def test_a_term_or_index_beyond_the_limit_is_refused(field: str, value: int) -> None:
    with pytest.raises(CodecError, match="not an integer in"):
        decode_messages(_wire(HB, **{field: value}))


@pytest.mark.parametrize("field", ["to", "frm"])
def test_a_negative_id_is_refused(field: str) -> None:
    with pytest.raises(CodecError):
        decode_messages(_wire(HB, **{field: -5}))


@pytest.mark.parametrize("entry", [(U64_MAX, 1, 0, b""), (1, COUNTER_MAX + 1, 0, b""), (1, 1, 9, b""),
                                   (1, 1, 0, 10**9), (1, 1, 0, "text"), (1.5, 1, 0, b""), (True, 1, 0, b"")])
def test_a_bad_entry_is_refused(entry: tuple[object, ...]) -> None:
    with pytest.raises(CodecError):
        decode_messages(_wire(HB, entries=[list(entry)]))


@pytest.mark.parametrize("override", [{"term": "3"}, {"term": 3.0}, {"context": 10**9}, {"context": "x"},
                                      {"entries": b"xx"}, {"entries": 7}, {"snapshot": [1, 2]},
                                      {"snapshot": [U64_MAX, 1, [[1], [], [], [], False], b""]},
                                      {"snapshot": [1, 1, [[-1], [], [], [], False], b""]},
                                      {"snapshot": [1, 1, [[1], [], [], [], False], 5]}])
def test_wrong_types_are_refused_not_coerced(override: dict[str, object]) -> None:
    # bytes(10**9) would allocate a gigabyte and int("3") would accept a string: both refused.
    with pytest.raises(CodecError):
        decode_messages(_wire(HB, **override))


def test_hard_state_and_conf_state_and_conf_change_are_range_checked() -> None:
    with pytest.raises(CodecError):
        decode_hard_state(msgpack.packb((U64_MAX, 1, 1)))
    with pytest.raises(CodecError):
        decode_hard_state(b"\xc1")
    with pytest.raises(CodecError):
        conf_state_from_tuple([[U64_MAX + 1], [], [], [], False])
    with pytest.raises(CodecError):
        decode_conf_change(msgpack.packb(([(0, -1)], 0, b""), use_bin_type=True))
