import subprocess
import sys

from conclave.cli.main import build_parser


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conclave", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for name in ("serve", "up", "sim", "check", "bench"):
        assert name in out.stdout


def test_parser_builds() -> None:
    assert build_parser().prog == "conclave"
