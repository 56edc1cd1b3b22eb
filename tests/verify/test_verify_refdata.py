"""Every verdict listed in shared/refdata/porcupine/README.md, through the loaders and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conclave.verify.checker import Verdict, check
from conclave.verify.formats import detect, load
from conclave.verify.model import model_named

ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| (NOT linearizable|linearizable) \| (\d+) \|", re.M)


def rows(refdata: Path) -> list[tuple[str, str, str, int]]:
    found = [(f, m, v, int(n)) for f, m, v, n in ROW.findall((refdata / "README.md").read_text())]
    assert len(found) == 55, "the README's verdict table changed shape"
    return found


def test_every_reference_verdict(refdata: Path) -> None:
    wrong = []
    for name, model_name, expected, ops in rows(refdata):
        history = load((refdata / name).read_text(), name)
        assert len(history.operations) == ops, name
        assert history.format == ("edn" if model_name == "kv" else "jepsen-etcd-log") or ops == 0
        result = check(history, model_named("kv" if model_name == "kv" else "cas-register"))
        if result.verdict.value != expected.lower():
            wrong.append((name, expected, result.verdict.value))
    assert wrong == []


def test_explicit_formats_match_detection(refdata: Path) -> None:
    etcd = (refdata / "jepsen" / "etcd_100.log").read_text()
    kv = (refdata / "kv" / "c01-bad.txt").read_text()
    assert detect(etcd) == "jepsen-etcd-log"
    assert load(etcd, "x", "jepsen-etcd-log") == load(etcd, "x")
    assert load(kv, "x", "porcupine-kv").operations == load(kv, "x", "edn").operations


def test_failing_kv_partition_is_named_with_its_evidence(refdata: Path) -> None:
    history = load((refdata / "kv" / "c01-bad.txt").read_text(), "c01-bad")
    result = check(history, model_named("kv"))
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    (bad,) = result.failing
    assert bad.key is not None and bad.blocked
    # The prefix is itself a valid sequential run and every candidate after it is rejected.
    assert len(bad.states) == len(bad.order) < len(bad.operations)
    assert all(not b.legal for b in bad.blocked)


@pytest.mark.parametrize(
    ("name", "model", "rc", "last"),
    [("jepsen/etcd_002.log", "cas-register", 0, "linearizable"), ("kv/c01-bad.txt", "kv", 1, "not linearizable")],
)
def test_cli_on_reference_files(refdata: Path, tmp_path: Path, name: str, model: str, rc: int, last: str) -> None:
    html = tmp_path / "out.html"
    out = subprocess.run(
        [sys.executable, "-m", "conclave", "check", str(refdata / name), "--model", model, "--html", str(html)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == rc, out.stderr
    assert out.stdout.splitlines()[-1] == last
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_flat_and_general_edn_readers_agree(refdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conclave.verify import formats

    texts = {p.name: p.read_text() for p in sorted((refdata / "kv").glob("*.txt"))}
    fast = {name: load(text, name) for name, text in texts.items()}
    monkeypatch.setattr(formats, "_edn_flat_events", lambda text: None)
    for name, text in texts.items():
        assert load(text, name) == fast[name], name
