"""The peer transport survives peers that die and come back (real TCP on 127.0.0.1, uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

import pytest

from conclave.raft.types import Message, MessageType
from conclave.server.launcher import free_ports
from conclave.server.transport import HELLO, RAFT, RPC_REQ, Transport, encode_frame

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


MALFORMED = [
    pytest.param(lambda cid: encode_frame(HELLO, "junk"), id="hello-not-a-list"),
    pytest.param(lambda cid: encode_frame(HELLO, [1]), id="hello-short"),
    pytest.param(lambda cid: encode_frame(HELLO, ["a", cid]), id="hello-id-not-int"),
    pytest.param(lambda cid: encode_frame(HELLO, [1, "7"]), id="hello-cluster-not-int"),
    pytest.param(lambda cid: encode_frame(HELLO, [0, 0]) + encode_frame(RPC_REQ, "x"), id="joiner-rpc-not-a-list"),
    pytest.param(lambda cid: encode_frame(HELLO, [0, 0]) + encode_frame(RPC_REQ, [1, 2]), id="joiner-rpc-short"),
    pytest.param(lambda cid: encode_frame(HELLO, [1, cid]) + encode_frame(RPC_REQ, [1]), id="rpc-short"),
    pytest.param(lambda cid: encode_frame(HELLO, [1, cid]) + encode_frame(RPC_REQ, ["a", "m", 1]), id="rpc-id-str"),
    pytest.param(lambda cid: encode_frame(HELLO, [1, cid]) + encode_frame(RPC_REQ, [1, 5, 1]), id="rpc-method-int"),
    pytest.param(lambda cid: encode_frame(HELLO, [1, cid]) + encode_frame(RAFT, b"\xc1"), id="raft-undecodable"),
    pytest.param(lambda cid: encode_frame("kind", 1), id="kind-not-int"),
]


@pytest.mark.parametrize("frames", MALFORMED)
def test_a_malformed_frame_closes_the_connection_with_one_warning_and_no_traceback(
    frames: Callable[[int], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)
    errors: list[object] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        rx = Transport(2, 7, lambda _ms: None, _no_rpc, lambda _n: None)
        await rx.listen("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frames(7))
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 5)  # EOF: the member closed the connection
        writer.close()
        await asyncio.sleep(0.05)
        await rx.close()
        assert closed == b""

    with caplog.at_level(logging.DEBUG, logger="conclave"):
        uvloop.run(scenario())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "closing peer connection" in warnings[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
    assert not errors, f"an exception escaped to the event loop: {errors}"
