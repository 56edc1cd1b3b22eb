"""The verify package's one exception hierarchy.

Everything the checker refuses (a malformed history, an operation a model does
not understand, an unknown model or format) is a ``VerifyError`` with a message
a person can act on; the CLI prints it and exits with status 2, never a traceback.
"""

from __future__ import annotations


class VerifyError(Exception):
    """Base of every error raised by ``conclave.verify``."""


class HistoryError(VerifyError):
    """The history cannot be read: says which source and line, and why."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = f"{source}:{line}" if line > 0 else source
        super().__init__(f"{where}: {message}")


class UnknownNameError(VerifyError):
    """An unknown model or format name was asked for."""
