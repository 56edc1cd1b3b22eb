"""aetcd 1.0 against Conclave, run as a subprocess (aetcd has its own copy of the etcd protos).

    aetcd_client.py basic ENDPOINT_A ENDPOINT_B PREFIX
        put/get across two members, a watch on B seeing puts made through A, a lease kept alive
        with refresh() for longer than its TTL with a key attached, then revoked.
    aetcd_client.py lock ENDPOINT NAME ROUNDS HOLD_S MARKER
        prints "ready", waits for a line on stdin, then takes aetcd's lock ROUNDS times, holding
        it HOLD_S seconds inside a CriticalSection.
    aetcd_client.py hold ENDPOINT NAME TTL
        takes aetcd's lock with a TTL-second lease, prints "held", then refreshes the lease every
        TTL/4 seconds for up to 60 s (the test kills it while it holds the lock).

Prints one JSON object as its last line. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aetcd
from lock_marker import CriticalSection


def split(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def client(endpoint: str) -> aetcd.Client:
    host, port = split(endpoint)
    return aetcd.Client(host=host, port=port, timeout=10)


async def basic(ep_a: str, ep_b: str, prefix: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with client(ep_a) as a, client(ep_b) as b:
        put = await a.put(prefix + b"k", b"v1")
        got = await b.get(prefix + b"k")
        out["put_revision"] = put.header.revision
        out["get_value"] = got.value.decode() if got is not None else None
        out["get_mod_revision"] = got.mod_revision if got is not None else None
        out["get_missing"] = await b.get(prefix + b"missing") is None

        # Watch on member B; the puts go through member A.
        wp = prefix + b"w/"
        watch = await b.watch(wp, range_end=wp[:-1] + bytes([wp[-1] + 1]))
        for i in range(5):
            await a.put(wp + str(i).encode(), f"x{i}".encode())
        seen: list[list[Any]] = []
        it = watch.__aiter__()
        deadline = time.monotonic() + 10
        while len(seen) < 5 and time.monotonic() < deadline:
            try:
                ev = await asyncio.wait_for(it.__anext__(), timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            seen.append([str(ev.kind.value if hasattr(ev.kind, "value") else ev.kind), ev.kv.key.decode(),
                         ev.kv.value.decode(), ev.kv.mod_revision])
        await watch.cancel()
        out["watch_events"] = seen

        # Lease with keep-alive (refresh) for about 2 TTLs, a key attached, then revoke.
        lease = await a.lease(2)
        out["lease_ttl"] = lease.ttl
        await a.put(prefix + b"leased", b"alive", lease=lease)
        refresh_ttls = []
        present = []
        t_end = time.monotonic() + 2 * lease.ttl + 0.5
        while time.monotonic() < t_end:
            reply = await lease.refresh()
            refresh_ttls.append(reply.TTL)
            present.append(await b.get(prefix + b"leased") is not None)
            await asyncio.sleep(0.4)
        out["refresh_ttls"] = refresh_ttls
        out["present_while_refreshed"] = present
        info = await a.get_lease_info(lease.id, keys=True)
        out["lease_keys"] = [k.decode() for k in info.keys]
        out["lease_granted_ttl"] = info.grantedTTL
        kv = await b.get(prefix + b"leased")
        out["key_lease_id_matches"] = kv is not None and kv.lease == lease.id
        await lease.revoke()
        out["after_revoke_present"] = await b.get(prefix + b"leased") is not None
    return out


async def lock(endpoint: str, name: bytes, rounds: int, hold_s: float, marker: str) -> dict[str, Any]:
    section = CriticalSection(marker)
    waited = 0
    held_checks: list[bool] = []
    async with client(endpoint) as c:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for _ in range(rounds):
            lk = c.lock(name, ttl=10)
            t0 = time.monotonic()
            if not await lk.acquire(timeout=30):
                return {"error": "lock not acquired within 30 s", "intervals": section.intervals}
            if time.monotonic() - t0 > hold_s / 2:
                waited += 1
            start, owned = section.enter()
            held_checks.append(await lk.is_acquired())
            await asyncio.sleep(hold_s)
            section.leave(start, owned)
            if not await lk.release():
                return {"error": "release found the lock key not ours"}
            await lk.lease.revoke()
    return {"intervals": section.intervals, "violations": section.violations, "waited": waited,
            "held_checks": held_checks}


async def hold(endpoint: str, name: bytes, ttl: int) -> dict[str, Any]:
    async with client(endpoint) as c:
        lk = c.lock(name, ttl=ttl)
        if not await lk.acquire(timeout=30):
            return {"error": "lock not acquired within 30 s"}
        print("held", flush=True)
        refreshes = 0
        stop_at = time.monotonic() + 60
        while time.monotonic() < stop_at:
            await lk.refresh()
            refreshes += 1
            await asyncio.sleep(ttl / 4)
        return {"refreshes": refreshes}


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "basic":
        result = asyncio.run(basic(argv[1], argv[2], argv[3].encode()))
    elif len(argv) == 6 and argv[0] == "lock":
        result = asyncio.run(lock(argv[1], argv[2].encode(), int(argv[3]), float(argv[4]), argv[5]))
    elif len(argv) == 4 and argv[0] == "hold":
        result = asyncio.run(hold(argv[1], argv[2].encode(), int(argv[3])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
