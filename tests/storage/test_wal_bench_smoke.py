"""The WAL benchmark still runs (tiny sizes; the figures themselves come from `make bench`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "wal_bench.py"


def test_wal_bench_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("wal_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out_json = tmp_path / "r.json"
    args = ["--dir", str(tmp_path), "--seconds", "0.1", "--slices", "2", "--recovery-entries", "3000"]
    rc = mod.main([*args, "--json", str(out_json)])
    assert rc in (0, 1)  # 1 only means a target was missed on this loaded machine
    out = capsys.readouterr().out
    assert "ratio" in out and "recovery of 3,000 entries" in out
    results = json.loads(out_json.read_text())
    assert [a["batch"] for a in results["append"]] == [1, 16, 256]
    assert all(a["wal_entries_per_s"] > 0 and a["raw_entries_per_s"] > 0 for a in results["append"])
    assert results["recovery"]["entries"] == 3000
    assert list(tmp_path.iterdir()) == [out_json]  # the scratch directory is gone
