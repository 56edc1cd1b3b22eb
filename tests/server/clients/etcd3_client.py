"""python3-etcd3 0.12 against Conclave, run as a subprocess (etcd3 has its own copy of the etcd
protos and needs PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python with the installed protobuf).

    etcd3_client.py basic ENDPOINT_A ENDPOINT_B PREFIX
        put/get across two members, a watch callback on B seeing puts made through A, a lease kept
        alive with refresh() for longer than its TTL with a key attached, then revoked.
    etcd3_client.py lock ENDPOINT NAME ROUNDS HOLD_S MARKER
        prints "ready", waits for a line on stdin, then takes etcd3's lock ROUNDS times, holding
        it HOLD_S seconds inside a CriticalSection.
    etcd3_client.py hold ENDPOINT NAME TTL
        takes etcd3's lock with a TTL-second lease, prints "held", then refreshes the lease every
        TTL/4 seconds for up to 60 s (the test kills it while it holds the lock).

Prints one JSON object as its last line. Every wait is bounded.
"""

from __future__ import annotations

import inspect
import json
import queue
import sys
import time
from typing import Any

import etcd3
import tenacity
from lock_marker import CriticalSection


def _adapt_old_wait_signature() -> None:
    """etcd3 0.12's Lock.acquire passes tenacity a wait function of the old two-argument form
    (attempt number, seconds since start); tenacity >= 5 calls wait(retry_state) and the lock fails
    with a TypeError before it ever waits. Restore the adapter old tenacity had, so the library's
    own lock algorithm runs unchanged."""
    original = tenacity.BaseRetrying.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        wait = kwargs.get("wait")
        if callable(wait) and len(inspect.signature(wait).parameters) == 2:
            kwargs["wait"] = lambda state: wait(state.attempt_number, state.seconds_since_start)
        original(self, *args, **kwargs)

    tenacity.BaseRetrying.__init__ = init  # type: ignore[method-assign]


_adapt_old_wait_signature()


def client(endpoint: str) -> Any:
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=10)


def basic(ep_a: str, ep_b: str, prefix: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a, b = client(ep_a), client(ep_b)
    try:
        put = a.put(prefix + b"k", b"v1")
        value, meta = b.get(prefix + b"k")
        out["put_revision"] = put.header.revision
        out["get_value"] = value.decode() if value is not None else None
        out["get_mod_revision"] = meta.mod_revision if meta is not None else None
        out["get_missing"] = b.get(prefix + b"missing")[0] is None

        # Watch (callback form, so waiting is bounded) on member B; the puts go through member A.
        responses: queue.Queue[Any] = queue.Queue()
        watch_id = b.add_watch_prefix_callback(prefix + b"w/", responses.put)
        for i in range(5):
            a.put(prefix + b"w/" + str(i).encode(), f"x{i}".encode())
        seen: list[list[Any]] = []
        deadline = time.monotonic() + 10
        while len(seen) < 5 and time.monotonic() < deadline:
            try:
                resp = responses.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(resp, Exception):
                out["watch_error"] = repr(resp)
                break
            for ev in resp.events:
                seen.append([type(ev).__name__, ev.key.decode(), ev.value.decode(), ev.mod_revision])
        b.cancel_watch(watch_id)
        out["watch_events"] = seen

        # Lease with keep-alive (refresh) for about 2 TTLs, a key attached, then revoke.
        lease = a.lease(2)
        out["lease_ttl"] = lease.ttl
        a.put(prefix + b"leased", b"alive", lease=lease)
        refresh_ttls = []
        present = []
        t_end = time.monotonic() + 2 * lease.ttl + 0.5
        while time.monotonic() < t_end:
            replies = list(lease.refresh())
            refresh_ttls.append(replies[0].TTL if replies else None)
            present.append(b.get(prefix + b"leased")[0] is not None)
            time.sleep(0.4)
        out["refresh_ttls"] = refresh_ttls
        out["present_while_refreshed"] = present
        out["lease_keys"] = [k.decode() for k in lease.keys]
        out["lease_granted_ttl"] = lease.granted_ttl
        _, kv = b.get(prefix + b"leased")
        out["key_lease_id_matches"] = kv is not None and kv.lease_id == lease.id
        lease.revoke()
        out["after_revoke_present"] = b.get(prefix + b"leased")[0] is not None
    finally:
        a.close()
        b.close()
    return out


def lock(endpoint: str, name: str, rounds: int, hold_s: float, marker: str) -> dict[str, Any]:
    section = CriticalSection(marker)
    waited = 0
    held_checks: list[bool] = []
    c = client(endpoint)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(rounds):
            lk = c.lock(name, ttl=10)
            t0 = time.monotonic()
            # etcd3's acquire watches the key only after its failed txn, without a start revision,
            # so a release in between is missed until the wait times out: retry in short slices.
            while not lk.acquire(timeout=2):
                if time.monotonic() - t0 > 30:
                    return {"error": "lock not acquired within 30 s", "intervals": section.intervals}
            if time.monotonic() - t0 > hold_s / 2:
                waited += 1
            start, owned = section.enter()
            held_checks.append(lk.is_acquired())
            time.sleep(hold_s)
            section.leave(start, owned)
            lease = lk.lease
            if not lk.release():
                return {"error": "release found the lock key not ours"}
            lease.revoke()
    finally:
        c.close()
    return {"intervals": section.intervals, "violations": section.violations, "waited": waited,
            "held_checks": held_checks}


def hold(endpoint: str, name: str, ttl: int) -> dict[str, Any]:
    c = client(endpoint)
    try:
        lk = c.lock(name, ttl=ttl)
        if not lk.acquire(timeout=30):
            return {"error": "lock not acquired within 30 s"}
        print("held", flush=True)
        refreshes = 0
        stop_at = time.monotonic() + 60
        while time.monotonic() < stop_at:
            list(lk.refresh())
            refreshes += 1
            time.sleep(ttl / 4)
        return {"refreshes": refreshes}
    finally:
        c.close()


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "basic":
        result = basic(argv[1], argv[2], argv[3].encode())
    elif len(argv) == 6 and argv[0] == "lock":
        result = lock(argv[1], argv[2], int(argv[3]), float(argv[4]), argv[5])
    elif len(argv) == 4 and argv[0] == "hold":
        result = hold(argv[1], argv[2], int(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
