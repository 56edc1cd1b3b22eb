"""The replicated command set of the key-value state machine and its msgpack codec.

Theory of operation
-------------------
A command is what the server proposes to Raft and every replica's state machine applies:
one of the request values of ``conclave.kv.types`` (Put, DeleteRange, Txn, Range, Compaction,
LeaseGrant, LeaseRevoke, Alarm, handed to ``Store.apply``), ``Noop`` (an opaque payload the
store ignores, e.g. a leader's barrier), one of the auth commands of ``conclave.kv.auth``
(handed to ``AuthStore.apply``), or ``Checked(revision, command, user)``: a client command the server
authorised at auth revision ``revision`` (the machine refuses it with AuthOldRevision if the
auth store has moved on since; see ``conclave.kv.auth``). A Checked never wraps a Checked.
The cross-shard commands (``Prepare``, ``Resolve``, ``Begin``, ``Heartbeat``, ``Decide``,
``Forget``: the replicated steps of a transaction across Raft groups) are defined here too, so
the one codec covers them; their meaning is ``conclave.machine.xshard``'s.
``encode_command(cmd, request_id)`` turns it into the bytes of a log entry;
``decode_command(data)`` gives back ``(request_id, cmd)``. The request id lets the proposing
server match an applied entry to its waiting client.

Wire form: a msgpack array ``[FORMAT, request_id, tag, *fields]`` with fields in the order of
the dataclass; nested ops are ``[tag, *fields]``. Decoding checks every type and length and
raises ``MalformedCommand`` (never a bare traceback) on anything else, including nesting
deeper than ``MAX_TXN_DEPTH``.

Rules for this module: no I/O, no clocks, no randomness; encoding is deterministic (the same
command always gives the same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from conclave.kv.auth import (
    AuthDisableRequest,
    AuthEnableRequest,
    AuthenticateRequest,
    AuthRequest,
    Permission,
    PermType,
    RoleAddRequest,
    RoleDeleteRequest,
    RoleGrantPermissionRequest,
    RoleRevokePermissionRequest,
    UserAddRequest,
    UserChangePasswordRequest,
    UserDeleteRequest,
    UserGrantRoleRequest,
    UserRevokeRoleRequest,
)
from conclave.kv.errors import MalformedCommand
from conclave.kv.types import (
    AlarmAction,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

FORMAT = 1
MAX_TXN_DEPTH = 64
"""Deepest nesting of txns a decoded command may have (bounds decoder recursion)."""


@dataclass(frozen=True, slots=True)
class Noop:
    """A log entry the store ignores (its payload is opaque to the key-value layer)."""

    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Checked:
    """``command`` as the server authorised it at auth revision ``revision`` (see kv.auth).

    ``user`` (optional) is who it was authorised for: with it, the machine repeats at apply
    time the one part of the check that reads kv state (the keys attached to a lease).
    """

    revision: int
    command: Command
    user: str = ""


TxnId = tuple[int, int]
"""A cross-shard transaction: (coordinator member id, seq), seqs growing per coordinator."""


class Status(IntEnum):
    """A cross-shard transaction record's status."""

    PENDING = 0
    COMMITTED = 1
    ABORTED = 2
    FORGOTTEN = 3  # decided, resolved everywhere and dropped: the outcome is no longer kept


