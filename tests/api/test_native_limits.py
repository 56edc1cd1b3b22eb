"""The native port's input limits: a read deadline for a started frame, a server-wide cap on
buffered bytes (idle peers holding partial frames cannot grow a member's memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from conclave.api import native

from .fake_backend import FakeBackend


def run(body: Callable[[native.NativeServer, int], Awaitable[None]], **server_kwargs: Any) -> None:
    async def main() -> None:
        server = native.NativeServer(FakeBackend(), 4096, **server_kwargs)
        await server.listen("127.0.0.1", 0)
        try:
            await asyncio.wait_for(body(server, server.ports[0]), 30)
        finally:
            server.close()

    asyncio.run(main())


async def _ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rid: int, *,
                pieces: int = 1, gap_s: float = 0.0) -> list[Any]:
    frame = native.pack_frame([rid, "ping", []])
    step = -(-len(frame) // pieces)
    for i in range(0, len(frame), step):
        writer.write(frame[i : i + step])
        await writer.drain()
        await asyncio.sleep(gap_s)
    (length,) = native.FRAME_HEADER.unpack(await asyncio.wait_for(reader.readexactly(4), 5))
    answer: list[Any] = msgpack.unpackb(await reader.readexactly(length), raw=False)
    return answer


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout_s) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_frame_left_incomplete_past_the_deadline_closes_its_connection() -> None:
    async def body(server: native.NativeServer, port: int) -> None:
        loop = asyncio.get_running_loop()
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)  # connected, no frame begun
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        stuck_r, stuck_w = await asyncio.open_connection("127.0.0.1", port)
        stuck_w.write(native.FRAME_HEADER.pack(50_000) + b"x" * 10_000)  # begun, never finished
        await stuck_w.drain()
        began = loop.time()
        # A frame that arrives in pieces but within the deadline is served.
        answer = await _ping(slow_r, slow_w, 1, pieces=3, gap_s=0.05)
        assert answer[0] == 1 and answer[1] is True
        assert await _closed_within(stuck_r, 3.0), "the stuck connection must be closed"
        assert loop.time() - began >= 0.35, "closed before its deadline"
        assert server.buffered_bytes == 0, "its bytes must be given back"
        # A connection with no frame begun is not timed out (clients keep idle connections open).
        assert (await _ping(idle_r, idle_w, 2))[1] is True
        for w in (idle_w, slow_w, stuck_w):
            w.close()

    run(body, frame_read_timeout_s=0.4)


def test_buffered_bytes_across_connections_are_capped() -> None:
    cap = 100_000
    floods = 20

    async def body(server: native.NativeServer, port: int) -> None:
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(floods)]
        for _r, w in streams:  # each would hold 60 KB of a 65 KB frame: 1.2 MB in all without a cap
            w.write(native.FRAME_HEADER.pack(65_000) + b"y" * 60_000)
        peak = 0
        for _ in range(20):
            await asyncio.sleep(0.02)
            peak = max(peak, server.buffered_bytes)
        # A hard bound: the cap plus at most one byte for each connection that read past it.
        assert 0 < peak <= cap + floods, peak
        assert peak >= cap - 60_000, f"the budget was not used ({peak})"
        assert server.budget_waiters, "connections over the budget must be paused"
        # A well-behaved client waits for the budget (no error), and is served once the floods'
        # frames time out and give their bytes back.
        r, w = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(_ping(r, w, 7), 10)
        assert answer[0] == 7 and answer[1] is True
        closed = [await _closed_within(fr, 8.0) for fr, _w in streams]
        assert all(closed), closed
        assert server.buffered_bytes == 0 and not server.budget_waiters
        w.close()
        for _r, fw in streams:
            fw.close()

    run(body, frame_read_timeout_s=2.0, buffered_bytes_max=cap)  # long enough to measure under load


def test_the_budget_always_fits_one_whole_frame() -> None:
    server = native.NativeServer(FakeBackend(), 4096, buffered_bytes_max=10)
    assert server.buffered_bytes_max >= server.frame_bytes_max + native.FRAME_HEADER.size
    default = native.NativeServer(FakeBackend(), native.DEFAULT_MAX_REQUEST_BYTES)
    assert default.buffered_bytes_max == native.BUFFERED_FRAMES_MAX * default.frame_bytes_max
