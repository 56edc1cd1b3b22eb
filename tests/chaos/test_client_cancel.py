"""Found by `conclave chaos --workload lock`: a call in flight on a connection the client drops
(failover after another call on the same member failed) raised ``asyncio.CancelledError`` in the
caller, a BaseException that ends any task which catches ``Exception``, instead of a client error
(``OutcomeUnknown`` for a write that was sent). Reproduced here without chaos: a member is paused
so a put stays in flight, and the client drops that member's connection as its failover does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conclave.client import AsyncClient, ClientError
from conclave.server.launcher import ProcessCluster


def test_a_call_in_flight_on_a_dropped_connection_raises_a_client_error(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, size=1)
    cluster.start()
    try:
        member = cluster.members[0]

        async def main() -> BaseException | None:
            async with AsyncClient([member.endpoint], protocol="grpc", timeout=5.0) as c:
                await c.put("k", "v")
                member.pause()
                try:
                    call = asyncio.create_task(c.put("k", "w"))
                    await asyncio.sleep(0.5)  # sent, waiting for the paused member
                    transport = c._transport
                    assert transport is not None
                    c._drop(transport)  # what failover does when another call on this member fails
                    try:
                        await call
                    except BaseException as exc:
                        return exc
                    return None
                finally:
                    member.resume()

        outcome = asyncio.run(main())
        assert outcome is None or isinstance(outcome, ClientError), repr(outcome)
    finally:
        cluster.stop()
