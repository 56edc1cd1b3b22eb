"""Peer transport: Raft messages and small RPCs between members over TCP.

Theory of operation
-------------------
Each member listens on its peer URL. For every other member it keeps ONE outbound
connection, fed by a bounded queue: the sender task takes everything queued, encodes it
as one frame (many Raft messages per frame) and writes it. Frames are
``u32 length | u32 crc32(payload) | payload`` with a msgpack payload ``[kind, body]``.
A connection that breaks is re-dialled with exponential backoff; messages queued for an
unreachable peer are dropped once the queue is full and the node is told the peer is
unreachable (Raft tolerates loss: it retransmits).

Besides Raft traffic the same connections carry request/response RPCs (for example a
lease keep-alive a follower forwards to the leader): the caller sends ``RPC_REQ`` on its
outbound connection and the answer comes back on that connection.

Metrics (optional, ``server/metrics.MemberMetrics``): bytes are counted once per frame in
each direction, per peer; a failed dial counts a send failure and the messages it drops; a
prober sends a ``ping`` RPC (answered by the transport itself, never by the node) when a
connection comes up and every ``PROBE_INTERVAL_S`` after, for the round-trip histogram.

Groups (several Raft groups per member, ``server/groups.py``): one transport carries every
group's traffic. Group 0's Raft messages travel in ``RAFT`` frames exactly as a one-group
member sends them; the messages of the other groups queued together go in ONE ``RAFT_GROUPS``
frame whose body is ``[[group id, encoded messages], ...]``. An RPC of a group other than 0
carries the group as a fourth element of its request ``[request id, method, args, group]``.
Each group's node sees only its own traffic through ``Transport.group(gid, ...)``, a view with
the transport's sending methods; messages for a group this member does not run are dropped
(counted in ``unknown_group_messages``), and an unreachable peer is reported to every group.

TLS (https:// peer URLs, ``PeerTls``): the listener accepts plain sockets and runs the TLS
handshake through ``loop.connect_accepted_socket`` so that a refused peer is logged with its
reason, once per source address and reason: no certificate, one from another CA, a revoked one,
a plain connection. The allowed CN / hostname lists are checked right after the handshake. In
every case the connection is closed before its first frame is read: no Raft message of a refused
peer reaches the node. Dialers use TLS towards the members whose peer URL is https:// and
check the server's certificate the same way. Contexts come from ``tls.ContextSource``, so
renewed certificate files are used by the next connection, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from conclave.raft.codec import CodecError, decode_messages, encode_messages
from conclave.raft.types import Message
from conclave.server import tls as tlsmod
from conclave.server.config import ServerConfig, is_tls_url

log = logging.getLogger("conclave.transport")

HEADER = struct.Struct(">II")
FRAME_BYTES_MAX = 64 * 1024 * 1024
QUEUE_MESSAGES_MAX = 8192
BATCH_MESSAGES_MAX = 4096

HELLO, RAFT, RPC_REQ, RPC_RESP, RAFT_GROUPS = 0, 1, 2, 3, 4
PING = "ping"  # answered by the transport itself: the round-trip probe
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 2.0

HANDSHAKE_TIMEOUT_S = 5.0
REFUSALS_TRACKED_MAX = 1024


class TransportError(Exception):
    pass


class PeerUnavailable(TransportError):
    pass


def encode_frame(kind: int, body: Any) -> bytes:
    payload = msgpack.packb([kind, body], use_bin_type=True)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, Any]:
    kind, body, _ = await read_frame_sized(reader)
    return kind, body


async def read_frame_sized(reader: asyncio.StreamReader) -> tuple[int, Any, int]:
    """``read_frame`` plus the frame's size on the wire (for the byte counters)."""
    head = await reader.readexactly(HEADER.size)
    length, crc = HEADER.unpack(head)
    if length > FRAME_BYTES_MAX:
        raise TransportError(f"frame of {length} bytes exceeds the limit of {FRAME_BYTES_MAX}")
    payload = await reader.readexactly(length)
    if zlib.crc32(payload) != crc:
        raise TransportError("frame checksum mismatch")
    try:
        kind, body = msgpack.unpackb(payload, raw=False)
    except Exception as exc:
        raise TransportError(f"malformed frame: {exc}") from None
    if type(kind) is not int:
        raise TransportError(f"malformed frame: kind {kind!r:.40}")
    return kind, body, HEADER.size + length


RpcHandler = Callable[[str, Any], Awaitable[Any]]


