"""One client connection to one member over the native protocol (see ``conclave.api.native``).

Theory of operation: an asyncio protocol that writes request frames as calls are made and
matches answer frames to waiting futures by request id, so any number of calls may be in flight
(pipelining) and answers may arrive in any order. Stream requests (watches, keep-alive streams)
register a callback that receives every pushed item, then the end of the stream. When the
connection drops, every waiting call fails with :class:`ConnectionLost` (``sent=True``: the
request may have been applied) and every stream ends with it; the client above decides whether
to retry elsewhere.

TLS: ``connect(..., ssl=context)`` wraps the connection in TLS (the context says which CA to
trust, which client certificate to present, whether to verify). Failures that retrying cannot
cure are :class:`TLSError` with the reason: a certificate that does not verify, a handshake the
member broke off (a plain-text port), or a member that answers a plain-text client in TLS.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, cast

import msgpack

from conclave.client.errors import ClientError, ProtocolError, TLSError, server_error
from conclave.wire.native import FRAME_HEADER, pack_frame

FRAME_BYTES_MAX = 256 * 1024 * 1024  # answers (large ranges) may be big; this only stops garbage


class ConnectionLost(ClientError):
    """The connection to a member failed; ``sent`` says whether the request may have left."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


StreamCallback = Callable[[Any, BaseException | None], None]  # (item, None) per push; (None, exc) at end


def host_port(endpoint: str) -> tuple[str, int]:
    raw = endpoint.split("://", 1)[-1].rstrip("/")
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"endpoint must be host:port, got {endpoint!r}")
    return host.strip("[]"), int(port)


class NativeChannel(asyncio.Protocol):
    """A pipelined connection; create with ``await NativeChannel.connect(endpoint, timeout)``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, StreamCallback] = {}
        self.ids = itertools.count(1)
        self.closed = False
        self.lost: BaseException | None = None
        self.received = False  # any frame yet (a silent close before that hints at a TLS port)
        self.tls = False

    @classmethod
    async def connect(cls, endpoint: str, timeout: float,
                      ssl: ssl_module.SSLContext | None = None) -> NativeChannel:
        host, port = host_port(endpoint)
        loop = asyncio.get_running_loop()
        try:
            _, channel = await asyncio.wait_for(
                loop.create_connection(lambda: cls(endpoint), host, port, ssl=ssl,
                                       server_hostname=host if ssl is not None else None,
                                       ssl_handshake_timeout=timeout if ssl is not None else None),
                timeout,
            )
        except ssl_module.SSLCertVerificationError as exc:
            raise TLSError(f"TLS to {endpoint}: the member's certificate does not verify: "
                           f"{exc.verify_message or exc.reason}") from None
        except ssl_module.SSLError as exc:
            raise TLSError(f"TLS handshake with {endpoint} failed: {exc.reason or exc}") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            if ssl is None:
                raise ConnectionLost(f"cannot connect to {endpoint}: {exc}", sent=False) from None
            raise TLSError(f"TLS handshake with {endpoint} failed: the member closed the connection "
                           f"(is its native port plain-text? then connect without TLS)") from None
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {endpoint}: {exc or type(exc).__name__}", sent=False) from None
        channel.tls = ssl is not None
        return channel

    # ---------------------------------------------------------------- protocol events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl_module.SSLError) and not self.received:
            # The member's TLS layer refused us after the handshake (TLS 1.3 checks the client
            # certificate then): a certificate required, unknown or revoked.
            self._fail(TLSError(f"TLS with {self.endpoint}: the member refused the connection: {exc.reason or exc}"
                                f" (a client certificate it accepts is needed: cert_file=, key_file=)"))
            return
        self._fail(ConnectionLost(f"connection to {self.endpoint} lost" + (f": {exc}" if exc else ""), sent=True))

    def _fail(self, err: BaseException) -> None:
        if self.closed and not self.calls and not self.streams:
            return
        self.closed = True
        self.lost = err
        calls, self.calls = self.calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(err)
        streams, self.streams = self.streams, {}
        for callback in streams.values():
            callback(None, err)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.received and not self.tls and len(buf) >= 2 and buf[0] in (0x15, 0x16) and buf[1] == 3:
            # A TLS record (alert or handshake) where a frame should be: this port speaks TLS.
            self._fail(TLSError(f"{self.endpoint} answered in TLS: its native port serves TLS; connect with "
                                f"TLS (ca_file=..., or an https:// endpoint)"))
            return
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = FRAME_HEADER.unpack_from(buf, pos)
            if length > FRAME_BYTES_MAX:
                self._fail(ProtocolError(f"{self.endpoint} sent a frame of {length} bytes"))
                return
            end = pos + 4 + length
            if len(buf) < end:
                break
            try:
                msg = msgpack.unpackb(bytes(buf[pos + 4 : end]), raw=False, use_list=True)
                rid, ok, payload = msg
            except Exception:
                self._fail(ProtocolError(f"{self.endpoint} sent a malformed frame"))
                return
            pos = end
            self.received = True
            self._on_message(rid, ok, payload)
        if pos:
            del buf[:pos]

    def _on_message(self, rid: int, ok: bool | None, payload: Any) -> None:
        if ok is None:
            callback = self.streams.get(rid)
            if callback is not None:
                callback(payload, None)
            return
        fut = self.calls.pop(rid, None)
        if fut is not None:
            if fut.done():
                return
            if ok:
                fut.set_result(payload)
            else:
                fut.set_exception(self._error(payload))
            return
        if not ok:  # the final error of a stream whose opening call was already answered
            callback = self.streams.pop(rid, None)
            if callback is not None:
                callback(None, self._error(payload))

    @staticmethod
    def _error(payload: Any) -> ClientError:
        try:
            kind, message = payload
            return server_error(str(kind), str(message))
        except (TypeError, ValueError):
            return ProtocolError(f"malformed error payload {payload!r:.80}")

    # ---------------------------------------------------------------- calls

    def _send(self, method: str, args: list[Any]) -> tuple[int, asyncio.Future[Any]]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionLost(f"connection to {self.endpoint} is closed", sent=False)
        rid = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls[rid] = fut
        self.transport.write(pack_frame([rid, method, args]))
        return rid, fut

    async def call(self, method: str, args: list[Any]) -> Any:
        rid, fut = self._send(method, args)
        try:
            return await fut
        finally:
            self.calls.pop(rid, None)

    async def open_stream(self, method: str, args: list[Any], callback: StreamCallback) -> tuple[int, Any]:
        """Send a stream-opening call; returns (stream id, first answer). ``callback`` gets the pushes."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionLost(f"connection to {self.endpoint} is closed", sent=False)
        rid = next(self.ids)
        self.streams[rid] = callback
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls[rid] = fut
        self.transport.write(pack_frame([rid, method, args]))
        try:
            return rid, await fut
        except BaseException:
            self.streams.pop(rid, None)
            raise
        finally:
            self.calls.pop(rid, None)

    def cancel_stream(self, rid: int) -> None:
        """Stop a stream (no answer awaited; pushes already in flight are dropped)."""
        if self.streams.pop(rid, None) is None or self.closed or self.transport is None or self.transport.is_closing():
            return
        cancel_rid = next(self.ids)
        self.transport.write(pack_frame([cancel_rid, "stream_cancel", [rid]]))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._fail(ConnectionLost(f"connection to {self.endpoint} closed by the client", sent=True))
