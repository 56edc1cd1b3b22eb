"""`conclave serve` flags: etcd's names, environment variables, clear errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conclave.cli.main import build_parser
from conclave.cli.serve import config_from_args
from conclave.server.config import ConfigError
from conclave.server.launcher import free_ports


def parse(*argv: str) -> object:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_are_etcds() -> None:
    cfg = parse()
    assert cfg.heartbeat_interval_ms == 100  # type: ignore[attr-defined]
    assert cfg.election_timeout_ms == 1000  # type: ignore[attr-defined]
    assert cfg.snapshot_count == 10_000  # type: ignore[attr-defined]
    assert cfg.max_request_bytes == 1536 * 1024  # type: ignore[attr-defined]
    assert cfg.data_dir == "default.conclave"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--listen-client-urls", "http://127.0.0.1"], "needs a host and a port"),
        (["--listen-peer-urls", "http://[::1"], "cannot parse URL"),
        (["--listen-client-urls", "ftp://127.0.0.1:1"], "scheme"),
        (["--name", "a", "--initial-cluster", "b=http://127.0.0.1:2380"], "no member named 'a'"),
        (["--initial-cluster", "garbage"], "expected name=url"),
        (["--initial-cluster-state", "maybe"], "'new' or 'existing'"),
        (["--heartbeat-interval", "abc"], "expected an integer"),
        (["--election-timeout", "200"], "at least 5 times"),
        (["--snapshot-count", "0"], "must be > 0"),
    ],
)
def test_bad_flags_are_clear_errors(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(*argv)


def test_environment_variables_set_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCLAVE_SNAPSHOT_COUNT", "42")
    monkeypatch.setenv("CONCLAVE_NAME", "envname")
    cfg = parse()
    assert cfg.snapshot_count == 42  # type: ignore[attr-defined]
    assert cfg.name == "envname"  # type: ignore[attr-defined]
    cfg = parse("--snapshot-count", "7")  # the command line wins
    assert cfg.snapshot_count == 7  # type: ignore[attr-defined]


def _serve(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    c, p = free_ports(2)
    return subprocess.run(
        [sys.executable, "-m", "conclave", "serve", "--data-dir", str(tmp / "d"),
         "--listen-client-urls", f"http://127.0.0.1:{c}", "--listen-peer-urls", f"http://127.0.0.1:{p}", *extra],
        capture_output=True, text=True, timeout=30, env={**os.environ},
    )


def test_bad_flag_exits_2_with_one_line(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--heartbeat-interval", "-5")
    assert done.returncode == 2
    assert "conclave serve: --heartbeat-interval must be > 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreadable_data_dir_record_is_a_clear_error(tmp_path: Path) -> None:
    # A data dir of another member is no longer refused (the data dir wins, as in etcd:
    # tests/server/test_server_datadir.py); a record that does not parse still is, in one line.
    proc_dir = tmp_path / "d"
    proc_dir.mkdir()
    (proc_dir / "member.json").write_text('{"name": "other"')
    done = _serve(tmp_path, "--name", "me")
    assert done.returncode == 1
    assert "member.json is unreadable" in done.stderr
    assert "Traceback" not in done.stderr