def _hello(body: Any) -> tuple[int, int]:
    """``[member id, cluster id]``; anything else is a TransportError (one warning, no traceback)."""
    if not isinstance(body, list) or len(body) != 2 or not all(type(v) is int and v >= 0 for v in body):
        raise TransportError(f"malformed hello {body!r:.80}")
    return body[0], body[1]


def _rpc_request(body: Any) -> list[Any]:
    """``[request id, method name, args]`` (group 0) or ``[..., group id]``; else a TransportError."""
    if (not isinstance(body, list) or len(body) not in (3, 4) or type(body[0]) is not int
            or not isinstance(body[1], str) or (len(body) == 4 and (type(body[3]) is not int or body[3] < 0))):
        raise TransportError(f"malformed rpc request {body!r:.80}")
    return body


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """A Raft message of group ``gid`` (> 0) queued for a peer."""

    gid: int
    msg: Message


def encode_raft_frames(items: list[Any]) -> list[bytes]:
    """The frames for a batch of queued items: group 0's messages in one RAFT frame (as a
    one-group member sends them), every other group's in one RAFT_GROUPS frame, RPCs after."""
    plain = [m for m in items if isinstance(m, Message)]
    grouped: dict[int, list[Message]] = {}
    for item in items:
        if isinstance(item, GroupMessage):
            grouped.setdefault(item.gid, []).append(item.msg)
    out = []
    if plain:
        out.append(encode_frame(RAFT, encode_messages(plain)))
    if grouped:
        out.append(encode_frame(RAFT_GROUPS, [[gid, encode_messages(ms)] for gid, ms in grouped.items()]))
    out.extend(encode_frame(item[0], item[1]) for item in items if isinstance(item, tuple))
    return out


def decode_raft_groups(body: Any) -> list[tuple[int, list[Message]]]:
    """A RAFT_GROUPS body back to ``[(group id, messages)]``; malformed input is a TransportError."""
    if not isinstance(body, list):
        raise TransportError(f"malformed group frame {body!r:.80}")
    out = []
    for part in body:
        if not isinstance(part, list) or len(part) != 2 or type(part[0]) is not int or part[0] < 0:
            raise TransportError(f"malformed group frame part {part!r:.80}")
        try:
            out.append((part[0], decode_messages(part[1])))
        except CodecError as exc:
            raise TransportError(str(exc)) from None
    return out


@dataclass
class PeerTls:
    """The peer port's TLS: the listener's context (when our peer URL is https://), the dialler's,
    and the checks etcd makes after the handshake (allowed CN / hostname)."""

    settings: tlsmod.TlsSettings
    server: tlsmod.ContextSource | None
    client: tlsmod.ContextSource

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> PeerTls | None:
        settings = tlsmod.peer_settings(cfg)
        if not settings.enabled and not cfg.peer_tls:
            return None
        listen = bool(cfg.listen_peer_urls) and is_tls_url(cfg.listen_peer_urls[0])
        server = tlsmod.ContextSource(settings, server=True) if listen and settings.enabled else None
        return cls(settings, server, tlsmod.ContextSource(settings, server=False))

    def dial_args(self, host: str) -> dict[str, Any]:
        ctx = self.client.current()
        return {"ssl": ctx, "server_hostname": host if ctx.check_hostname else "",
                "ssl_handshake_timeout": HANDSHAKE_TIMEOUT_S}  # fmt: skip

    def refusal(self, writer: asyncio.StreamWriter) -> str | None:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        return tlsmod.refusal(self.settings, der)


