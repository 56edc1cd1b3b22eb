"""Shared test driver for the key-value state machine: applies commands through the codec."""

from __future__ import annotations

from conclave.kv.command import Command, decode_command, encode_command
from conclave.kv.mvcc import Response, Store
from conclave.kv.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)


class Driver:
    """A store fed like a replica: every command is encoded, decoded, applied at the next index."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else Store()
        self.index = self.store.applied_index

    def apply(self, cmd: Command) -> Response:
        self.index += 1
        _, decoded = decode_command(encode_command(cmd, self.index))
        assert decoded == cmd
        return self.store.apply(decoded, self.index)

    def put(self, key: bytes, value: bytes = b"v", **kw: object) -> Response:
        return self.apply(PutRequest(key=key, value=value, **kw))  # type: ignore[arg-type]

    def delete(self, key: bytes, range_end: bytes = b"", prev_kv: bool = False) -> Response:
        return self.apply(DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv))


def put_op(key: bytes, value: bytes = b"v", **kw: object) -> RequestOp:
    return RequestOp(request_put=PutRequest(key=key, value=value, **kw))  # type: ignore[arg-type]


def del_op(key: bytes, range_end: bytes = b"") -> RequestOp:
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=range_end))


def range_op(key: bytes, range_end: bytes = b"", **kw: object) -> RequestOp:
    return RequestOp(request_range=RangeRequest(key=key, range_end=range_end, **kw))  # type: ignore[arg-type]


def txn_op(txn: TxnRequest) -> RequestOp:
    return RequestOp(request_txn=txn)


def cmp(key: bytes, target: CompareTarget, result: CompareResult, **kw: object) -> Compare:
    return Compare(result=result, target=target, key=key, **kw)  # type: ignore[arg-type]
