"""`conclave get/put/del/...`: the command-line client (not built yet)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Client subcommands are registered here once built."""
