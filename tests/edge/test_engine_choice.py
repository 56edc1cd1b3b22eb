"""`--grpc-engine auto|rust|python`: auto runs rust when the edge is built, else python with a log line saying why."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conclave.api import edge_server
from conclave.server.launcher import free_ports


def test_choose_engine_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_server, "_edge", None)
    monkeypatch.setattr(edge_server, "IMPORT_ERROR", "No module named 'conclave._edge'")
    assert edge_server.choose_engine("auto") == "python"
    assert edge_server.choose_engine("python") == "python"
    with pytest.raises(RuntimeError, match="make edge"):
        edge_server.choose_engine("rust")
    with pytest.raises(ValueError, match="auto, rust, python"):
        edge_server.choose_engine("go")


@pytest.mark.skipif(not edge_server.available(), reason="the compiled edge is not built (make edge)")
def test_choose_engine_with_the_extension() -> None:
    assert edge_server.choose_engine("auto") == "rust"
    assert edge_server.choose_engine("rust") == "rust"
    assert edge_server.choose_engine("python") == "python"


# A member whose `conclave._edge` cannot be imported (as on a machine without a Rust toolchain).
NO_EDGE = "import sys; sys.modules['conclave._edge'] = None; from conclave.cli.main import main; sys.exit(main())"


@pytest.mark.parametrize("hide_edge", [True, False])
def test_serve_logs_which_engine_runs(tmp_path: Path, hide_edge: bool) -> None:
    if not hide_edge and not edge_server.available():
        pytest.skip("the compiled edge is not built (make edge)")
    client, peer = free_ports(2)
    argv = ["-c", NO_EDGE] if hide_edge else ["-m", "conclave"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        p = subprocess.Popen(
            [sys.executable, *argv, "serve", "--name", "n1", "--data-dir", str(tmp_path / "d"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "serving clients" not in log.read_text() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        text = log.read_text()
    finally:
        p.terminate()
        p.wait(15)
    if hide_edge:
        assert "WARNING conclave.runner: gRPC engine: python (grpc.aio), because the compiled edge is not built" in text
        assert "make edge" in text
    else:
        assert "gRPC engine: rust (compiled edge)" in text, text
    assert "serving clients" in text, text