class _Peer:
    def __init__(self, transport: Transport, node_id: int, address: tuple[str, int], secure: bool = False) -> None:
        self.transport = transport
        self.node_id = node_id
        self.address = address
        self.secure = secure
        self.quick_loss = False  # the last TLS connection died within a second of its handshake
        self.queue: asyncio.Queue[Message | GroupMessage | tuple[int, Any]] = asyncio.Queue(QUEUE_MESSAGES_MAX)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.connected = asyncio.Event()
        self.closed = False
        metrics = transport.metrics
        self.stats = metrics.peer(node_id) if metrics is not None else None
        self.task = asyncio.get_running_loop().create_task(self._run())

    def send(self, item: Message | GroupMessage | tuple[int, Any]) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    async def _run(self) -> None:
        backoff = 0.05
        # ``closed`` and not only cancellation: on Python 3.11 ``asyncio.wait_for`` can swallow a
        # cancellation that arrives as the dial fails (it raises the OSError instead), and this
        # loop would then re-dial forever and keep the process from exiting.
        while not self.closed:
            tls = self.transport.tls if self.secure else None
            try:
                if self.secure and tls is None:
                    raise TransportError("its peer URL is https:// but this member has no peer TLS configured")
                dial = tls.dial_args(self.address[0]) if tls is not None else {}
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.address, **dial), timeout=2.0 + (HANDSHAKE_TIMEOUT_S if tls else 0)
                )
                reason = tls.refusal(writer) if tls is not None else None
                if reason is not None:
                    writer.close()
                    raise TransportError(reason)
            except (ssl.SSLError, TransportError) as exc:
                self.transport.note_refusal(f"member {self.node_id:x} at {self.address[0]}:{self.address[1]}",
                                            tlsmod.describe_handshake_error(exc), outbound=True)  # fmt: skip
                self._fail_pending()
                self.transport.report_unreachable(self.node_id)
                if self.stats is not None:
                    self.stats.sent_failures += 1
                    self.stats.dropped_messages += self.queue.qsize()
                while not self.queue.empty():
                    self.queue.get_nowait()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except (TimeoutError, OSError):
                self._fail_pending()
                self.transport.report_unreachable(self.node_id)
                if self.stats is not None:
                    self.stats.sent_failures += 1
                    self.stats.dropped_messages += self.queue.qsize()
                # Drop what piled up: Raft retransmits, and stale appends only waste bandwidth.
                while not self.queue.empty():
                    self.queue.get_nowait()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            # A connection that dies at once (with TLS1.3 a refused client certificate shows only on
            # the first read) keeps the backoff growing and is logged quietly, so a refused member
            # retries at most once a second and does not fill the log.
            flapping = self.quick_loss
            connected_at = asyncio.get_running_loop().time()
            with contextlib.suppress(OSError):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    import socket

                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connected.set()
            log.log(logging.DEBUG if flapping else logging.INFO,
                    "connected to member %x at %s:%d", self.node_id, *self.address)  # fmt: skip
            reader_task = asyncio.get_running_loop().create_task(self._read_responses(reader))
            prober = asyncio.get_running_loop().create_task(self._probe()) if self.stats is not None else None
            try:
                writer.write(encode_frame(HELLO, [self.transport.node_id, self.transport.cluster_id]))
                await self._pump(writer, reader_task)
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                pass
            except Exception:
                # Whatever went wrong with this connection, the dialler must live on: a dead peer task
                # silently cut this member off from that peer for good.
                log.exception("peer connection to member %x failed", self.node_id)
            finally:
                quick = tls is not None and asyncio.get_running_loop().time() - connected_at < 1.0
                backoff = min(max(backoff, 0.1) * 2, 1.0) if quick else 0.05
                self.quick_loss = quick
                log.log(logging.DEBUG if flapping else logging.INFO, "connection to member %x lost", self.node_id)
                # Never await here: a suppressed CancelledError would swallow our own cancellation
                # and keep this loop re-dialling after close().
                self.connected.clear()
                reader_task.cancel()
                if prober is not None:
                    prober.cancel()
                writer.close()
                self._fail_pending()
                self.transport.report_unreachable(self.node_id)
            if backoff > 0.05 and not self.closed:
                await asyncio.sleep(backoff)

    async def _pump(self, writer: asyncio.StreamWriter, reader_task: asyncio.Task[None]) -> None:
        while not reader_task.done():
            getter = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({getter, reader_task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return
            items = [getter.result()]
            while len(items) < BATCH_MESSAGES_MAX and not self.queue.empty():
                items.append(self.queue.get_nowait())
            out = encode_raft_frames(items)
            if writer.is_closing():
                # uvloop raises RuntimeError (not OSError) on a write to a closed transport.
                return
            data = b"".join(out)
            writer.write(data)
            if self.stats is not None:
                self.stats.sent_bytes += len(data)
            await writer.drain()

    async def _read_responses(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, body = await read_frame(reader)
                if kind == RPC_RESP:
                    if not isinstance(body, list) or len(body) != 3:
                        raise TransportError(f"malformed rpc response {body!r:.80}")
                    rid, ok, value = body
                    fut = self.pending.pop(rid, None) if isinstance(rid, int) else None
                    if fut is not None and not fut.done():
                        if ok:
                            fut.set_result(value)
                        elif isinstance(value, list) and len(value) == 2:
                            fut.set_exception(RemoteError(str(value[0]), str(value[1])))
                        else:
                            fut.set_exception(RemoteError("RemoteError", f"malformed error {value!r:.80}"))
        except ssl.SSLError as exc:  # e.g. the other side refused our certificate after a TLS1.3 handshake
            self.transport.note_refusal(f"member {self.node_id:x} at {self.address[0]}:{self.address[1]}",
                                        tlsmod.describe_handshake_error(exc), outbound=True)  # fmt: skip
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            return
        except TransportError as exc:
            log.warning("closing peer connection to member %x: %s", self.node_id, exc)

    async def _probe(self) -> None:
        """Time a ``ping`` round trip now and every PROBE_INTERVAL_S (etcd's peer RTT histogram)."""
        assert self.stats is not None
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            try:
                await self.transport.call(self.node_id, PING, None, PROBE_TIMEOUT_S)
            except (TimeoutError, TransportError, RemoteError):
                pass
            else:
                self.stats.rtt.observe(loop.time() - t0)
            await asyncio.sleep(PROBE_INTERVAL_S)

    def _fail_pending(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(PeerUnavailable(f"connection to member {self.node_id:x} lost"))
        self.pending.clear()

    async def close(self) -> None:
        self.closed = True
        for _ in range(3):
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.task), 0.5)
            if self.task.done():
                return
        log.warning("peer task for member %x did not stop; abandoning it", self.node_id)


class RemoteError(Exception):
    """An RPC that the remote member answered with an error: (kind, message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Transport:
    def __init__(
        self,
        node_id: int,
        cluster_id: int,
        on_messages: Callable[[list[Message]], None],
        on_rpc: RpcHandler,
        on_unreachable: Callable[[int], None],
        *,
        tls: PeerTls | None = None,
        metrics: Any = None,
    ) -> None:
        self.tls = tls
        self._refusals: set[tuple[str, str]] = set()
        self.refused = 0
        self.node_id = node_id
        self.metrics = metrics  # server/metrics.MemberMetrics, or None
        self.cluster_id = cluster_id
        self._on_messages = on_messages
        self._on_rpc = on_rpc
        self._on_unreachable = on_unreachable
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._rpc_ids = itertools.count(1)
        self._conns: set[asyncio.StreamWriter] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._tls_listener: Any = None
        self._accepting: asyncio.Task[None] | None = None
        # Groups other than 0 (server/groups.py): gid -> (on_messages, on_rpc, on_unreachable).
        self._groups: dict[int, tuple[Callable[[list[Message]], None], RpcHandler, Callable[[int], None]]] = {}
        self.unknown_group_messages = 0

    def group(self, gid: int, on_messages: Callable[[list[Message]], None], on_rpc: RpcHandler,
              on_unreachable: Callable[[int], None]) -> GroupTransport:
        """Register group ``gid``'s node and return its view of this transport (group 0 replaces
        the callbacks the transport was built with)."""
        if gid == 0:
            self._on_messages, self._on_rpc, self._on_unreachable = on_messages, on_rpc, on_unreachable
        else:
            self._groups[gid] = (on_messages, on_rpc, on_unreachable)
        return GroupTransport(self, gid)

    def _deliver_groups(self, body: Any) -> None:
        for gid, msgs in decode_raft_groups(body):
            if gid == 0:
                self._on_messages(msgs)
                continue
            handlers = self._groups.get(gid)
            if handlers is None:
                self.unknown_group_messages += len(msgs)
                continue
            handlers[0](msgs)

    async def listen(self, host: str, port: int) -> None:
        if self.tls is not None and self.tls.server is not None:
            # Accept plain sockets and hand each to connect_accepted_socket with TLS: it raises the
            # handshake's failure to us (asyncio.start_server(ssl=...) would swallow it unlogged).
            import socket

            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            lsock = socket.create_server((host.strip("[]"), port), family=family, backlog=512)
            lsock.setblocking(False)
            self._tls_listener = lsock
            self._accepting = asyncio.get_running_loop().create_task(self._accept_tls(lsock))
            return
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    def set_peer(self, node_id: int, address: tuple[str, int], secure: bool = False) -> None:
        """Dial ``address`` for ``node_id`` (with TLS when ``secure``: its peer URL is https://)."""
        if node_id == self.node_id:
            return
        peer = self._peers.get(node_id)
        if peer is not None and peer.address == address and peer.secure == secure:
            return
        if peer is not None:
            asyncio.get_running_loop().create_task(peer.close())
        self._peers[node_id] = _Peer(self, node_id, address, secure)

    def note_refusal(self, source: str, reason: str, outbound: bool = False) -> None:
        """Count a refused TLS peer; log it once per source and reason (a retrying peer is one line)."""
        self.refused += 1
        key = (source, reason)
        if key in self._refusals:
            return
        if len(self._refusals) >= REFUSALS_TRACKED_MAX:
            self._refusals.clear()  # bounded: a flood of sources costs a few repeated lines, not memory
        self._refusals.add(key)
        if outbound:
            log.warning("peer TLS: not connecting to %s: %s", source, reason)
        else:
            log.warning("peer TLS: refused a connection from %s: %s", source, reason)

    def remove_peer(self, node_id: int) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            asyncio.get_running_loop().create_task(peer.close())

    def peers(self) -> dict[int, tuple[str, int]]:
        return {nid: p.address for nid, p in self._peers.items()}

    def connected_peers(self) -> list[int]:
        """The peers whose outbound connection is up."""
        return sorted(nid for nid, p in self._peers.items() if p.connected.is_set())

    def send(self, messages: tuple[Message, ...] | list[Message], gid: int = 0) -> None:
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None or not peer.send(m if gid == 0 else GroupMessage(gid, m)):
                if peer is not None and peer.stats is not None:
                    peer.stats.dropped_messages += 1
                self.report_unreachable(m.to)

    def report_unreachable(self, node_id: int) -> None:
        self._on_unreachable(node_id)
        for handlers in list(self._groups.values()):
            handlers[2](node_id)

    async def call(self, node_id: int, method: str, args: Any, timeout: float, gid: int = 0) -> Any:
        peer = self._peers.get(node_id)
        if peer is None:
            raise PeerUnavailable(f"no route to member {node_id:x}")
        rid = next(self._rpc_ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        peer.pending[rid] = fut
        if not peer.send((RPC_REQ, [rid, method, args] if gid == 0 else [rid, method, args, gid])):
            peer.pending.pop(rid, None)
            raise PeerUnavailable(f"queue to member {node_id:x} is full")
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            peer.pending.pop(rid, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        peer_desc = writer.get_extra_info("peername")
        try:
            kind, body = await read_frame(reader)
            if kind != HELLO:
                raise TransportError("first frame is not a hello")
            _remote_id, remote_cluster = _hello(body)
            if remote_cluster == 0:
                # A member that is joining does not know the cluster id yet: it may ask for it.
                kind, body = await read_frame(reader)
                if kind != RPC_REQ or _rpc_request(body)[1] != "cluster_info":
                    raise TransportError("a peer without a cluster id may only ask for cluster_info")
                await self._answer(writer, body)
                return
            if remote_cluster != self.cluster_id:
                raise TransportError(
                    f"peer {peer_desc} belongs to cluster {remote_cluster:x}, not {self.cluster_id:x}"
                )
            stats = self.metrics.peer(_remote_id) if self.metrics is not None else None
            while True:
                kind, body, size = await read_frame_sized(reader)
                if stats is not None:
                    stats.received_bytes += size
                if kind == RAFT:
                    try:
                        self._on_messages(decode_messages(body))
                    except CodecError as exc:
                        raise TransportError(str(exc)) from None
                elif kind == RAFT_GROUPS:
                    self._deliver_groups(body)
                elif kind == RPC_REQ:
                    req = _rpc_request(body)
                    if req[1] == PING:  # the peer's round-trip probe: answered here, at once
                        writer.write(encode_frame(RPC_RESP, [req[0], True, None]))
                    else:
                        asyncio.get_running_loop().create_task(self._answer(writer, req))
                else:
                    raise TransportError(f"unexpected frame kind {kind}")
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except TransportError as exc:
            log.warning("closing peer connection from %s: %s", peer_desc, exc)
        except Exception as exc:  # whatever a peer sends must not end in a traceback
            log.warning("closing peer connection from %s: %s: %s", peer_desc, type(exc).__name__, exc)
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _accept_tls(self, lsock: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(lsock)
            except OSError as exc:  # e.g. out of file descriptors: keep the listener alive
                log.warning("peer port: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(conn, addr))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: Any, addr: Any) -> None:
        """TLS on an accepted socket, then ``_serve``; a refused peer is logged and closed."""
        assert self.tls is not None and self.tls.server is not None
        loop = asyncio.get_running_loop()
        source = addr[0] if isinstance(addr, tuple) else str(addr)
        reader = asyncio.StreamReader(loop=loop)
        try:
            transport, protocol = await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), conn,
                ssl=self.tls.server.listening_context(), ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            )  # fmt: skip
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            conn.close()
            self.note_refusal(source, tlsmod.describe_handshake_error(exc))
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        reason = self.tls.refusal(writer)
        if reason is not None:
            self.note_refusal(source, reason)
            writer.close()
            return
        await self._serve(reader, writer)

    async def _answer(self, writer: asyncio.StreamWriter, body: Any) -> None:
        rid, method, args = body[:3]
        gid = body[3] if len(body) == 4 else 0
        try:
            if gid == 0:
                result = await self._on_rpc(method, args)
            elif gid in self._groups:
                result = await self._groups[gid][1](method, args)
            else:
                raise TransportError(f"this member runs no raft group {gid}")
            frame = encode_frame(RPC_RESP, [rid, True, result])
        except Exception as exc:  # the error travels back to the caller, typed by name
            frame = encode_frame(RPC_RESP, [rid, False, [type(exc).__name__, str(getattr(exc, "message", exc))]])
        if not writer.is_closing():
            writer.write(frame)
            with contextlib.suppress(OSError, ConnectionError):
                await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        if self._accepting is not None:
            self._accepting.cancel()
            self._tls_listener.close()
        for t in list(self._handshakes):
            t.cancel()
        for peer in list(self._peers.values()):
            await peer.close()
        self._peers.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


class GroupTransport:
    """Group ``gid``'s view of a shared ``Transport``: what a ``Node`` calls, tagged with its group.

    The shared transport listens and closes for all groups (``listen``/``close`` here only
    register and unregister the group); peers are added by any group and removed only by
    group 0 (the meta group, whose membership every group shares)."""

    def __init__(self, transport: Transport, gid: int) -> None:
        self.shared = transport
        self.gid = gid

    @property
    def node_id(self) -> int:
        return self.shared.node_id

    @property
    def refused(self) -> int:
        return self.shared.refused

    async def listen(self, host: str, port: int) -> None:
        pass  # the shared transport listens once for every group

    def set_peer(self, node_id: int, address: tuple[str, int], secure: bool = False) -> None:
        self.shared.set_peer(node_id, address, secure)

    def remove_peer(self, node_id: int) -> None:
        if self.gid == 0:
            self.shared.remove_peer(node_id)

    def peers(self) -> dict[int, tuple[str, int]]:
        return self.shared.peers()

    def connected_peers(self) -> list[int]:
        return self.shared.connected_peers()

    def send(self, messages: tuple[Message, ...] | list[Message]) -> None:
        self.shared.send(messages, self.gid)

    def report_unreachable(self, node_id: int) -> None:
        self.shared.report_unreachable(node_id)

    async def call(self, node_id: int, method: str, args: Any, timeout: float) -> Any:
        return await self.shared.call(node_id, method, args, timeout, self.gid)

    async def close(self) -> None:
        self.shared._groups.pop(self.gid, None)


async def fetch_cluster_info(address: tuple[str, int], timeout: float, tls: PeerTls | None = None) -> Any:
    """Ask a running member for the cluster id and members (used by a joining member; ``tls``
    when that member's peer URL is https://)."""
    dial = tls.dial_args(address[0]) if tls is not None else {}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address, **dial), timeout)
    except ssl.SSLError as exc:
        raise TransportError(f"TLS with the member failed: {tlsmod.describe_handshake_error(exc)}") from None
    try:
        reason = tls.refusal(writer) if tls is not None else None
        if reason is not None:
            raise TransportError(f"member at {address[0]}:{address[1]} refused: {reason}")
        try:
            writer.write(encode_frame(HELLO, [0, 0]) + encode_frame(RPC_REQ, [1, "cluster_info", None]))
            await writer.drain()
            kind, body = await asyncio.wait_for(read_frame(reader), timeout)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
            if tls is None:
                raise
            # TLS1.3: a member that refuses our certificate says so only by closing after the handshake.
            raise TransportError(
                "the member closed the TLS connection without answering: it refused this member's peer "
                "certificate (is --peer-cert-file signed by the CA its --peer-trusted-ca-file names, with a "
                f"name it allows?) ({tlsmod.describe_handshake_error(exc)})"
            ) from None
        if kind != RPC_RESP or not body[1]:
            raise TransportError(f"member at {address} refused cluster_info: {body}")
        return body[2]
    finally:
        writer.close()
