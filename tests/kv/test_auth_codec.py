"""The auth commands and the Checked wrapper in the replicated command codec."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conclave.kv import auth as a
from conclave.kv import errors
from conclave.kv.command import FORMAT, Checked, Command, Noop, decode_command, encode_command
from conclave.kv.types import LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest

names = st.text(max_size=12)
blobs = st.binary(max_size=16)
perms = st.builds(a.Permission, st.sampled_from(list(a.PermType)), blobs, blobs)

auth_commands: st.SearchStrategy[Command] = st.one_of(
    st.just(a.AuthEnableRequest()),
    st.just(a.AuthDisableRequest()),
    st.builds(a.AuthenticateRequest, names, names),
    st.builds(a.UserAddRequest, names, blobs, st.booleans()),
    st.builds(a.UserDeleteRequest, names),
    st.builds(a.UserChangePasswordRequest, names, blobs),
    st.builds(a.UserGrantRoleRequest, names, names),
    st.builds(a.UserRevokeRoleRequest, names, names),
    st.builds(a.RoleAddRequest, names),
    st.builds(a.RoleDeleteRequest, names),
    st.builds(a.RoleGrantPermissionRequest, names, st.none() | perms),
    st.builds(a.RoleRevokePermissionRequest, names, blobs, blobs),
)
kv_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(PutRequest, blobs, blobs, st.integers(0, 2**63 - 1), st.booleans()),
    st.builds(RangeRequest, blobs, blobs),
    st.builds(LeaseRevokeRequest, st.integers(0, 2**63 - 1)),
    st.builds(Noop, blobs),
)
checked = st.builds(Checked, st.integers(0, 2**63 - 1), auth_commands | kv_commands, names)


@given(auth_commands | kv_commands | checked, st.integers(0, 2**64 - 1))
def test_round_trip(cmd: Command, request_id: int) -> None:
    data = encode_command(cmd, request_id)
    assert decode_command(data) == (request_id, cmd)
    assert encode_command(cmd, request_id) == data  # deterministic


def test_checked_cannot_nest_and_auth_commands_stay_out_of_txns() -> None:
    with pytest.raises(TypeError):
        encode_command(Checked(1, Checked(2, PutRequest(b"k"))), 1)
    put = [1, b"k", b"", 0, False, False, False]
    assert decode_command(bytes(msgpack.packb([FORMAT, 1, 40, 1, put, "u"], use_bin_type=True))) == (
        1, Checked(1, PutRequest(b"k"), "u"))
    raw = [
        [FORMAT, 1, 40, 1, [40, 2, put, "u"], "u"],  # Checked(Checked(...))
        [FORMAT, 1, 3, [], [[40, 1, put, "u"]], []],  # Checked inside a txn op
        [FORMAT, 1, 3, [], [[24]], []],  # a fieldless UserDelete as a txn op
        [FORMAT, 1, 3, [], [[28, "r"]], []],  # RoleAdd as a txn op
    ]
    for body in raw:
        with pytest.raises(errors.MalformedCommand):
            decode_command(bytes(msgpack.packb(body, use_bin_type=True)))
    # a Checked txn keeps the txn's own nesting allowance
    txn = TxnRequest(success=(RequestOp(request_txn=TxnRequest()),))
    assert decode_command(encode_command(Checked(3, txn), 9)) == (9, Checked(3, txn))


@pytest.mark.parametrize("body", [
    [FORMAT, 1, 20, "extra"],  # AuthEnable takes no fields
    [FORMAT, 1, 22, b"name-as-bytes", "tok"],  # Authenticate wants strings
    [FORMAT, 1, 23, "u", "hash-as-str", False],  # UserAdd wants a bytes hash
    [FORMAT, 1, 23, "u", b"h", 0],  # and a boolean
    [FORMAT, 1, 30, "r", [7, b"k", b""]],  # unknown PermType
    [FORMAT, 1, 30, "r", [0, b"k"]],  # short Permission
    [FORMAT, 1, 30, "r", "perm"],  # not an array
    [FORMAT, 1, 31, "r", b"k"],  # RoleRevokePermission needs range_end
    [FORMAT, 1, 40, -1.5, [20], ""],  # Checked revision not an integer
    [FORMAT, 1, 40, 1, ""],  # Checked without a command
    [FORMAT, 1, 40, 1, [], ""],  # Checked of nothing
    [FORMAT, 1, 40, 1, [20], b"user-as-bytes"],  # Checked user not a string
    [FORMAT, 1, 40, 1, [20]],  # Checked without its user field
    [FORMAT, 1, 39],  # unknown tag
])
def test_malformed_auth_commands(body: list[object]) -> None:
    with pytest.raises(errors.MalformedCommand):
        decode_command(bytes(msgpack.packb(body, use_bin_type=True)))
