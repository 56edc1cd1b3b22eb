"""The lab's pages: self-contained, well-formed HTML; `conclave lab` on the command line; a real browser renders one."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conclave.cli.main import main
from conclave.lab import registry
from conclave.lab.registry import SCENARIOS
from conclave.lab.render import render_html

VOID = {"meta", "br", "hr", "img", "input", "link", "circle", "line", "rect", "polyline"}


class Checker(HTMLParser):
    """Collects tags, checks nesting, and any reference that would need the network."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and (":" in value.split("/")[0] or value.startswith("//")):
                self.errors.append(f"<{tag} {name}={value}> refers outside the page")
        if tag in ("script", "link", "iframe", "img"):
            self.errors.append(f"<{tag}> in a self-contained page")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


def well_formed(page: str) -> Checker:
    c = Checker()
    c.feed(page)
    c.close()
    assert not c.errors, c.errors[:5]
    assert not c.stack, f"unclosed: {c.stack}"
    assert "http://" not in page and "https://" not in page
    assert page.startswith("<!DOCTYPE html>")
    return c


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_page_is_self_contained_and_well_formed(name: str) -> None:
    s = SCENARIOS[name]
    opts = {"duration": 600, "jitters": "0,150,300", "repeats": 1} if name == "election-timeouts" else {}
    for v in s.variants:
        out = s.run(2, v.name, **opts)
        c = well_formed(render_html(out, s.concept, "conclave lab run"))
        assert {"svg", "table", "pre"} <= c.tags
        if out.sweep:
            assert "polyline" in c.tags  # the plotted curve


def test_failing_step_is_highlighted() -> None:
    out = SCENARIOS["quorum-race"].run(1, "plain")
    page = render_html(out)
    assert 'stroke="#c0241a"' in page and "Where the checker fails" in page
    fixed = render_html(SCENARIOS["quorum-race"].run(1, "read-repair"))
    assert 'stroke="#c0241a"' not in fixed


def test_cli_list_and_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["lab", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SCENARIOS)
    page = tmp_path / "q.html"
    assert main(["lab", "run", "quorum-race", "--read-repair", "--seed", "3", "--html", str(page)]) == 0
    shown = capsys.readouterr().out
    assert "verdict: linearizable" in shown and "timeline" in shown
    well_formed(page.read_text())
    assert main(["lab", "run", "cap-partition", "--mode", "ap", "--no-timeline"]) == 0
    assert main(["lab", "run", "2pc-coordinator-crash", "--recover-after", "200"]) == 0
    assert "in doubt ms n2 2" in capsys.readouterr().out
    assert main(["lab", "run", "nope"]) == 2
    assert main(["lab", "run", "quorum-race", "--sync"]) == 2
    assert "has no variant 'sync'" in capsys.readouterr().err


def test_run_all_table_pages_and_exit_status(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCENARIOS["election-timeouts"].options, "duration", 600)
    monkeypatch.setitem(SCENARIOS["election-timeouts"].options, "jitters", "0,300")
    monkeypatch.setitem(SCENARIOS["election-timeouts"].options, "repeats", 1)
    assert main(["lab", "run", "all", "--html", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "all verdicts as expected" in table
    rows = sum(len(s.variants) for s in SCENARIOS.values())
    pages = sorted(p.name for p in tmp_path.glob("*.html"))
    assert len(pages) == rows + 1 and "index.html" in pages
    index = (tmp_path / "index.html").read_text()
    well_formed(index)
    assert index.count("<tr") == rows + 1
    # a scenario whose verdict differs from the expectation makes the exit status non-zero
    q = SCENARIOS["quorum-race"]
    wrong = dataclasses.replace(q, variants=(dataclasses.replace(q.variants[0], expected="linearizable"),))
    monkeypatch.setattr(registry, "SCENARIOS", {"quorum-race": wrong})
    assert main(["lab", "run", "all"]) == 1
    assert "differs" in capsys.readouterr().out


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_a_headless_browser_renders_a_page(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI=true (make system-deps installs it)")
        pytest.skip("chromium is not installed (make system-deps installs it)")
    out = SCENARIOS["quorum-race"].run(1, "plain")
    page = tmp_path / "page.html"
    page.write_text(render_html(out, SCENARIOS["quorum-race"].concept))
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 900)
    assert len(data) > 20_000  # a blank page compresses to a few KiB; text, boxes and bands do not


def test_html_into_a_new_directory_is_made_and_an_unwritable_path_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    page = tmp_path / "new" / "dir" / "z.html"
    assert main(["lab", "run", "zombie-leader", "--seed", "1", "--html", str(page)]) == 0
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["lab", "run", "zombie-leader", "--seed", "1", "--html", str(blocker / "z.html")]) == 2
    assert "conclave lab: cannot write" in capsys.readouterr().err
    assert main(["lab", "run", "all", "--html", str(blocker / "pages")]) == 2
    assert "conclave lab: cannot write pages" in capsys.readouterr().err
