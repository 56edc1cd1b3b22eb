"""Shared fixtures for the checker tests: where the Porcupine reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REFDATA = REPO_ROOT.parent / "shared" / "refdata" / "porcupine"


@pytest.fixture(scope="session")
def refdata() -> Path:
    """The refdata directory; skipped when absent outside CI, a failure under CI=true."""
    if not (REFDATA / "README.md").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"reference data missing at {REFDATA} (CI=true)")
        pytest.skip(f"reference data not found at {REFDATA}")
    return REFDATA
