"""Shared by the lock client scripts: a critical section that detects a second occupant.

A process inside the lock creates ``marker`` with O_CREAT|O_EXCL; if the file is already there,
another process is inside too (mutual exclusion broken). Intervals use CLOCK_MONOTONIC, which is
system-wide on Linux, so the test can also check that the intervals of two processes never overlap.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field


@dataclass
class CriticalSection:
    marker: str
    intervals: list[tuple[float, float]] = field(default_factory=list)
    violations: int = 0

    def enter(self) -> tuple[float, bool]:
        start = time.monotonic()
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return start, True
        except FileExistsError:
            self.violations += 1
            return start, False

    def leave(self, start: float, owned: bool) -> None:
        end = time.monotonic()
        if owned:
            os.unlink(self.marker)
        self.intervals.append((start, end))