@dataclass(frozen=True, slots=True)
class Part:
    """What one group does for a cross-shard transaction: its compares and both branches' ops on its keys."""

    compares: tuple[Compare, ...] = ()
    success: tuple[RequestOp, ...] = ()
    failure: tuple[RequestOp, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepare:
    txn: TxnId
    record_group: int
    part: Part


@dataclass(frozen=True, slots=True)
class Resolve:
    txn: TxnId
    commit: bool
    success: bool = True  # the branch, when commit


@dataclass(frozen=True, slots=True)
class Begin:
    txn: TxnId
    participants: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    txn: TxnId
    epoch: int


@dataclass(frozen=True, slots=True)
class Decide:
    txn: TxnId
    status: Status
    success: bool = True
    expect_epoch: int | None = None  # recovery: only if no heartbeat moved the epoch since


@dataclass(frozen=True, slots=True)
class Forget:
    txn: TxnId


XCommand = Prepare | Resolve | Begin | Heartbeat | Decide | Forget
XCOMMAND_TYPES: tuple[type, ...] = (Prepare, Resolve, Begin, Heartbeat, Decide, Forget)

Command = (
    PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | RangeRequest
    | CompactionRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | AlarmRequest
    | Noop
    | AuthRequest  # kv.auth's one list of the auth commands
    | Checked
    | Prepare
    | Resolve
    | Begin
    | Heartbeat
    | Decide
    | Forget
)

_PUT, _DELETE, _TXN, _RANGE, _COMPACT, _GRANT, _REVOKE, _ALARM, _NOOP = range(1, 10)
(
    _AUTH_ENABLE,
    _AUTH_DISABLE,
    _AUTHENTICATE,
    _USER_ADD,
    _USER_DELETE,
    _USER_PASSWORD,
    _USER_GRANT,
    _USER_REVOKE,
    _ROLE_ADD,
    _ROLE_DELETE,
    _ROLE_GRANT,
    _ROLE_REVOKE,
) = range(20, 32)
_CHECKED = 40
_X_PREPARE, _X_RESOLVE, _X_BEGIN, _X_HEARTBEAT, _X_DECIDE, _X_FORGET = range(50, 56)


# ---------------------------------------------------------------------- encode


def encode_command(cmd: Command, request_id: int) -> bytes:
    """The log-entry bytes of ``cmd`` tagged with ``request_id`` (an unsigned 64-bit integer)."""
    if not 0 <= request_id < 1 << 64:
        raise ValueError(f"request_id out of range: {request_id}")
    return bytes(msgpack.packb([FORMAT, request_id, *_encode(cmd)], use_bin_type=True))


def _encode(cmd: Command) -> list[Any]:
    if isinstance(cmd, PutRequest):
        return [_PUT, cmd.key, cmd.value, cmd.lease, cmd.prev_kv, cmd.ignore_value, cmd.ignore_lease]
    if isinstance(cmd, DeleteRangeRequest):
        return [_DELETE, cmd.key, cmd.range_end, cmd.prev_kv]
    if isinstance(cmd, TxnRequest):
        return [
            _TXN,
            [_encode_compare(c) for c in cmd.compare],
            [_encode_op(op) for op in cmd.success],
            [_encode_op(op) for op in cmd.failure],
        ]
    if isinstance(cmd, RangeRequest):
        return [
            _RANGE,
            cmd.key,
            cmd.range_end,
            cmd.limit,
            cmd.revision,
            int(cmd.sort_order),
            int(cmd.sort_target),
            cmd.serializable,
            cmd.keys_only,
            cmd.count_only,
            cmd.min_mod_revision,
            cmd.max_mod_revision,
            cmd.min_create_revision,
            cmd.max_create_revision,
        ]
    if isinstance(cmd, CompactionRequest):
        return [_COMPACT, cmd.revision, cmd.physical]
    if isinstance(cmd, LeaseGrantRequest):
        return [_GRANT, cmd.ttl, cmd.id]
    if isinstance(cmd, LeaseRevokeRequest):
        return [_REVOKE, cmd.id]
    if isinstance(cmd, AlarmRequest):
        return [_ALARM, int(cmd.action), cmd.member_id, int(cmd.alarm)]
    if isinstance(cmd, Noop):
        return [_NOOP, cmd.data]
    if isinstance(cmd, Checked):
        if isinstance(cmd.command, Checked):
            raise TypeError("a Checked command cannot wrap another")
        return [_CHECKED, cmd.revision, _encode(cmd.command), cmd.user]
    if isinstance(cmd, (Prepare, Resolve, Begin, Heartbeat, Decide, Forget)):
        return _encode_x(cmd)
    if isinstance(cmd, AuthEnableRequest):
        return [_AUTH_ENABLE]
    if isinstance(cmd, AuthDisableRequest):
        return [_AUTH_DISABLE]
    if isinstance(cmd, AuthenticateRequest):
        return [_AUTHENTICATE, cmd.name, cmd.token]
    if isinstance(cmd, UserAddRequest):
        return [_USER_ADD, cmd.name, cmd.password_hash, cmd.no_password]
    if isinstance(cmd, UserDeleteRequest):
        return [_USER_DELETE, cmd.name]
    if isinstance(cmd, UserChangePasswordRequest):
        return [_USER_PASSWORD, cmd.name, cmd.password_hash]
    if isinstance(cmd, UserGrantRoleRequest):
        return [_USER_GRANT, cmd.user, cmd.role]
    if isinstance(cmd, UserRevokeRoleRequest):
        return [_USER_REVOKE, cmd.name, cmd.role]
    if isinstance(cmd, RoleAddRequest):
        return [_ROLE_ADD, cmd.name]
    if isinstance(cmd, RoleDeleteRequest):
        return [_ROLE_DELETE, cmd.role]
    if isinstance(cmd, RoleGrantPermissionRequest):
        p = cmd.perm
        return [_ROLE_GRANT, cmd.name, None if p is None else [int(p.perm_type), p.key, p.range_end]]
    if isinstance(cmd, RoleRevokePermissionRequest):
        return [_ROLE_REVOKE, cmd.role, cmd.key, cmd.range_end]
    raise TypeError(f"not a command: {type(cmd).__name__}")


def _encode_x(cmd: XCommand) -> list[Any]:
    txn = [cmd.txn[0], cmd.txn[1]]
    if isinstance(cmd, Prepare):
        p = cmd.part
        return [_X_PREPARE, txn, cmd.record_group, [_encode_compare(c) for c in p.compares],
                [_encode_op(op) for op in p.success], [_encode_op(op) for op in p.failure]]
    if isinstance(cmd, Resolve):
        return [_X_RESOLVE, txn, cmd.commit, cmd.success]
    if isinstance(cmd, Begin):
        return [_X_BEGIN, txn, list(cmd.participants)]
    if isinstance(cmd, Heartbeat):
        return [_X_HEARTBEAT, txn, cmd.epoch]
    if isinstance(cmd, Decide):
        return [_X_DECIDE, txn, int(cmd.status), cmd.success, cmd.expect_epoch]
    return [_X_FORGET, txn]


def _encode_compare(c: Compare) -> list[Any]:
    return [
        int(c.result),
        int(c.target),
        c.key,
        c.range_end,
        c.version,
        c.create_revision,
        c.mod_revision,
        c.value,
        c.lease,
    ]


def _encode_op(op: RequestOp) -> list[Any]:
    inner: Command
    if op.request_range is not None:
        inner = op.request_range
    elif op.request_put is not None:
        inner = op.request_put
    elif op.request_delete_range is not None:
        inner = op.request_delete_range
    else:
        assert op.request_txn is not None
        inner = op.request_txn
    return _encode(inner)


# ---------------------------------------------------------------------- decode


def decode_command(data: bytes) -> tuple[int, Command]:
    """``(request_id, command)`` from ``encode_command`` bytes; MalformedCommand otherwise."""
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MalformedCommand(f"not msgpack: {exc!r}") from exc
    try:
        if not isinstance(body, list) or len(body) < 3:
            raise ValueError("expected [format, request_id, tag, ...]")
        if body[0] != FORMAT:
            raise ValueError(f"unknown command format {body[0]!r}")
        request_id = _uint(body[1])
        return request_id, _decode(body[2:], 0)
    except MalformedCommand:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise MalformedCommand(str(exc)) from exc


def _decode(item: Any, depth: int) -> Command:
    if not isinstance(item, list) or not item:
        raise ValueError("expected a [tag, ...] array")
    tag, fields = item[0], item[1:]
    if tag == _PUT:
        _arity(fields, 6, "Put")
        return PutRequest(
            _b(fields[0]), _b(fields[1]), _i(fields[2]), _bool(fields[3]), _bool(fields[4]), _bool(fields[5])
        )
    if tag == _DELETE:
        _arity(fields, 3, "DeleteRange")
        return DeleteRangeRequest(_b(fields[0]), _b(fields[1]), _bool(fields[2]))
    if tag == _TXN:
        _arity(fields, 3, "Txn")
        if depth >= MAX_TXN_DEPTH:
            raise ValueError(f"txn nested deeper than {MAX_TXN_DEPTH}")
        return TxnRequest(
            tuple(_decode_compare(c) for c in _list(fields[0])),
            tuple(_decode_op(op, depth + 1) for op in _list(fields[1])),
            tuple(_decode_op(op, depth + 1) for op in _list(fields[2])),
        )
    if tag == _RANGE:
        _arity(fields, 13, "Range")
        return RangeRequest(
            _b(fields[0]),
            _b(fields[1]),
            _i(fields[2]),
            _i(fields[3]),
            SortOrder(_i(fields[4])),
            SortTarget(_i(fields[5])),
            _bool(fields[6]),
            _bool(fields[7]),
            _bool(fields[8]),
            _i(fields[9]),
            _i(fields[10]),
            _i(fields[11]),
            _i(fields[12]),
        )
    if tag == _COMPACT:
        _arity(fields, 2, "Compaction")
        return CompactionRequest(_i(fields[0]), _bool(fields[1]))
    if tag == _GRANT:
        _arity(fields, 2, "LeaseGrant")
        return LeaseGrantRequest(_i(fields[0]), _i(fields[1]))
    if tag == _REVOKE:
        _arity(fields, 1, "LeaseRevoke")
        return LeaseRevokeRequest(_i(fields[0]))
    if tag == _ALARM:
        _arity(fields, 3, "Alarm")
        return AlarmRequest(AlarmAction(_i(fields[0])), _i(fields[1]), AlarmType(_i(fields[2])))
    if tag == _NOOP:
        _arity(fields, 1, "Noop")
        return Noop(_b(fields[0]))
    if tag == _CHECKED:
        _arity(fields, 3, "Checked")
        if depth > 0:
            raise ValueError("a Checked command may only be the outermost command")
        inner = _list(fields[1])
        if inner and inner[0] == _CHECKED:
            raise ValueError("a Checked command cannot wrap another")
        return Checked(_i(fields[0]), _decode(inner, 0), _s(fields[2]))
    if type(tag) is int and _X_PREPARE <= tag <= _X_FORGET:
        if depth > 0:
            raise ValueError("a cross-shard command may only be the outermost command")
        return _decode_x(tag, fields)
    return _decode_auth(tag, fields)


def _decode_x(tag: int, fields: list[Any]) -> XCommand:
    if not fields:
        raise ValueError("a cross-shard command needs its transaction id")
    t = _list(fields[0])
    _arity(t, 2, "TxnId")
    txn = (_uint(t[0], "a transaction id"), _uint(t[1], "a transaction id"))
    if tag == _X_PREPARE:
        _arity(fields, 5, "Prepare")
        part = Part(tuple(_decode_compare(c) for c in _list(fields[2])),
                    tuple(_decode_op(op, 1) for op in _list(fields[3])),
                    tuple(_decode_op(op, 1) for op in _list(fields[4])))
        return Prepare(txn, _uint(fields[1], "a group id"), part)
    if tag == _X_RESOLVE:
        _arity(fields, 3, "Resolve")
        return Resolve(txn, _bool(fields[1]), _bool(fields[2]))
    if tag == _X_BEGIN:
        _arity(fields, 2, "Begin")
        return Begin(txn, tuple(_uint(g, "a group id") for g in _list(fields[1])))
    if tag == _X_HEARTBEAT:
        _arity(fields, 2, "Heartbeat")
        return Heartbeat(txn, _uint(fields[1], "an epoch"))
    if tag == _X_DECIDE:
        _arity(fields, 4, "Decide")
        expect = None if fields[3] is None else _uint(fields[3], "an epoch")
        return Decide(txn, Status(_i(fields[1])), _bool(fields[2]), expect)
    _arity(fields, 1, "Forget")
    return Forget(txn)


def _decode_auth(tag: Any, fields: list[Any]) -> Command:
    if tag == _AUTH_ENABLE:
        _arity(fields, 0, "AuthEnable")
        return AuthEnableRequest()
    if tag == _AUTH_DISABLE:
        _arity(fields, 0, "AuthDisable")
        return AuthDisableRequest()
    if tag == _AUTHENTICATE:
        _arity(fields, 2, "Authenticate")
        return AuthenticateRequest(_s(fields[0]), _s(fields[1]))
    if tag == _USER_ADD:
        _arity(fields, 3, "UserAdd")
        return UserAddRequest(_s(fields[0]), _b(fields[1]), _bool(fields[2]))
    if tag == _USER_DELETE:
        _arity(fields, 1, "UserDelete")
        return UserDeleteRequest(_s(fields[0]))
    if tag == _USER_PASSWORD:
        _arity(fields, 2, "UserChangePassword")
        return UserChangePasswordRequest(_s(fields[0]), _b(fields[1]))
    if tag == _USER_GRANT:
        _arity(fields, 2, "UserGrantRole")
        return UserGrantRoleRequest(_s(fields[0]), _s(fields[1]))
    if tag == _USER_REVOKE:
        _arity(fields, 2, "UserRevokeRole")
        return UserRevokeRoleRequest(_s(fields[0]), _s(fields[1]))
    if tag == _ROLE_ADD:
        _arity(fields, 1, "RoleAdd")
        return RoleAddRequest(_s(fields[0]))
    if tag == _ROLE_DELETE:
        _arity(fields, 1, "RoleDelete")
        return RoleDeleteRequest(_s(fields[0]))
    if tag == _ROLE_GRANT:
        _arity(fields, 2, "RoleGrantPermission")
        perm: Permission | None = None
        if fields[1] is not None:
            p = _list(fields[1])
            _arity(p, 3, "Permission")
            perm = Permission(PermType(_i(p[0])), _b(p[1]), _b(p[2]))
        return RoleGrantPermissionRequest(_s(fields[0]), perm)
    if tag == _ROLE_REVOKE:
        _arity(fields, 3, "RoleRevokePermission")
        return RoleRevokePermissionRequest(_s(fields[0]), _b(fields[1]), _b(fields[2]))
    raise ValueError(f"unknown command tag {tag!r}")


def _decode_op(item: Any, depth: int) -> RequestOp:
    cmd = _decode(item, depth)
    if isinstance(cmd, RangeRequest):
        return RequestOp(request_range=cmd)
    if isinstance(cmd, PutRequest):
        return RequestOp(request_put=cmd)
    if isinstance(cmd, DeleteRangeRequest):
        return RequestOp(request_delete_range=cmd)
    if isinstance(cmd, TxnRequest):
        return RequestOp(request_txn=cmd)
    raise ValueError(f"{type(cmd).__name__} is not allowed inside a txn")


def _decode_compare(item: Any) -> Compare:
    f = _list(item)
    _arity(f, 9, "Compare")
    return Compare(
        CompareResult(_i(f[0])),
        CompareTarget(_i(f[1])),
        _b(f[2]),
        _b(f[3]),
        _i(f[4]),
        _i(f[5]),
        _i(f[6]),
        _b(f[7]),
        _i(f[8]),
    )


def _arity(fields: list[Any], n: int, what: str) -> None:
    if len(fields) != n:
        raise ValueError(f"{what} needs {n} fields, got {len(fields)}")


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"expected an array, got {type(v).__name__}")
    return v


def _b(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return v


def _s(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _i(v: Any) -> int:
    if type(v) is not int:
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v


def _uint(v: Any, what: str = "request_id") -> int:
    n = _i(v)
    if n < 0:
        raise ValueError(f"{what} must not be negative")
    return n


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected a boolean, got {type(v).__name__}")
    return v
