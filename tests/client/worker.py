"""A client process for the multi-process recipe tests: ``python worker.py ROLE ENDPOINTS [ARGS...]``.

Prints one JSON object per line (what it did), so the test can check the recipes' promises
across real processes. Every loop is bounded; the process exits non-zero on an unexpected error.
"""

from __future__ import annotations

import json
import os
import sys
import time

from conclave import Client
from conclave.client import LamportClock, OutcomeUnknown, QueueEmpty, Timestamp


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def lock(client: Client, log_path: str, rounds: int) -> None:
    for _ in range(rounds):
        with client.lock("shared", ttl=5, timeout=60) as held:
            token = held.fencing_token
            with open(log_path, "a") as log:
                log.write(f"acquire {token} {os.getpid()}\n")
            time.sleep(0.01)
            with open(log_path, "a") as log:
                log.write(f"release {token} {os.getpid()}\n")


def counter(client: Client, rounds: int) -> None:
    c = client.counter("hits")
    emit(values=[c.increment() for _ in range(rounds)])


def queue_put(client: Client, name: str, count: int) -> None:
    q = client.queue("jobs")
    for i in range(count):
        q.put(f"{name}-{i}")
    emit(done=True)


def queue_get(client: Client) -> None:
    q = client.queue("jobs")
    taken = []
    for _ in range(10_000):
        try:
            taken.append(q.get(timeout=3).decode())
        except QueueEmpty:
            break
    emit(taken=taken)


def subscribe(client: Client, name: str, until: str) -> None:
    seen = []
    emit(subscribed=True)
    for seq, msg in client.broadcast(name).subscribe(from_seq=0):
        seen.append([seq, msg.decode()])
        if msg.decode() == until:
            break
    emit(seen=seen)


def append(client: Client, name: str, count: int, pause_s: float) -> None:
    b = client.broadcast(name)
    acked, unknown = [], []
    for i in range(count):
        msg = f"m{i}"
        try:
            acked.append([b.append(msg), msg])
        except OutcomeUnknown:
            unknown.append(msg)
        time.sleep(pause_s)
    emit(acked=acked, unknown=unknown)


def session(client: Client, key: str) -> None:
    s = client.session(ttl=2)
    client.put(key, str(os.getpid()), lease=s.lease_id)
    emit(lease=s.lease_id)
    time.sleep(120)  # killed by the test


def lamport(client: Client, node: str, rounds: int) -> None:
    """Send messages stamped with a Lamport clock, observing everyone else's stamps."""
    clock = LamportClock(node)
    b = client.broadcast("lamport")
    sub = iter(b.subscribe(from_seq=0))
    pairs = []
    for _ in range(rounds):
        sent = clock.send()
        b.append(sent.encode())
        while True:  # read until our own message comes back, observing the others on the way
            _, raw = next(sub)
            ts = Timestamp.decode(raw)
            if ts.node != node:
                before = clock.now()
                after = clock.observe(ts)
                pairs.append([ts.counter, after.counter, before.counter])
            if ts == sent:
                break
    emit(pairs=pairs)


def main() -> int:
    role, endpoints, *args = sys.argv[1:]
    with Client(endpoints.split(","), timeout=10) as client:
        if role == "lock":
            lock(client, args[0], int(args[1]))
        elif role == "counter":
            counter(client, int(args[0]))
        elif role == "queue-put":
            queue_put(client, args[0], int(args[1]))
        elif role == "queue-get":
            queue_get(client)
        elif role == "subscribe":
            subscribe(client, args[0], args[1])
        elif role == "append":
            append(client, args[0], int(args[1]), float(args[2]))
        elif role == "session":
            session(client, args[0])
        elif role == "lamport":
            lamport(client, args[0], int(args[1]))
        else:
            print(f"unknown role {role}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
