"""The peer transport survives peers that die and come back (real TCP on 127.0.0.1, uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest

from conclave.raft.types import Message, MessageType
from conclave.server.launcher import free_ports
from conclave.server.transport import Transport

uvloop = pytest.importorskip("uvloop")


def test_sender_keeps_redialling_after_many_connection_resets() -> None:
    # A peer killed with SIGKILL resets its connections. Fails if an error the dialler does not
    # expect (uvloop raises RuntimeError, not OSError, when a write races the reset and hits the
    # closed transport) ends the peer task: the sender then never reaches the restarted peer.
    (port,) = free_ports(1)

    async def scenario() -> None:
        sender = Transport(1, 7, lambda _ms: None, _no_rpc, lambda _n: None)
        sender.set_peer(2, ("127.0.0.1", port))
        resets = 0

        async def reset_soon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal resets
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.readexactly(64)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
            writer.close()
            resets += 1

        killer = await asyncio.start_server(reset_soon, "127.0.0.1", port, reuse_address=True)
        index = 0
        for _ in range(600):  # bounded: at most 600 x 10 ms while connections are reset
            for _ in range(50):
                index += 1
                sender.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, index=index)])
            await asyncio.sleep(0.01)
            if resets >= 150:
                break
        killer.close()
        await killer.wait_closed()
        assert resets >= 10, "the scenario did not reset enough connections to mean anything"
        got: list[int] = []
        rx = Transport(2, 7, lambda ms: got.extend(m.index for m in ms), _no_rpc, lambda _n: None)
        await rx.listen("127.0.0.1", port)
        for _ in range(300):  # bounded: 3 s
            index += 1
            sender.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, index=index)])
            await asyncio.sleep(0.01)
            if got:
                break
        await rx.close()
        await sender.close()
        assert got, f"after {resets} resets the sender never reached the restarted peer"

    uvloop.run(scenario())


async def _no_rpc(_method: str, _args: object) -> object:
    raise RuntimeError("no rpc here")


def test_an_unexpected_error_on_one_connection_does_not_end_the_dialler(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministic form of the race above: the first frame write after the hello raises the
    # RuntimeError uvloop raises for a closed transport. Fails if the peer task dies of it.
    (port,) = free_ports(1)
    real_write = asyncio.StreamWriter.write
    calls = {"n": 0}

    def flaky_write(self: asyncio.StreamWriter, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first write is the hello
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
        real_write(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", flaky_write)

    async def scenario() -> None:
        got: list[int] = []
        rx = Transport(2, 7, lambda ms: got.extend(m.index for m in ms), _no_rpc, lambda _n: None)
        await rx.listen("127.0.0.1", port)
        sender = Transport(1, 7, lambda _ms: None, _no_rpc, lambda _n: None)
        sender.set_peer(2, ("127.0.0.1", port))
        for i in range(300):  # bounded: 3 s
            sender.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, index=i + 1)])
            await asyncio.sleep(0.01)
            if got:
                break
        await sender.close()
        await rx.close()
        assert calls["n"] >= 2, "the injected failure never happened"
        assert got, "the sender never recovered from one failed connection"

    uvloop.run(scenario())
