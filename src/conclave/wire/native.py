"""The native protocol's codec, shared by the client and the server: frames and values.

Theory of operation: a frame is a big-endian ``u32`` body length followed by a msgpack body
(see :mod:`conclave.api.native` for the request/answer envelopes). Values travel as positional
lists: a ``conclave.kv.types`` dataclass is the list of its fields in declaration order (nested
dataclasses likewise, tuples as lists, enums as ints), so the wire shape is fixed by
``kv/types.py``; :func:`pack_value` / :func:`unpack_as` are the two directions, and
:func:`unpack_as` checks every field's type, so a malformed request is refused, never applied.

Authentication: the ``authenticate`` call (``[name, password]``, answered ``[token, revision]``)
makes the server keep the token for the rest of the connection: every later request on it runs as
that user, until the next ``authenticate``. The Auth service's calls (``AUTH_CALLS``: user, role
and auth management) take positional arguments whose types the table fixes, checked by
:func:`decode_auth_args` like any other request. A password travels in clear inside the frame, as
in etcd's gRPC ``Authenticate``: use TLS on the native port wherever the network is not trusted.

This module holds no I/O and no business rule.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import msgpack

from conclave.kv import errors as kverr
from conclave.kv.auth import Permission

FRAME_HEADER = struct.Struct(">I")
FRAME_OVERHEAD_BYTES = 64 * 1024  # envelope and msgpack framing on top of --max-request-bytes


class MalformedRequest(kverr.EtcdError):
    """Arguments of a well-framed request that do not decode into the method's request type."""

    code = "INVALID_ARGUMENT"
    message = "conclave: malformed native request"


class UnknownMethod(kverr.EtcdError):
    code = "UNIMPLEMENTED"
    message = "conclave: unknown native method"


class ProtocolViolation(Exception):
    """The peer broke the framing or envelope rules; the connection must close."""


# --------------------------------------------------------------------------- value codec


def _dataclass_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_FIELDS: dict[type, tuple[str, ...]] = {}


def as_list(obj: Any) -> Any:
    cls = type(obj)
    names = _FIELDS.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(obj):
            raise TypeError(f"cannot encode {cls.__name__} on the native protocol")
        names = _FIELDS[cls] = _dataclass_fields(cls)
    return [getattr(obj, n) for n in names]


def pack_value(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` with dataclasses as positional lists (shared by client and server)."""
    packed: bytes = msgpack.packb(obj, default=as_list, use_bin_type=True)
    return packed


def pack_frame(obj: Any, default: Callable[[Any], Any] = as_list) -> bytes:
    body = msgpack.packb(obj, default=default, use_bin_type=True)
    return FRAME_HEADER.pack(len(body)) + body


Decoder = Callable[[Any], Any]
_PLANS: dict[type, tuple[Decoder, ...]] = {}


def _bad(what: str, value: Any) -> MalformedRequest:
    return MalformedRequest(f"expected {what}, got {type(value).__name__}")


def decode_int(v: Any) -> int:
    if type(v) is not int:
        raise _bad("int", v)
    return v


def _decode_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _bad("bool", v)
    return v


def _decode_bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise _bad("bytes", v)
    return v


def _decode_str(v: Any) -> str:
    if type(v) is not str:
        raise _bad("str", v)
    return v


def _decoder_for(tp: Any) -> Decoder:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        (inner_tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder_for(inner_tp)
        return lambda v: None if v is None else inner(v)
    if origin is tuple:
        item = _decoder_for(typing.get_args(tp)[0])

        def decode_tuple(v: Any) -> tuple[Any, ...]:
            if type(v) is not list:
                raise _bad("list", v)
            return tuple(item(x) for x in v)

        return decode_tuple
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        cls = tp
        return lambda v: unpack_as(cls, v)
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        enum = tp

        def decode_enum(v: Any) -> Any:
            try:
                return enum(decode_int(v))
            except ValueError:
                raise MalformedRequest(f"{v} is not a valid {enum.__name__}") from None

        return decode_enum
    simple = {int: decode_int, bool: _decode_bool, bytes: _decode_bytes, str: _decode_str}
    if tp in simple:
        return simple[tp]
    raise TypeError(f"no native decoder for {tp!r}")


def _plan(cls: type) -> tuple[Decoder, ...]:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = _PLANS[cls] = tuple(_decoder_for(hints[name]) for name in _dataclass_fields(cls))
    return plan


def unpack_as(cls: type[Any], value: Any) -> Any:
    """Rebuild a dataclass ``cls`` from its positional list, checking every field's type.

    A shorter list leaves the remaining fields at their defaults (older peers); a longer one is
    refused. Raises :class:`MalformedRequest` with the reason.
    """
    if type(value) is not list:
        raise _bad(f"{cls.__name__} as a list", value)
    plan = _plan(cls)
    if len(value) > len(plan):
        raise MalformedRequest(f"{cls.__name__} has {len(plan)} fields, got {len(value)}")
    try:
        return cls(*[dec(v) for dec, v in zip(plan, value, strict=False)])
    except ValueError as exc:  # construction-time invariants (e.g. RequestOp's oneof)
        raise MalformedRequest(str(exc)) from None
    except RecursionError:  # nested transactions deeper than any real request
        raise MalformedRequest("request nested too deeply") from None


def error_payload(err: BaseException) -> list[str]:
    if isinstance(err, kverr.EtcdError):
        return [type(err).__name__, err.message]
    return ["Internal", f"conclave: internal error: {type(err).__name__}"]


# --------------------------------------------------------------------------- auth calls

AUTHENTICATE = "authenticate"
"""``[name, password]`` -> ``[token, header revision]``; the token then holds for the connection."""

# The Auth service on the native protocol: method -> the types of its positional arguments. The
# answers are the backend's: a header revision (int) for changes; ``[enabled, auth revision,
# revision]`` for auth_status; ``[names, revision]`` for the lists and user_get (the roles);
# ``[permissions, revision]`` for role_get.
AUTH_CALLS: dict[str, tuple[type, ...]] = {
    AUTHENTICATE: (str, str),
    "auth_enable": (),
    "auth_disable": (),
    "auth_status": (),
    "user_add": (str, str, bool),
    "user_get": (str,),
    "user_list": (),
    "user_delete": (str,),
    "user_change_password": (str, str),
    "user_grant_role": (str, str),
    "user_revoke_role": (str, str),
    "role_add": (str,),
    "role_get": (str,),
    "role_list": (),
    "role_delete": (str,),
    "role_grant_permission": (str, Permission),
    "role_revoke_permission": (str, bytes, bytes),
}


def decode_auth_args(method: str, args: list[Any]) -> list[Any]:
    """The checked arguments of an Auth call (``MalformedRequest`` for a wrong count or type)."""
    types_ = AUTH_CALLS[method]
    if len(args) != len(types_):
        raise MalformedRequest(f"{method} expects {len(types_)} arguments, got {len(args)}")
    return [_decoder_for(tp)(v) for tp, v in zip(types_, args, strict=True)]
