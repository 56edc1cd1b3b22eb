"""A small raw HTTP/2 gRPC client on the ``h2`` package, for what grpc's own client never sends."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


@dataclass
class Stream:
    data: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    reset: bool = False

    def messages(self) -> list[bytes]:
        out, buf = [], bytes(self.data)
        while len(buf) >= 5:
            n = struct.unpack(">I", buf[1:5])[0]
            if len(buf) < 5 + n:
                break
            out.append(buf[5 : 5 + n])
            buf = buf[5 + n :]
        return out

    @property
    def status(self) -> int | None:
        v = self.headers.get("grpc-status")
        return None if v is None else int(v)


class RawH2:
    def __init__(
        self, endpoint: str, *, read_window: int | None = None, auto_ack: bool = True, authority: str = "127.0.0.1"
    ) -> None:
        self.authority = authority
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if read_window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: read_window})
        self.auto_ack = auto_ack
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self.inbuf = b""
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(
        self,
        path: str,
        messages: Sequence[bytes] = (),
        *,
        end: bool = True,
        headers: Sequence[tuple[str, str]] = (),
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *headers,
            ],
            end_stream=end and not messages,
        )
        self.streams[sid] = Stream()
        for i, m in enumerate(messages):
            self.conn.send_data(sid, grpc_frame(m), end_stream=end and i == len(messages) - 1)
        self.flush()
        return sid

    def pump(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False once the connection is closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        # Fed one frame at a time, so the events before a GOAWAY survive what h2 then refuses.
        self.inbuf += data
        events: list[h2.events.Event] = []
        while len(self.inbuf) >= 9:
            n = 9 + int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < n:
                break
            frame, self.inbuf = self.inbuf[:n], self.inbuf[n:]
            try:
                events += self.conn.receive_data(frame)
            except h2.exceptions.ProtocolError:  # frames after the peer's GOAWAY
                self.closed = True
                break
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            st = self.streams.get(sid) if sid is not None else None
            if isinstance(ev, h2.events.DataReceived) and st is not None:
                st.data += ev.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and st is not None:
                st.headers.update(dict(ev.headers))  # type: ignore[arg-type]
            elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                st.ended = True
            elif isinstance(ev, h2.events.StreamReset) and st is not None:
                st.reset = st.ended = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
        try:
            self.flush()
        except OSError:
            self.closed = True
        return not self.closed

    def wait(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not self.pump(min(left, 0.2)) and not pred():
                return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def send_flow_controlled(c: RawH2, sid: int, data: bytes, *, end: bool = True, timeout: float = 10.0) -> int:
    """Send ``data`` on ``sid`` as the peer's windows allow; returns the bytes sent before the
    stream ended, the peer stopped granting window for ``timeout`` seconds, or the data ran out."""
    sent = 0
    deadline = time.monotonic() + timeout
    while sent < len(data) and time.monotonic() < deadline:
        st = c.streams[sid]
        if st.ended or c.closed:
            break
        try:
            window = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        except Exception:  # the stream was closed by the peer
            break
        if window <= 0:
            c.pump(0.05)
            continue
        chunk = data[sent : sent + window]
        last = sent + len(chunk) == len(data)
        try:
            c.conn.send_data(sid, chunk, end_stream=end and last)
            c.flush()
        except Exception:
            break
        sent += len(chunk)
        deadline = time.monotonic() + timeout
    return sent
