"""api/http.py: the router (exact paths, prefixes, aliases, streamed bodies) and the standalone server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from conclave.api.http import HttpRouter, read_body, start_http_server


async def _exact(method: str, path: str, headers: Any, body: Any) -> Any:
    return 200, [("content-type", "text/plain")], f"exact {method} {path} {body!r}".encode()


async def _prefix(method: str, path: str, headers: Any, body: Any) -> Any:
    return 200, [], f"prefix {path}".encode()


async def _echo_stream(method: str, path: str, headers: Any, body: Any) -> Any:
    async def out() -> AsyncIterator[bytes]:
        if isinstance(body, bytes):
            yield b"whole:" + body + b"\n"
            return
        async for chunk in body:
            yield b"got:" + chunk + b"\n"

    return 200, [("content-type", "text/plain")], out()


def _router() -> HttpRouter:
    r = HttpRouter()
    r.add("/version", _exact)
    r.add("/v3/", _prefix)
    r.add("/v3/watch", _echo_stream, stream_body=True)
    r.alias("/v3beta/", "/v3/")
    return r


def test_router_matches_exact_then_longest_prefix_and_rewrites_aliases() -> None:
    r = _router()

    async def go() -> None:
        assert (await r("GET", "/version?x=1", [], b""))[2] == b"exact GET /version?x=1 b''"
        assert (await r("POST", "/v3/kv/put", [], b"{}"))[2] == b"prefix /v3/kv/put"
        assert (await r("POST", "/v3beta/kv/range", [], b""))[2] == b"prefix /v3/kv/range"
        status, _, body = await r("GET", "/versionx", [], b"")
        assert (status, body) == (404, b"404 page not found\n")
        assert (await r("GET", "/v3", [], b""))[0] == 404  # the prefix is "/v3/", not "/v3"

    asyncio.run(go())
    with pytest.raises(ValueError):
        r.add("version", _exact)


def test_non_streaming_route_reads_a_streamed_body_whole() -> None:
    r = HttpRouter()
    r.add("/x", _exact)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async def go() -> None:
        assert (await r.dispatch("POST", "/x", [], chunks()))[2] == b"exact POST /x b'abcd'"
        assert await read_body(b"z") == b"z"

    asyncio.run(go())


def test_standalone_server_streams_request_and_response_bodies() -> None:
    async def go() -> None:
        server = await start_http_server(_router(), [("127.0.0.1", 0)])
        try:
            base = f"http://{server.endpoint}"
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/version") as resp:
                    assert resp.status == 200
                    assert await resp.text() == "exact GET /version b''"
                async with s.get(base + "/nope") as resp:
                    assert resp.status == 404
                # The request body stays open: the handler answers each chunk before the next is sent.
                queue: asyncio.Queue[bytes | None] = asyncio.Queue()

                async def body() -> AsyncIterator[bytes]:
                    while (item := await queue.get()) is not None:
                        yield item

                await queue.put(b"one")
                async with s.post(base + "/v3beta/watch", data=body()) as resp:
                    assert resp.headers.get("Transfer-Encoding") == "chunked"
                    first = await asyncio.wait_for(resp.content.readline(), 5)
                    assert first == b"got:one\n"
                    await queue.put(b"two")
                    second = await asyncio.wait_for(resp.content.readline(), 5)
                    assert second == b"got:two\n"
                    await queue.put(None)
                    assert await asyncio.wait_for(resp.content.read(), 5) == b""
        finally:
            await server.stop()

    asyncio.run(go())


def test_standalone_server_refuses_a_body_over_its_limit() -> None:
    async def go() -> None:
        server = await start_http_server(_router(), [("127.0.0.1", 0)], max_body_bytes=10)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"http://{server.endpoint}/v3/kv/put", data=b"x" * 100) as resp:
                    assert resp.status == 413
                async with s.post(f"http://{server.endpoint}/v3/kv/put", data=b"x" * 10) as resp:
                    assert resp.status == 200
        finally:
            await server.stop()

    asyncio.run(go())
