"""A fenced lock guarding a file: a holder that lost the lock cannot overwrite newer work.

Against `make run`'s cluster:

    python examples/fenced_lock.py

A lock's ``fencing_token`` (the lock key's create revision) grows with every new holder. The
downstream store here, ``FencedFile``, remembers the highest token it has accepted and refuses
writes that carry an older one. The demo plays the classic failure: holder A acquires the lock,
then stalls (think of a long GC pause) past its lease TTL; B acquires the lock with a larger token
and writes; when A wakes up and tries to write with its stale token, the file refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from conclave import Client

ENDPOINTS = "127.0.0.1:2381,127.0.0.1:22381,127.0.0.1:32381"


class StaleToken(Exception):
    pass


class FencedFile:
    """A file plus the highest fencing token that wrote it; stale tokens are refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()  # the store's own local atomicity, not the distributed lock

    def write(self, token: int, text: str) -> None:
        with self._mutex:
            state = json.loads(self.path.read_text()) if self.path.exists() else {"token": 0, "text": ""}
            if token < state["token"]:
                raise StaleToken(f"token {token} is older than {state['token']}")
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"token": token, "text": text}))
            os.replace(tmp, self.path)

    def read(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.path.read_text())
        return result


def demo(endpoints: str, path: Path) -> int:
    store = FencedFile(path)
    with Client(endpoints.split(",")) as a, Client(endpoints.split(",")) as b:
        lock_a = a.lock("report-file", ttl=1)
        lock_a.acquire()
        token_a = lock_a.fencing_token
        print(f"A holds the lock with token {token_a}; A stalls (its session stops renewing)")
        # Simulate the stall: stop A's keep-alives and wait until the lease is gone.
        a.lease_revoke(lock_a.session.lease_id)
        with b.lock("report-file", ttl=5, timeout=30) as held:
            print(f"B holds the lock with token {held.fencing_token} and writes")
            store.write(held.fencing_token, "written by B")
        print("A wakes up and writes with its old token ...")
        try:
            store.write(token_a, "written by A (stale)")
            print("  accepted: the store was NOT protected")
            return 1
        except StaleToken as exc:
            print(f"  refused: {exc}")
        print(f"file holds: {store.read()}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", default=ENDPOINTS)
    p.add_argument("--file", type=Path, default=None, help="the guarded file (default: a temporary one)")
    args = p.parse_args()
    path = args.file or Path(tempfile.mkdtemp(prefix="fenced-")) / "report.json"
    return demo(args.endpoints, path)


if __name__ == "__main__":
    sys.exit(main())
