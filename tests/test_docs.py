"""The README's and docs' examples do what they say: every `conclave check` example is run and its
output compared, the command-line client's session in docs/client.md is replayed against a fresh
member, and every relative link points inside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.server.launcher import free_ports

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _blocks(text: str) -> list[list[str]]:
    return [b.splitlines() for b in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)]


def _sessions(block: list[str]) -> list[tuple[str, list[str]]]:
    """`$ command` lines of a block, each with the output lines that follow it."""
    out: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def _check_examples() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in _blocks(doc.read_text()):
            for cmd, expected in _sessions(block):
                if cmd.startswith("conclave check "):
                    found.append((doc.name, cmd, expected))
    return found


def test_docs_have_checker_examples() -> None:
    names = {doc for doc, _cmd, _exp in _check_examples()}
    assert {"README.md", "checker.md"} <= names


@pytest.mark.parametrize(("doc", "cmd", "expected"), _check_examples(), ids=lambda v: str(v)[:40])
def test_checker_example_prints_what_the_docs_show(doc: str, cmd: str, expected: list[str], tmp_path: Path) -> None:
    shutil.copytree(REPO / "docs" / "examples", tmp_path / "docs" / "examples")
    argv = [sys.executable, "-m", "conclave", *cmd.split()[1:]]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == expected, f"{doc}: {cmd}\n{done.stdout}{done.stderr}"


def test_relative_links_stay_inside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"
        # Example commands must not read files from outside the repository either.
        for block in _blocks(text):
            for line in block:
                assert "../shared" not in line, f"{doc.name}: {line}"


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh single-member cluster with a native port; yields the native endpoint."""
    c, p, n = free_ports(3)
    data = tmp_path_factory.mktemp("docs-member")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conclave", "serve", "--name", "docs", "--data-dir", str(data / "d"),
         "--listen-client-urls", f"http://127.0.0.1:{c}", "--listen-peer-urls", f"http://127.0.0.1:{p}",
         "--listen-native-urls", f"http://127.0.0.1:{n}", "--heartbeat-interval", "20",
         "--election-timeout", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    endpoint = f"127.0.0.1:{n}"
    try:
        deadline = time.monotonic() + 30
        while True:
            ok = subprocess.run([sys.executable, "-m", "conclave", "get", "x", "--endpoints", endpoint],
                                capture_output=True, text=True, timeout=30).returncode == 0
            if ok:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the member did not start"
            time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(20)


def test_client_md_command_line_session_runs_as_shown(member: str) -> None:
    text = (REPO / "docs" / "client.md").read_text()
    block = next(b for b in _blocks(text) if any(ln.startswith("$ conclave put greeting") for ln in b))
    env = {**os.environ, "CONCLAVE_ENDPOINTS": member}
    ran = 0
    for cmd, expected in _sessions(block):
        if cmd.startswith("conclave watch"):
            break  # from here on the commands run until Ctrl-C
        shell_cmd = cmd.split("  #")[0].replace("conclave ", f"{sys.executable} -m conclave ")
        done = subprocess.run(shell_cmd, shell=True, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{cmd}: {done.stderr}"
        got = done.stdout.splitlines()
        if any("..." in line for line in expected):  # abbreviated in the docs: compare the shape only
            assert len(got) == len(expected) and got[0].startswith(expected[0].split("...")[0]), (cmd, got)
        else:
            assert got == expected, f"{cmd}\nexpected {expected}\ngot {got}"
        ran += 1
    assert ran >= 6
