"""etcd v3 message classes from a PRIVATE descriptor pool.

Theory of operation: ``proto/etcd.pb`` (written by ``make proto``) is one serialized
``FileDescriptorSet`` of the project's own etcd-compatible protos. It is loaded into a private
``DescriptorPool`` rather than protobuf's default pool, so a process may also import another copy of
the etcd protos (aetcd, python3-etcd3, a test client) without "duplicate symbol" failures, and no
generated-code version guard applies. Every message (nested ones too) is exposed here under its short
name: ``pb.RangeRequest``, ``pb.KeyValue``, ``pb.LockRequest``, ``pb.LeaderKey``... Short names are
unique across the five packages; :data:`FULL_NAMES` maps each short name to its full proto name.
Service descriptors are in :data:`SERVICES` keyed by full name (``"etcdserverpb.KV"``).

This module must never import the generated ``conclave.api.gen`` modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET_PATH = Path(__file__).resolve().parent / "proto" / "etcd.pb"
PACKAGES = ("etcdserverpb", "mvccpb", "authpb", "v3lockpb", "v3electionpb")


class ProtoLoadError(RuntimeError):
    """The committed descriptor set is missing or inconsistent (run `make proto`)."""


def _load_pool() -> tuple[Any, Any]:
    try:
        raw = DESCRIPTOR_SET_PATH.read_bytes()
    except OSError as err:
        raise ProtoLoadError(f"cannot read {DESCRIPTOR_SET_PATH}: {err}; run `make proto`") from err
    fds = descriptor_pb2.FileDescriptorSet.FromString(raw)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in fds.file:
        pool.Add(file_proto)
    return pool, fds


POOL, _FDS = _load_pool()

MESSAGES: dict[str, Any] = {}
FULL_NAMES: dict[str, str] = {}
SERVICES: dict[str, Any] = {}


def _register(desc: Any) -> None:
    short = desc.name
    if short in MESSAGES:
        raise ProtoLoadError(f"message name {short} is defined twice ({FULL_NAMES[short]}, {desc.full_name})")
    MESSAGES[short] = message_factory.GetMessageClass(desc)
    FULL_NAMES[short] = desc.full_name
    for nested in desc.nested_types:
        _register(nested)


for _file_proto in _FDS.file:
    _file_desc = POOL.FindFileByName(_file_proto.name)
    for _msg in _file_desc.message_types_by_name.values():
        _register(_msg)
    for _svc in _file_desc.services_by_name.values():
        SERVICES[_svc.full_name] = _svc

# The top-level enum etcdserverpb.AlarmType: expose its values as constants.
ALARM_TYPE = POOL.FindEnumTypeByName("etcdserverpb.AlarmType")
ALARM_NONE: int = ALARM_TYPE.values_by_name["NONE"].number
ALARM_NOSPACE: int = ALARM_TYPE.values_by_name["NOSPACE"].number
ALARM_CORRUPT: int = ALARM_TYPE.values_by_name["CORRUPT"].number

globals().update(MESSAGES)


def message_class(name: str) -> Any:
    """The class of a message by short (``RangeRequest``) or full (``etcdserverpb.RangeRequest``) name."""
    short = name.rsplit(".", 1)[-1]
    try:
        return MESSAGES[short]
    except KeyError:
        raise ProtoLoadError(f"no message named {name!r} in the etcd descriptor set") from None


def __getattr__(name: str) -> Any:  # for type checkers: the message classes are set dynamically
    raise AttributeError(f"module 'conclave.api.pb' has no attribute {name!r}")
