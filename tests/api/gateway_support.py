"""A small HTTP/1.1 client for the JSON gateway tests (http.client: no library between us and the wire).

``Http.post`` sends one request and parses the JSON answer; ``Http.stream`` reads a chunked
streaming answer object by object; :class:`BodyStream` keeps the *request* body open (chunked)
to send watch create/cancel requests one at a time, as a bidirectional client does. Every read
has a timeout, so a server that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.server.launcher import ProcessCluster, free_ports


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def _body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


class Http:
    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.host, port = endpoint.rsplit(":", 1)
        self.port = int(port)
        self.timeout = timeout

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        conn = self._conn()
        try:
            conn.request(method, path, body=_body(body) if method != "GET" else None, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        return self.request("POST", path, body, headers)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def stream(
        self, path: str, body: Any, count: int, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], list[Any]]:
        """POST, then read ``count`` newline-delimited objects (fewer if the response ends)."""
        conn = self._conn()
        try:
            conn.request("POST", path, body=_body(body), headers=headers or {})
            resp = conn.getresponse()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            out = []
            while len(out) < count:
                line = resp.readline()
                if not line:
                    break
                if line.strip():
                    out.append(json.loads(line))
            return resp.status, hdrs, out
        finally:
            conn.close()


class BodyStream:
    """A POST whose request body stays open: each ``send`` is one chunk of the body."""

    def __init__(self, client: Http, path: str) -> None:
        self.conn = client._conn()
        self.conn.putrequest("POST", path)
        self.conn.putheader("Transfer-Encoding", "chunked")
        self.conn.putheader("Content-Type", "application/json")
        self.conn.endheaders()
        self.resp: http.client.HTTPResponse | None = None

    def send(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.conn.send(b"0\r\n\r\n")

    def read(self) -> Any:
        if self.resp is None:
            self.resp = self.conn.getresponse()
        while True:
            line = self.resp.readline()
            if not line:
                raise EOFError("the response ended")
            if line.strip():
                return json.loads(line)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def etcd_binary() -> str | None:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if path is None and os.environ.get("CI") == "true":
        raise RuntimeError("etcd is required in CI (make system-deps installs it)")
    return path


def single_member(
    root: Path, kind: str = "conclave", http_port: int | None = None, extra: tuple[str, ...] = ()
) -> ProcessCluster:
    """A started one-member cluster (Conclave, or real etcd with ``kind="etcd"``)."""
    args = list(extra)
    if kind == "conclave" and http_port is not None:
        args += ["--listen-client-http-urls", f"http://127.0.0.1:{http_port}"]
    c = ProcessCluster(root, 1, kind=kind, extra_args=args)
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    return c


def http_port() -> int:
    return free_ports(1)[0]
