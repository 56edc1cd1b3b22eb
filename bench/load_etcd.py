"""A throw-away single-member etcd (the Debian etcd 3.4 binary) on 127.0.0.1 for load comparisons."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

READY_TIMEOUT_S = 15.0


class EtcdUnavailable(RuntimeError):
    """etcd is not installed or did not become ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalEtcd:
    """``with LocalEtcd() as etcd: etcd.endpoint`` -> a ready etcd, stopped and deleted on exit."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("etcd") or "/usr/bin/etcd"
        if not Path(found).exists():
            raise EtcdUnavailable("etcd is not installed (make system-deps installs etcd-server)")
        self.binary = found
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="conclave-bench-etcd-"))
        self.process: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else "unknown"

    def start(self) -> None:
        client = f"http://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--name=bench",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=bench={peer}",
                "--log-level=error",
                "--logger=zap",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import grpc

        from conclave.api import pb
        from conclave.api.stubs import rpc

        deadline = time.monotonic() + READY_TIMEOUT_S
        with grpc.insecure_channel(self.endpoint) as ch:
            get = rpc(ch, "etcdserverpb.KV", "Range")
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise EtcdUnavailable(f"etcd exited with status {self.process.returncode}")
                try:
                    get(pb.RangeRequest(key=b"health"), timeout=1)
                    return
                except grpc.RpcError:
                    time.sleep(0.1)
        self.stop()
        raise EtcdUnavailable(f"etcd on {self.endpoint} was not ready within {READY_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalEtcd:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
