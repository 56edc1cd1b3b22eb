"""The PyPI clients aetcd and python3-etcd3 against a 3-member Conclave cluster.

Each library runs only inside a subprocess (tests/server/clients/), since it brings its own copy of
the etcd protos; the scripts print a JSON result that these tests assert on.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conclave.server.launcher import ProcessCluster

from .compat_support import (
    finish_client,
    read_line,
    run_client,
    spawn_client,
    stop_process,
)

LIBRARIES = {"aetcd": "aetcd_client.py", "etcd3": "etcd3_client.py"}


@pytest.fixture(scope="module")
def cluster(module_cluster: ProcessCluster) -> ProcessCluster:
    return module_cluster


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_library_put_get_watch_lease(cluster: ProcessCluster, library: str) -> None:
    # Fails if: a put through member 1 is not visible to a (linearizable) get on member 2, the watch
    # on member 2 misses, reorders or duplicates an event of the puts through member 1, a refreshed
    # lease lets its key vanish before ~2 TTLs, the keep-alive answers TTL 0, TimeToLive does not
    # list the key, or revoke does not delete it.
    a, b = cluster.endpoints[0], cluster.endpoints[2 if library == "etcd3" else 1]
    prefix = f"/tp/{library}/"
    r: dict[str, Any] = run_client(LIBRARIES[library], "basic", a, b, prefix, timeout=60)

    assert r["get_value"] == "v1" and r["get_mod_revision"] == r["put_revision"] and r["get_missing"]
    kinds = {"aetcd": "PUT", "etcd3": "PutEvent"}
    events = r["watch_events"]
    assert [(e[0], e[1], e[2]) for e in events] == [(kinds[library], f"{prefix}w/{i}", f"x{i}") for i in range(5)]
    revisions = [e[3] for e in events]
    assert revisions == list(range(revisions[0], revisions[0] + 5)), revisions  # nothing else wrote here
    assert revisions[0] > r["put_revision"]

    assert r["lease_ttl"] >= 2 and r["lease_granted_ttl"] == r["lease_ttl"]
    assert len(r["refresh_ttls"]) >= 8 and all(t == r["lease_ttl"] for t in r["refresh_ttls"]), r["refresh_ttls"]
    assert all(r["present_while_refreshed"]), r["present_while_refreshed"]
    assert r["lease_keys"] == [f"{prefix}leased"] and r["key_lease_id_matches"]
    assert r["after_revoke_present"] is False


def _overlaps(a: list[list[float]], b: list[list[float]]) -> list[tuple[list[float], list[float]]]:
    return [(x, y) for x in a for y in b if x[0] < y[1] and y[0] < x[1]]


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_library_lock_mutual_exclusion(cluster: ProcessCluster, library: str, tmp_path: Path) -> None:
    # Fails if: both processes are inside the lock at once (the O_EXCL marker already exists, or
    # their CLOCK_MONOTONIC intervals overlap), a process does not get the lock 3 times within the
    # bound (a release or lease revoke that wakes nobody), or the lock never had to be waited for
    # (then the test did not exercise contention).
    rounds, hold_s = 3, 0.3
    marker = str(tmp_path / "inside")
    procs = [
        spawn_client(LIBRARIES[library], "lock", cluster.endpoints[i], f"/tp-lock/{library}", str(rounds),
                     str(hold_s), marker, stdin=subprocess.PIPE)
        for i in (0, 1)
    ]  # fmt: skip
    try:
        for i, p in enumerate(procs):
            assert read_line(p, 30, f"{library} lock client {i}") == "ready"
        for p in procs:  # start both at once: they contend from the first round
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()  # communicate() closes it
        results = [finish_client(p, f"{library} lock client {i}", 60) for i, p in enumerate(procs)]
    finally:
        for p in procs:
            stop_process(p)

    for res in results:
        assert "error" not in res, res
        assert res["violations"] == 0 and len(res["intervals"]) == rounds and all(res["held_checks"]), res
    assert _overlaps(results[0]["intervals"], results[1]["intervals"]) == []
    assert results[0]["waited"] + results[1]["waited"] >= 1, results


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_library_lock_passes_on_when_the_holder_dies(cluster: ProcessCluster, library: str, tmp_path: Path) -> None:
    # The holder refreshes its lock lease (TTL 2 s) and is then SIGKILLed while holding the lock.
    # Fails if: the waiter gets the lock while the holder is alive and refreshing, or before the
    # holder's lease can have expired (kill + TTL - one refresh period), or not within TTL + slack
    # of the kill (expiry did not delete the lock key, or the waiter was not woken).
    ttl_s = 2
    name = f"/tp-dies/{library}"
    holder = spawn_client(LIBRARIES[library], "hold", cluster.endpoints[0], name, str(ttl_s))
    waiter = spawn_client(LIBRARIES[library], "lock", cluster.endpoints[1], name, "1", "0.1",
                          str(tmp_path / "inside"), stdin=subprocess.PIPE)
    try:
        assert read_line(holder, 30, f"{library} holder") == "held"
        assert read_line(waiter, 30, f"{library} waiter") == "ready"
        assert waiter.stdin is not None
        waiter.stdin.write("go\n")
        waiter.stdin.flush()
        time.sleep(1.5 * ttl_s)  # longer than the TTL: only the holder's refreshes keep the lock
        assert waiter.poll() is None, "the waiter finished while the holder still held the lock"
        holder.kill()
        killed_at = time.monotonic()
        result = finish_client(waiter, f"{library} waiter", 30)
    finally:
        stop_process(holder)
        stop_process(waiter)
    assert "error" not in result, result
    entered = result["intervals"][0][0]
    assert entered >= killed_at + ttl_s - ttl_s / 4 - 0.2, f"entered {entered - killed_at:.2f}s after the kill"
    assert entered <= killed_at + ttl_s + 4.0, f"entered {entered - killed_at:.2f}s after the kill"
    print(f"{library}: waiter entered {entered - killed_at:.2f}s after the holder was killed (TTL {ttl_s}s)")
