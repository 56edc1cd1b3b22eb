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
