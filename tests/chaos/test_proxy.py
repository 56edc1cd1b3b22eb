"""The peer proxy forwards, learns who dialled from the hello frame, drops a cut link silently,
re-opens it after healing (closing the poisoned stream), and delays."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib

import msgpack

from conclave.chaos.cluster import free_ports
from conclave.chaos.proxy import LinkRules, PeerProxy


def _hello(member_id: int) -> bytes:
    payload = msgpack.packb([0, [member_id, 99]])
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


async def _echo_server(port: int) -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()
    return await asyncio.start_server(echo, "127.0.0.1", port)


async def _dial(port: int, member_id: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    hello = _hello(member_id)
    w.write(hello)
    await w.drain()
    echoed = await asyncio.wait_for(r.readexactly(len(hello)), 5)
    return r, w, echoed


def test_forward_block_heal_and_delay() -> None:
    hidden, public = free_ports(2)

    async def main() -> None:
        server = await _echo_server(hidden)
        proxy = PeerProxy([hidden], [public])
        proxy.start()
        proxy.ids = {1111: 1}  # member id 1111 is member index 1 dialling member 0
        try:
            r, w, echoed = await _dial(public, 1111)
            assert echoed == _hello(1111)
            assert proxy.connections == 1
            # cut 1 -> 0: bytes vanish, the connection stays open (silent loss)
            proxy.set_rules(LinkRules(blocked={(1, 0)}))
            await asyncio.sleep(0.1)
            w.write(b"lost")
            await w.drain()
            try:
                got = await asyncio.wait_for(r.read(10), 0.5)
            except TimeoutError:
                got = None
            assert got is None
            # an unrelated member's link is not affected
            _r2, w2, echoed2 = await _dial(public, 2222)
            assert echoed2 == _hello(2222)
            w2.close()
            # heal: the poisoned stream is closed so the member re-dials, and a new dial works
            proxy.set_rules(LinkRules())
            assert await asyncio.wait_for(r.read(10), 5) == b""
            r3, w3, _ = await _dial(public, 1111)
            w3.write(b"ping")
            await w3.drain()
            assert await asyncio.wait_for(r3.readexactly(4), 5) == b"ping"
            w3.close()
            # delay on member 0: 200 ms each way
            proxy.set_rules(LinkRules(delay_ms={0: (200, 0)}))
            await asyncio.sleep(0.1)
            t = time.monotonic()
            _r4, w4, _ = await _dial(public, 1111)
            assert time.monotonic() - t >= 0.18
            w4.close()
        finally:
            proxy.stop()
            server.close()

    asyncio.run(main())
