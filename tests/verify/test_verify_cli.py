"""`conclave check`: last line and exit status, errors above it, --timeout, --html, stdin."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from conclave.cli.main import main

GOOD = (
    '{"process": 0, "type": "invoke", "f": "write", "value": 1}\n'
    '{"process": 0, "type": "ok", "f": "write", "value": 1}\n'
    '{"process": 1, "type": "invoke", "f": "read", "value": null}\n'
    '{"process": 1, "type": "ok", "f": "read", "value": 1}\n'
)
BAD = GOOD.replace('"f": "read", "value": 1', '"f": "read", "value": 2')


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    rc = main(["check", *argv])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def write(tmp_path: Path, text: str, name: str = "h.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_linearizable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines, _ = run(capsys, write(tmp_path, GOOD), "--model", "register")
    assert (rc, lines[-1]) == (0, "linearizable")


def test_not_linearizable_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BAD)
    rc, lines, _ = run(capsys, path, "--model", "register", "--format", "json")
    assert (rc, lines[-1]) == (1, "not linearizable")
    text = "\n".join(lines)
    assert "read returned 2 but the register holds 1" in text


def test_timeout_gives_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = []
    for p in range(14):
        events.append({"process": p, "type": "invoke", "f": "write", "value": p})
    for p in range(14):
        events.append({"process": p, "type": "ok", "f": "write", "value": p})
    events += [{"process": 99, "type": "invoke", "f": "read"}, {"process": 99, "type": "ok", "f": "read", "value": 77}]
    path = write(tmp_path, "".join(json.dumps(e) + "\n" for e in events))
    rc, lines, _ = run(capsys, path, "--model", "register", "--timeout", "0.05")
    assert (rc, lines[-1]) == (2, "unknown")
    assert any("time limit" in line for line in lines)


def test_memory_bound_gives_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = [{"process": p, "type": t, "f": "write", "value": p} for t in ("invoke", "ok") for p in range(10)]
    events += [{"process": 99, "type": "invoke", "f": "read"}, {"process": 99, "type": "ok", "f": "read", "value": 77}]
    path = write(tmp_path, "".join(json.dumps(e) + "\n" for e in events))
    rc, lines, _ = run(capsys, path, "--model", "register", "--max-memory", "0.01")
    assert (rc, lines[-1]) == (2, "unknown")
    assert any("memory bound of 0.01 MiB" in line for line in lines)
    rc, lines, err = run(capsys, path, "--model", "register", "--max-memory", "0")
    assert (rc, lines[-1]) == (2, "unknown")
    assert "--max-memory must be positive" in err


@pytest.mark.parametrize(
    ("text", "model", "words"),
    [
        (GOOD + "oops\n", "register", "h.jsonl:5: not valid JSON"),
        (GOOD.replace('"read"', '"peek"'), "register", "h.jsonl:3: the register model has no operation 'peek'"),
        ('{"process": 0, "type": "invoke", "f": "cas", "value": 3}\n', "cas-register", "cas needs [expected, new]"),
    ],
)
def test_bad_input_is_an_error_above_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, model: str, words: str
) -> None:
    rc, lines, err = run(capsys, write(tmp_path, text), "--model", model)
    assert (rc, lines[-1]) == (2, "unknown")
    assert words in err and "Traceback" not in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines, err = run(capsys, str(tmp_path / "nope"), "--model", "kv")
    assert (rc, lines[-1]) == (2, "unknown")
    assert "cannot read" in err


def test_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"\xff\xfe\x00garbage")
    rc, lines, err = run(capsys, str(path), "--model", "kv")
    assert (rc, lines[-1]) == (2, "unknown")
    assert "cannot read" in err


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD))
    rc, lines, _ = run(capsys, "-", "--model", "cas-register")
    assert (rc, lines[-1]) == (0, "linearizable")


def test_html_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.html"
    rc, lines, _ = run(capsys, write(tmp_path, BAD), "--model", "register", "--html", str(out))
    assert rc == 1 and lines[-1] == "not linearizable"
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    data = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])
    (part,) = data["partitions"]
    assert part["verdict"] == "not linearizable"
    assert [o["step"] for o in part["ops"] if "step" in o] == [1]
    (blocked,) = [o for o in part["ops"] if "blocked" in o]
    assert blocked["blocked"] == "read returned 2 but the register holds 1"
    assert blocked["stateBefore"] == "1"
    assert blocked["deadline"] is True


def test_html_marks_linearization_points_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.html"
    rc, _, _ = run(capsys, write(tmp_path, GOOD), "--model", "register", "--html", str(out))
    assert rc == 0
    data = json.loads(out.read_text().split("const DATA = ", 1)[1].split(";\n", 1)[0])
    ops = sorted((o for o in data["partitions"][0]["ops"]), key=lambda o: o["step"])
    assert [o["label"] for o in ops] == ["write(1)", "read() → 1"]
    for o in ops:
        assert o["call"] <= o["point"] <= o["ret"]
    assert ops[0]["point"] < ops[1]["point"]


def _two_keys(bad_key: str | None) -> str:
    """Two keys, each a long run of write-then-read pairs (many windows); one read of bad_key goes stale."""
    lines = []
    t = 0
    for k in range(400):
        for key in ("a", "b"):
            value = 2 * k + (key == "b") + 1
            read = value - 2 if key == bad_key and k == 300 else value
            lines += [
                {"process": 0, "type": "invoke", "f": "write", "key": key, "value": value, "time": t},
                {"process": 0, "type": "ok", "f": "write", "key": key, "value": value, "time": t + 1},
                {"process": 1, "type": "invoke", "f": "read", "key": key, "value": None, "time": t + 2},
                {"process": 1, "type": "ok", "f": "read", "key": key, "value": read, "time": t + 3},
            ]
            t += 4
    return "".join(json.dumps(e) + "\n" for e in lines)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_every_key_gets_its_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str) -> None:
    path = write(tmp_path, _two_keys("b"))
    rc, lines, _ = run(capsys, path, "--model", "register", "--jobs", jobs, "--time-limit", "120")
    assert (rc, lines[-1]) == (1, "not linearizable")
    assert '  key "a": linearizable (800 operations in 17 windows)' in lines
    assert '  key "b": not linearizable (800 operations in 17 windows; failing window of 48)' in lines
    assert any("The failing window has 48 operations" in line for line in lines)
    rc, lines, _ = run(capsys, write(tmp_path, _two_keys(None), "ok.jsonl"), "--model", "register", "--jobs", jobs)
    assert (rc, lines[-1]) == (0, "linearizable")


def test_jobs_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines, err = run(capsys, write(tmp_path, GOOD), "--model", "register", "--jobs", "0")
    assert (rc, lines[-1]) == (2, "unknown")
    assert "--jobs must be positive" in err


def test_html_draws_only_the_failing_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.html"
    rc, _, _ = run(capsys, write(tmp_path, _two_keys("a")), "--model", "register", "--html", str(out))
    assert rc == 1
    data = json.loads(out.read_text().split("const DATA = ", 1)[1].split(";\n", 1)[0])
    failing, good = data["partitions"]
    assert failing["verdict"] == "not linearizable" and failing["total"] == 48
    assert "Only the failing window from position" in failing["note"]
    assert good["verdict"] == "linearizable" and good["total"] == 800 and good["note"] == ""
