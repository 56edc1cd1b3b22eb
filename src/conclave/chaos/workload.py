"""Workloads: clients that run operations against the cluster and record them as a history.

Theory of operation. Each client is an asyncio task with its own ``AsyncClient`` (even clients
speak the etcd gRPC API, odd ones the native protocol) and one operation in flight at a time. Every
call is recorded before it is sent (``invoke``) and again when it completes (``ok``, ``fail``
only when the operation definitely had no effect, ``info`` when the outcome is unknown: a timeout,
a lost connection, any error on a write). A client whose operation ended ``info`` continues
under a new process number, as in Jepsen, since its old operation may still take effect.

``register``: per-key read / write / compare-and-set on a few keys at a time; a key is retired
after ``ops_per_key`` operations and a fresh one takes its place, so each key's history stays
small enough for the checker (``cas-register`` model). Written values are unique integers, so a
read names the write it saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conclave.client import AsyncClient, value


@dataclass
class Recorder:
    t0: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def now_us(self) -> int:
        return int((time.monotonic() - self.t0) * 1_000_000)

    def record(self, process: int, type_: str, f: str, key: str, val: object) -> int:
        t = self.now_us()
        self.events.append({"process": process, "type": type_, "f": f, "key": key, "value": val, "time": t})
        return t

    def write(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            for e in self.events:
                out.write(json.dumps(e) + "\n")


@dataclass
class KeyPool:
    """The keys in use: ``active`` at a time, each retired after ``ops_per_key`` operations."""

    prefix: str
    active: int = 5
    ops_per_key: int = 200
    next_id: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    known: dict[str, list[int]] = field(default_factory=dict)  # recent values seen or written
    all_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for _ in range(self.active):
            self._new()

    def _new(self) -> str:
        k = f"{self.prefix}{self.next_id}"
        self.next_id += 1
        self.counts[k] = 0
        self.known[k] = []
        self.all_keys.append(k)
        return k

    def take(self, rng: random.Random) -> str:
        k = rng.choice(list(self.counts))
        self.counts[k] += 1
        if self.counts[k] >= self.ops_per_key:
            del self.counts[k]
            self._new()
        return k

    def saw(self, key: str, v: int | None) -> None:
        if v is not None:
            seen = self.known.setdefault(key, [])
            seen.append(v)
            del seen[:-4]


@dataclass
class Stats:
    ok: int = 0
    fail: int = 0
    info: int = 0


@dataclass
class RegisterWorkload:
    name = "register"
    model = "cas-register"
    endpoints: list[str]
    native_endpoints: list[str]
    recorder: Recorder
    clients: int = 10
    seed: int = 0
    op_timeout: float = 3.0
    pool: KeyPool = field(default_factory=lambda: KeyPool("r/"))
    stats: Stats = field(default_factory=Stats)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _next_value: int = 0
    _next_process: int = 0

    def _value(self) -> int:
        self._next_value += 1
        return self._next_value

    def _process(self) -> int:
        p = self._next_process
        self._next_process += 1
        return p

    async def run(self) -> None:
        await asyncio.gather(*(self._client(w) for w in range(self.clients)))

    async def _client(self, w: int) -> None:
        rng = random.Random(f"register/{self.seed}/{w}")
        proto = "grpc" if w % 2 == 0 else "native"
        eps = list(self.endpoints if proto == "grpc" else self.native_endpoints)
        rng.shuffle(eps)
        process = self._process()
        async with AsyncClient(eps, protocol=proto, timeout=self.op_timeout) as c:
            while not self.stop.is_set():
                outcome = await self.one(c, process, rng)
                if outcome == "info":
                    process = self._process()
                await asyncio.sleep(rng.uniform(0.0, 0.02))

    async def one(self, c: AsyncClient, process: int, rng: random.Random, key: str | None = None,
                  f: str | None = None) -> str:
        key = key or self.pool.take(rng)
        roll = rng.random()
        f = f or ("read" if roll < 0.5 else "write" if roll < 0.75 else "cas")
        known = self.pool.known.get(key, [])
        if f == "cas" and not known:
            f = "write"
        rec = self.recorder
        if f == "read":
            rec.record(process, "invoke", "read", key, None)
            try:
                raw = await c.get(key)
            except Exception:
                rec.record(process, "info", "read", key, None)
                self.stats.info += 1
                return "info"
            v = None if raw is None else int(raw)
            rec.record(process, "ok", "read", key, v)
            self.pool.saw(key, v)
            self.stats.ok += 1
            return "ok"
        if f == "write":
            v = self._value()
            rec.record(process, "invoke", "write", key, v)
            try:
                await c.put(key, str(v))
            except Exception:
                rec.record(process, "info", "write", key, v)
                self.stats.info += 1
                return "info"
            rec.record(process, "ok", "write", key, v)
            self.pool.saw(key, v)
            self.stats.ok += 1
            return "ok"
        expected, new = rng.choice(known), self._value()
        rec.record(process, "invoke", "cas", key, [expected, new])
        try:
            resp = await c.txn().if_(value(key) == str(expected)).then(
                _put(key, str(new))).commit()
        except Exception:
            rec.record(process, "info", "cas", key, [expected, new])
            self.stats.info += 1
            return "info"
        if resp.succeeded:
            rec.record(process, "ok", "cas", key, [expected, new])
            self.pool.saw(key, new)
            self.stats.ok += 1
            return "ok"
        rec.record(process, "fail", "cas", key, [expected, new])
        self.stats.fail += 1
        return "fail"

    async def final_reads(self, budget_s: float = 60.0) -> dict[str, int | None]:
        """One linearizable read of every key used, recorded in the history (after the quiet period)."""
        out: dict[str, int | None] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        async with AsyncClient(self.native_endpoints, timeout=5.0) as c:
            for key in self.pool.all_keys:
                if loop.time() > deadline:
                    break  # a cluster that does not answer is reported by the recovery check
                p = self._process()
                self.recorder.record(p, "invoke", "read", key, None)
                try:
                    raw = await c.get(key, timeout=min(5.0, max(0.5, deadline - loop.time())))
                except Exception:
                    self.recorder.record(p, "info", "read", key, None)
                    continue
                v = None if raw is None else int(raw)
                self.recorder.record(p, "ok", "read", key, v)
                out[key] = v
        return out


def _put(key: str, val: str) -> Any:
    from conclave.client import put_op
    return put_op(key, val)
