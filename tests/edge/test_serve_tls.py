"""`conclave serve` with etcd's client TLS flags, on both engines, reached by etcdctl with --cacert."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.api import edge_server
from conclave.server.launcher import free_ports

from .tls_support import Pki, make_pki

ETCDCTL = shutil.which("etcdctl")
ENGINES = ["python", "rust"] if edge_server.available() else ["python"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


class Member:
    def __init__(self, tmp: Path, engine: str, *flags: str) -> None:
        self.client, peer = free_ports(2)
        self.url = f"https://127.0.0.1:{self.client}"
        self.log = tmp / f"{engine}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conclave", "serve", "--name", "n1", "--data-dir", str(tmp / engine),
                 "--grpc-engine", engine, "--listen-client-urls", self.url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}", *flags],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def ctl(m: Member, pki: Pki, *args: str, client_cert: bool = False) -> tuple[int, str]:
    assert ETCDCTL is not None
    tls = ["--cacert", str(pki.ca)]
    if client_cert:
        tls += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={m.url}", "--dial-timeout=3s", "--command-timeout=5s", *tls, *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def wait_healthy(m: Member, pki: Pki, client_cert: bool = False) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert m.proc.poll() is None, m.log.read_text()
        if ctl(m, pki, "endpoint", "health", client_cert=client_cert)[0] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(m.log.read_text())


@pytest.fixture
def member_factory(tmp_path: Path) -> Iterator[type[Member]]:
    made: list[Member] = []

    class Made(Member):
        def __init__(self, engine: str, *flags: str) -> None:
            super().__init__(tmp_path, engine, *flags)
            made.append(self)

    try:
        yield Made  # type: ignore[misc]
    finally:
        for m in made:
            m.stop()


pytestmark = pytest.mark.skipif(ETCDCTL is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")


@pytest.mark.parametrize("engine", ENGINES)
def test_https_client_url_with_cert_and_key(member_factory: type[Member], pki: Pki, engine: str) -> None:
    m = member_factory(engine, "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key))
    wait_healthy(m, pki)
    assert ctl(m, pki, "put", "k", "tls")[0] == 0
    rc, out = ctl(m, pki, "get", "k", "--print-value-only")
    assert rc == 0 and out.strip() == "tls", out
    rc, out = ctl(m, pki, "endpoint", "status", "--cluster")  # the URL :authority over TLS
    assert rc == 0 and m.url in out, out
    assert f"gRPC engine: {engine}" in m.log.read_text()


@pytest.mark.parametrize("engine", ENGINES)
def test_client_cert_auth_refuses_a_client_without_a_certificate(
    member_factory: type[Member], pki: Pki, engine: str
) -> None:
    m = member_factory(
        engine, "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
        "--client-cert-auth", "--trusted-ca-file", str(pki.ca),
    )  # fmt: skip
    wait_healthy(m, pki, client_cert=True)
    assert ctl(m, pki, "put", "k", "mtls", client_cert=True)[0] == 0
    rc, _ = ctl(m, pki, "get", "k")
    assert rc != 0


def test_https_without_a_cert_is_a_clear_error(tmp_path: Path) -> None:
    client, peer = free_ports(2)
    done = subprocess.run(
        [sys.executable, "-m", "conclave", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen-client-urls", f"https://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "needs TLS: give --cert-file and --key-file" in done.stderr
