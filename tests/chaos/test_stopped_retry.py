"""Found by `conclave chaos --nemesis all --workload append --seed 2 --nodes 5 --time 120`: values
appended twice. A member whose WAL fsync fails (full disk) stops, and fails every pending request
with ``etcdserver: server stopped`` (server/node.py, ``_waiters.fail_all(kverr.Stopped())``),
including proposals already handed to Raft and possibly replicated; the client counts ``Stopped``
among the errors after which a write was certainly not applied (client/errors.py
``NOT_APPLIED_KINDS``) and sends the write again to another member, where it is applied a second
time. etcd's own client never retries a mutation after ``server stopped``.

The test drives the client against two fake members: the first answers a txn with the error a
stopping member gives; the write must not reach the second one (the caller gets a client error
saying the outcome is unknown)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conclave.client import AsyncClient, ClientError, put_op
from conclave.client.errors import server_error


class FakeMember:
    def __init__(self, endpoint: str, answer: BaseException | None, calls: list[str]) -> None:
        self.endpoint = endpoint
        self.answer = answer
        self.calls = calls
        self.closed = False

    async def request(self, method: str, arg: Any) -> Any:
        self.calls.append(f"{self.endpoint}:{method}")
        if self.answer is not None:
            raise self.answer
        from conclave.kv.types import TxnResponse
        return TxnResponse(succeeded=True)

    def close(self) -> None:
        self.closed = True


def test_a_write_answered_server_stopped_is_not_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    stopped = server_error("Stopped", "etcdserver: server stopped")
    members = {"a:1": FakeMember("a:1", stopped, calls), "b:1": FakeMember("b:1", None, calls)}

    async def fake_open(self: Any, endpoint: str) -> FakeMember:
        return members[endpoint]

    monkeypatch.setattr("conclave.client.aio.CoreClient._open", fake_open)

    async def main() -> BaseException | None:
        async with AsyncClient(["a:1", "b:1"], protocol="grpc", timeout=3.0) as c:
            try:
                await c.transaction([], [put_op("k", "v")], [])
            except ClientError as exc:
                return exc
        return None

    outcome = asyncio.run(main())
    assert calls == ["a:1:txn"], f"the write was sent again after 'server stopped': {calls} ({outcome!r})"


def test_a_cross_shard_outcome_unknown_is_the_clients_outcome_unknown() -> None:
    from conclave.client.errors import OutcomeUnknown
    from conclave.server import xshard_coord as xc

    for err in (xc.OutcomeUnknown("decide"), xc.ResponseLost("part 2")):
        got = server_error(type(err).__name__, str(err))
        assert isinstance(got, OutcomeUnknown), got  # never Unavailable: that one is retried elsewhere
