"""The peer proxy: the fault vocabulary of namespaces, on 127.0.0.1, for runs that are not root.

Theory of operation. Every member advertises a peer address that is really this proxy's listener
for it; the member itself listens on a hidden port. A member dials a peer with one TCP connection
whose first frame is a hello ``u32 length | u32 crc | msgpack [0, [member id, cluster id]]``; the
proxy reads that frame (and only that: the rest is forwarded as bytes), learns which member dialled
(``ids`` maps member ids to member indices), and from then on forwards the connection's bytes in
both directions under the current rules for the link (source -> destination):

* blocked (either direction between the two members: TCP cannot run one way, so a one-way cut
  kills the pair's connections, as dropped packets would): bytes are read and thrown away
  (silent loss, as a dropped packet), and the connection is marked; when the rules change and
  the link is open again, marked connections are closed so the members re-dial (a byte stream
  with a hole in it cannot be resumed);
* delay (ms, jitter ms): each chunk waits before it is written; order within a stream is kept;
* loss (percent): each chunk is lost with that probability, which poisons the stream like a block,
  so the connection is closed at once and the member re-dials (TCP's answer to heavy loss).

The proxy runs its own event loop in a thread, so a busy workload cannot stall peer traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

HEADER = struct.Struct(">II")


@dataclass
class LinkRules:
    blocked: set[tuple[int, int]] = field(default_factory=set)  # (src, dst) pairs
    delay_ms: dict[int, tuple[int, int]] = field(default_factory=dict)  # dst -> (delay, jitter)
    loss_pct: dict[int, int] = field(default_factory=dict)  # dst -> percent


@dataclass(eq=False)
class _Conn:
    proxy: PeerProxy
    dst: int
    writers: list[asyncio.StreamWriter]
    src_id: int | None = None  # the dialler's member id, from its hello
    poisoned: bool = False

    @property
    def src(self) -> int | None:
        # Looked up on every check: the ids are learned after the members' first connections.
        return None if self.src_id is None else self.proxy.ids.get(self.src_id)


class PeerProxy:
    """One listener per member; ``targets[j]`` is member j's hidden peer port."""

    def __init__(self, targets: list[int], listen_ports: list[int], seed: int = 0) -> None:
        self.targets = list(targets)
        self.listen_ports = list(listen_ports)
        self.ids: dict[int, int] = {}
        self.rules = LinkRules()
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._conns: set[_Conn] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxy", daemon=True)
        self.connections = 0

    def start(self) -> None:
        self._thread.start()
        for j in range(len(self.targets)):
            self._call(self._listen(j))

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)  # type: ignore[arg-type]

    def add_member(self, target: int, listen_port: int) -> None:
        self.targets.append(target)
        self.listen_ports.append(listen_port)
        self._call(self._listen(len(self.targets) - 1))

    async def _listen(self, j: int) -> None:
        server = await asyncio.start_server(lambda r, w: self._accept(j, r, w), "127.0.0.1", self.listen_ports[j])
        self._servers.append(server)

    def set_rules(self, rules: LinkRules) -> None:
        def swap() -> None:
            self.rules = rules
            for c in list(self._conns):
                if c.poisoned and not (self._blocked(c.src, c.dst) or self._blocked(c.dst, c.src)):
                    self._close(c)
        self.loop.call_soon_threadsafe(swap)

    def _blocked(self, src: int | None, dst: int | None) -> bool:
        return src is not None and dst is not None and (src, dst) in self.rules.blocked

    def _close(self, c: _Conn) -> None:
        self._conns.discard(c)
        for w in c.writers:
            with contextlib.suppress(Exception):
                w.close()

    async def _accept(self, j: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.targets[j])
        except OSError:
            writer.close()
            return
        conn = _Conn(self, j, [writer, up_w])
        self._conns.add(conn)
        try:
            head = await reader.readexactly(HEADER.size)
            length, _crc = HEADER.unpack(head)
            payload = await reader.readexactly(min(length, 1 << 20))
            with contextlib.suppress(Exception):
                kind, body = msgpack.unpackb(payload, raw=False)
                if kind == 0 and isinstance(body, list) and body:
                    conn.src_id = int(body[0])
            first = head + payload
        except (asyncio.IncompleteReadError, OSError):
            self._close(conn)
            return
        await asyncio.gather(
            self._pump(conn, reader, up_w, first, lambda: (conn.src, j)),
            self._pump(conn, up_r, writer, b"", lambda: (j, conn.src) if conn.src is not None else (j, -1)),
            return_exceptions=True,
        )
        self._close(conn)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                    link: Callable[[], tuple[int | None, int]]) -> None:
        data = first
        try:
            while True:
                if not data:
                    data = await reader.read(65536)
                    if not data:
                        break
                _src, dst = link()
                if conn.poisoned or self._blocked(conn.src, conn.dst) or self._blocked(conn.dst, conn.src):
                    conn.poisoned = True  # the bytes are lost; the stream is closed when the link heals
                    data = b""
                    continue
                loss = self.rules.loss_pct.get(dst, 0)
                if loss and self.rng.random() * 100 < loss:
                    break
                d = self.rules.delay_ms.get(dst)
                if d and d[0]:
                    await asyncio.sleep(max(0.0, d[0] + self.rng.uniform(-d[1], d[1])) / 1000)
                writer.write(data)
                await writer.drain()
                data = b""
        finally:
            self._close(conn)

    def stop(self) -> None:
        async def shut() -> None:
            for s in self._servers:
                s.close()
            for c in list(self._conns):
                self._close(c)
        with contextlib.suppress(Exception):
            self._call(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
