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
import contextlib
import contextvars
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from conclave.client import AsyncClient, put_op, value, version

WORKER: contextvars.ContextVar[int] = contextvars.ContextVar("chaos_worker", default=-1)


@dataclass
class Recorder:
    t0: float
    events: list[dict[str, Any]] = field(default_factory=list)
    open: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # process -> (worker, invoke)

    def now_us(self) -> int:
        return int((time.monotonic() - self.t0) * 1_000_000)

    def record(self, process: int, type_: str, f: str, key: str, val: object) -> int:
        t = self.now_us()
        event = {"process": process, "type": type_, "f": f, "key": key, "value": val, "time": t}
        self.events.append(event)
        if type_ == "invoke":
            self.open[process] = (WORKER.get(), event)
        else:
            self.open.pop(process, None)
        return t

    def abandon(self, worker: int) -> None:
        """Close the worker's open operations as indeterminate (its client task died under it)."""
        for process, (w, inv) in list(self.open.items()):
            if w == worker:
                self.record(process, "info", inv["f"], inv["key"], inv["value"])

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
class Findings:
    """What a workload's own end-of-run checks found (the checker's verdict comes on top)."""

    lost: list[dict[str, Any]] = field(default_factory=list)  # acknowledged writes lost
    violations: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workload:
    name: ClassVar[str] = ""
    model: ClassVar[str | None] = None  # the checker's model for the history, if it has one
    endpoints: list[str]
    native_endpoints: list[str]
    recorder: Recorder
    clients: int = 10
    seed: int = 0
    op_timeout: float = 3.0
    pool: KeyPool = field(default_factory=lambda: KeyPool("r/"))
    stats: Stats = field(default_factory=Stats)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # the members' etcd endpoints now (membership changes during a run); set by the harness
    current_endpoints: Callable[[], list[str]] | None = None
    spurious_cancellations: int = 0
    _next_value: int = 0
    _next_process: int = 0

    def _value(self) -> int:
        self._next_value += 1
        return self._next_value

    def _process(self) -> int:
        p = self._next_process
        self._next_process += 1
        return p

    def client_for(self, w: int, rng: random.Random, timeout: float | None = None) -> AsyncClient:
        """Even clients speak gRPC, odd ones the native protocol; each starts at its own member."""
        proto = "grpc" if w % 2 == 0 else "native"
        eps = list(self.endpoints if proto == "grpc" else self.native_endpoints)
        k = w % len(eps)
        eps = eps[k:] + eps[:k]
        return AsyncClient(eps, protocol=proto, timeout=timeout or self.op_timeout)

    async def run(self) -> None:
        await asyncio.gather(*(self.guarded(self._client, w) for w in range(self.clients)))

    async def guarded(self, body: Callable[[int], Awaitable[None]], w: int) -> None:
        """Run one client, restarting it (new connection, open operation made ``info``) when a
        call raised CancelledError although nobody cancelled this task: a client-library defect
        (a gRPC channel closed under an in-flight call), counted in ``spurious_cancellations``."""
        WORKER.set(w)
        while True:
            try:
                await body(w)
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling() or self.stop.is_set():
                    raise
                self.spurious_cancellations += 1
                self.recorder.abandon(w)
                self.stats.info += 1

    async def _client(self, w: int) -> None:
        raise NotImplementedError

    async def setup(self) -> None:
        """Initial state, written before the run's clock and the faults start (default: none)."""

    async def finish(self) -> None:
        """End-of-run reads, after the quiet period (the clients have stopped)."""

    def judge(self, ops: list[Any]) -> Findings:
        """The workload's own checks over the paired operations (``analysis.Op``) and what
        ``finish`` read."""
        return Findings()


@dataclass
class RegisterWorkload(Workload):
    name: ClassVar[str] = "register"
    model: ClassVar[str | None] = "cas-register"

    async def _client(self, w: int) -> None:
        rng = random.Random(f"register/{self.seed}/{w}")
        process = self._process()
        async with self.client_for(w, rng) as c:
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


    async def finish(self) -> None:
        self.final = await self.final_reads()

    def judge(self, ops: list[Any]) -> Findings:
        from conclave.chaos.analysis import lost_writes
        final = getattr(self, "final", {})
        return Findings(lost=lost_writes(ops, final), facts={"keys_read_at_end": len(final)})


def _put(key: str, val: str) -> Any:
    return put_op(key, val)


# ---------------------------------------------------------------------------------------------- append


@dataclass
class AppendWorkload(Workload):
    """Unique values appended to keys (a transaction on the key's version), read back.

    Checked with the ``kv`` model (``append`` concatenates ``"v,"``), and at the end every member is
    read: all hold the same value for each key, in which every acknowledged append appears exactly
    once and nothing appears twice or was never attempted."""

    name: ClassVar[str] = "append"
    model: ClassVar[str | None] = "kv"
    members: list[str] = field(default_factory=list)

    async def _client(self, w: int) -> None:
        rng = random.Random(f"append/{self.seed}/{w}")
        process = self._process()
        async with self.client_for(w, rng) as c:
            while not self.stop.is_set():
                key = self.pool.take(rng)
                rec = self.recorder
                if rng.random() < 0.4:
                    rec.record(process, "invoke", "get", key, None)
                    try:
                        raw = await c.get(key)
                    except Exception:
                        rec.record(process, "info", "get", key, None)
                        self.stats.info += 1
                        process = self._process()
                        continue
                    rec.record(process, "ok", "get", key, "" if raw is None else raw.decode())
                    self.stats.ok += 1
                    continue
                token = f"{self._value()},"
                rec.record(process, "invoke", "append", key, token)
                try:
                    done = False
                    for _ in range(5):
                        kv_ = await c.get_kv(key)
                        cur = b"" if kv_ is None else kv_.value
                        ver = 0 if kv_ is None else kv_.version
                        resp = await c.txn().if_(version(key) == ver).then(_put(key, cur.decode() + token)).commit()
                        if resp.succeeded:
                            done = True
                            break
                except Exception:
                    rec.record(process, "info", "append", key, token)
                    self.stats.info += 1
                    process = self._process()
                    continue
                rec.record(process, "ok" if done else "fail", "append", key, token)
                if done:
                    self.stats.ok += 1
                else:
                    self.stats.fail += 1  # every attempt's compare failed: nothing was written
                await asyncio.sleep(rng.uniform(0.0, 0.02))

    async def finish(self) -> None:
        self.final: dict[str, dict[str, str | None]] = {}
        async with AsyncClient(self.native_endpoints, timeout=5.0) as c:
            want = {k: await _safe_get(c, k) for k in self.pool.all_keys}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        eps = self.current_endpoints() if self.current_endpoints is not None else self.endpoints
        for ep in eps:
            async with AsyncClient([ep], protocol="grpc", timeout=3.0) as c:
                got: dict[str, str | None] = {}
                for k in self.pool.all_keys:
                    while True:  # a member may lag behind for a moment after the quiet period
                        v = await _safe_get(c, k, serializable=True)
                        if v == want[k] or loop.time() > deadline:
                            break
                        await asyncio.sleep(0.2)
                    got[k] = v
                    if v == "<unreadable>" and loop.time() > deadline:
                        break  # this member does not answer: one violation is enough, the rest is not read
                self.final[ep] = got
        self.final["linearizable"] = want

    def judge(self, ops: list[Any]) -> Findings:
        final: dict[str, dict[str, str | None]] = getattr(self, "final", {})
        want = final.get("linearizable", {})
        f = Findings()
        attempted = {o.value: o for o in ops if o.f == "append"}
        for ep, got in final.items():
            for k, v in got.items():
                if v != want.get(k):
                    f.violations.append(f"{ep} holds {str(v)[:80]!r} for {k}, the cluster {str(want.get(k))[:80]!r}")
        for k, v in want.items():
            if v is None and not any(o.key == k and o.f == "append" and o.status == "ok" for o in ops):
                continue
            parts = [p + "," for p in (v or "").split(",") if p]
            seen: set[str] = set()
            for p in parts:
                if p in seen:
                    f.violations.append(f"{k}: {p[:-1]} appended twice")
                seen.add(p)
                if p not in attempted:
                    f.violations.append(f"{k}: {p[:-1]} was never appended")
            for o in ops:
                if o.key == k and o.f == "append" and o.status == "ok" and o.value not in seen:
                    f.lost.append({"key": k, "lost": o.value, "acked_at_s": (o.ret or 0) / 1e6})
        f.facts = {"members_read": len(final) - 1 if final else 0}
        return f


async def _safe_get(c: AsyncClient, key: str, serializable: bool = False) -> str | None:
    try:
        raw = await c.get(key, serializable=serializable)
    except Exception:
        return "<unreadable>"
    return None if raw is None else raw.decode()


# ---------------------------------------------------------------------------------------------- lock


FENCE = "lock/fence"


def _pad(token: int) -> str:
    return f"{token:020d}"  # byte order = numeric order, so the store's compare can be a value compare


@dataclass
class LockWorkload(Workload):
    """Clients take the lock ``lock/L`` and write their fencing token to a store that refuses
    stale tokens (a transaction: ``value(lock/fence) < token``). Checked: tokens are unique and
    grow in real-time order of acquisition; the accepted writes' tokens grow in commit order.
    Reported: how often a holder's write was refused (it had lost the lock while still working,
    which is what fencing is for), and how often two holders' hold intervals overlapped."""

    name: ClassVar[str] = "lock"
    model: ClassVar[str | None] = None

    async def run(self) -> None:
        async with AsyncClient(self.native_endpoints, timeout=10.0) as c:
            await c.put(FENCE, _pad(0))
        await super().run()

    async def _client(self, w: int) -> None:
        from conclave.client import put_op as put
        rng = random.Random(f"lock/{self.seed}/{w}")
        process = self._process()
        rec = self.recorder
        async with self.client_for(w, rng, timeout=5.0) as c:
            while not self.stop.is_set():
                lock = c.lock("lock/L", ttl=3, timeout=8.0)
                rec.record(process, "invoke", "acquire", "lock/L", None)
                try:
                    await lock.acquire()
                except Exception as exc:
                    kind = "fail" if type(exc).__name__ == "LockTimeout" else "info"
                    rec.record(process, kind, "acquire", "lock/L", None)
                    setattr(self.stats, kind, getattr(self.stats, kind) + 1)
                    process = self._process()
                    continue
                token = lock.fencing_token
                rec.record(process, "ok", "acquire", "lock/L", token)
                self.stats.ok += 1
                await asyncio.sleep(rng.uniform(0.0, 0.3))  # the work the lock protects
                rec.record(process, "invoke", "fenced-write", FENCE, token)
                try:
                    resp = await c.txn().if_(value(FENCE) < _pad(token)).then(
                        put(FENCE, _pad(token)), put("lock/data", f"{w}:{token}")).commit()
                    rec.record(process, "ok" if resp.succeeded else "fail", "fenced-write", FENCE,
                               [token, resp.header.revision])
                    if resp.succeeded:
                        self.stats.ok += 1
                    else:
                        self.stats.fail += 1
                except Exception:
                    rec.record(process, "info", "fenced-write", FENCE, token)
                    self.stats.info += 1
                    process = self._process()
                rec.record(process, "invoke", "release", "lock/L", token)
                try:
                    await lock.release()
                    rec.record(process, "ok", "release", "lock/L", token)
                except Exception:
                    rec.record(process, "info", "release", "lock/L", token)
                    process = self._process()

    def judge(self, ops: list[Any]) -> Findings:
        f = Findings()
        acq = sorted((o for o in ops if o.f == "acquire" and o.status == "ok"), key=lambda o: o.call)
        tokens = [o.out for o in acq]
        dup = {t for t in tokens if tokens.count(t) > 1}
        for t in sorted(dup):
            f.violations.append(f"fencing token {t} handed to two holders")
        by_ret = sorted(acq, key=lambda o: o.ret or 0)
        for a in by_ret:
            for b in acq:
                if a.ret is not None and b.call > a.ret and b.out <= a.out:
                    f.violations.append(f"token {b.out} acquired at {b.call / 1e6:.2f}s after token {a.out} "
                                        f"was acquired at {a.ret / 1e6:.2f}s: tokens must grow")
        writes = sorted((o.out for o in ops if o.f == "fenced-write" and o.status == "ok"), key=lambda v: v[1])
        for (t1, r1), (t2, r2) in itertools.pairwise(writes):
            if t2 <= t1:
                f.violations.append(f"the store accepted token {t2} (revision {r2}) after token {t1} (revision {r1})")
        refused = sum(1 for o in ops if o.f == "fenced-write" and o.status == "fail")
        holds = []  # (acquired, release invoked) of each hold, pairing each acquire with the next release
        by_process: dict[Any, list[Any]] = {}
        for o in sorted(ops, key=lambda o: o.call):
            by_process.setdefault(o.process, []).append(o)
        for seq in by_process.values():
            for a, r in itertools.pairwise(seq):
                if a.f == "acquire" and a.status == "ok" and r.f in ("release", "fenced-write"):
                    nxt = next((x for x in seq if x.call >= r.call and x.f == "release"), r)
                    holds.append((a.ret or 0, nxt.call))
        holds.sort()
        overlaps = sum(1 for (s1, e1), (s2, _e2) in itertools.pairwise(holds) if s2 < e1)
        f.facts = {"acquisitions": len(acq), "fenced_writes_accepted": len(writes),
                   "stale_writes_refused": refused, "overlapping_holds": overlaps}
        f.violations = f.violations[:50]
        return f


# ---------------------------------------------------------------------------------------------- watch


@dataclass
class WatchWorkload(Workload):
    """Writers put unique values under ``watch/``; watchers, each starting at its own member and
    at its own start revision (now, or some revisions back), collect events, and now and then
    close and resume from the revision after the last one they saw. At the end a reference watch
    reads the committed history from the earliest start; each watcher's events must be exactly
    the reference's over its range (ordered, unique, no gap, same keys and values, every event of
    a revision together), and every acknowledged put must be in the reference at its revision.

    Bookmarks: one more watcher speaks raw etcd gRPC and sends a WatchProgressRequest every 0.5-1.5
    s; a progress notification at revision R promises that every event up to R was delivered. It
    is checked: no event at or below R arrives after it, and every committed event of the watched
    range from the segment's start up to R arrived before it."""

    name: ClassVar[str] = "watch"
    model: ClassVar[str | None] = None
    watched: dict[int, list[tuple[int, list[tuple[int, str, str]]]]] = field(default_factory=dict)
    # bookmark watcher segments: (start, items) with items ("e", rev, key, value) or ("p", rev, "", "")
    bookmarked: dict[int, list[tuple[int, list[tuple[str, int, str, str]]]]] = field(default_factory=dict)
    compacted: list[str] = field(default_factory=list)

    async def run(self) -> None:
        writers = max(1, self.clients // 2)
        watchers = range(writers, max(writers + 2, self.clients))
        await asyncio.gather(*(self.guarded(self._writer, w) for w in range(writers)),
                             *(self.guarded(self._watcher, w) for w in watchers),
                             self.guarded(self._bookmark_watcher, max(writers + 2, self.clients)))

    async def _bookmark_watcher(self, w: int) -> None:
        import grpc

        from conclave.api import pb
        from conclave.api.stubs import EtcdStub

        rng = random.Random(f"watch-b/{self.seed}/{w}")
        segments = self.bookmarked.setdefault(w, [])
        loop = asyncio.get_running_loop()
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        start = 0
        while not self.stop.is_set():
            eps = self.current_endpoints() if self.current_endpoints else self.endpoints
            channel = grpc.aio.insecure_channel(eps[(w + len(segments)) % len(eps)])
            call: Any = None
            try:
                if start == 0:
                    st = await EtcdStub(channel, "etcdserverpb.Maintenance").Status(pb.StatusRequest(), timeout=3)
                    start = st.header.revision + 1
                items: list[tuple[str, int, str, str]] = []
                segments.append((start, items))
                call = EtcdStub(channel, "etcdserverpb.Watch").Watch(metadata=(("hasleader", "true"),))
                await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"watch/", range_end=b"watch0", start_revision=start)))
                resume_at = loop.time() + rng.uniform(5, 15)
                ask_at = loop.time() + rng.uniform(0.5, 1.5)
                created = False
                while not self.stop.is_set() and loop.time() < resume_at:
                    if created and loop.time() >= ask_at:
                        await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                        ask_at = loop.time() + rng.uniform(0.5, 1.5)
                    try:
                        r = await asyncio.wait_for(call.read(), 0.5)
                    except TimeoutError:
                        continue
                    if r is grpc.aio.EOF:
                        break
                    if r.created:
                        created = True
                    elif r.canceled:
                        if r.compact_revision:
                            self.compacted.append(f"bookmark watcher {w} from {start}")
                            start = 0
                        break
                    elif r.events:
                        for ev in r.events:
                            items.append(("e", ev.kv.mod_revision, ev.kv.key.decode(), ev.kv.value.decode()))
                            self.stats.ok += 1
                    else:
                        items.append(("p", r.header.revision, "", ""))
            except Exception:
                self.stats.info += 1
                await asyncio.sleep(0.3)
            finally:
                if call is not None:
                    call.cancel()
                await channel.close()
            seen = [it for _start, segment in segments[-1:] for it in segment if it[0] == "e"]
            if seen:
                start = seen[-1][1] + 1

    async def _writer(self, w: int) -> None:
        rng = random.Random(f"watch-w/{self.seed}/{w}")
        process = self._process()
        async with self.client_for(w, rng) as c:
            while not self.stop.is_set():
                key = f"watch/k{rng.randrange(5)}"
                v = self._value()
                self.recorder.record(process, "invoke", "put", key, v)
                try:
                    resp = await c.put(key, str(v))
                except Exception:
                    self.recorder.record(process, "info", "put", key, v)
                    self.stats.info += 1
                    process = self._process()
                    continue
                self.recorder.record(process, "ok", "put", key, [v, resp.header.revision])
                self.stats.ok += 1
                await asyncio.sleep(rng.uniform(0.0, 0.03))

    async def _watcher(self, w: int) -> None:
        from conclave.client import Compacted
        rng = random.Random(f"watch-r/{self.seed}/{w}")
        segments = self.watched.setdefault(w, [])
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        async with self.client_for(w, rng, timeout=5.0) as c:
            start = 0
            while start == 0 and not self.stop.is_set():
                try:
                    st = await c.status()
                    start = max(1, st.revision - rng.choice((0, 0, 10, 50))) + 1
                except Exception:
                    await asyncio.sleep(0.5)
            while not self.stop.is_set():
                events: list[tuple[int, str, str]] = []
                segments.append((start, events))
                watch = c.watch("watch/", prefix=True, start_revision=start)
                resume_at = asyncio.get_running_loop().time() + rng.uniform(5, 15)
                try:
                    while not self.stop.is_set() and asyncio.get_running_loop().time() < resume_at:
                        try:
                            ev = await watch.next(timeout=0.5)
                        except TimeoutError:
                            continue
                        if ev is None:
                            break
                        events.append((ev.kv.mod_revision, ev.kv.key.decode(), ev.kv.value.decode()))
                        self.stats.ok += 1
                except Compacted:
                    self.compacted.append(f"watcher {w} from {start}")
                    st = await c.status()
                    start = st.revision + 1
                    continue
                except Exception:
                    self.stats.info += 1
                finally:
                    with contextlib.suppress(Exception):
                        watch.close()
                start = events[-1][0] + 1 if events else start  # resume after the last revision seen

    async def finish(self) -> None:
        self.reference: list[tuple[int, str, str]] = []
        starts = [s for segs in [*self.watched.values(), *self.bookmarked.values()] for s, _ in segs]
        if not starts:
            return
        from conclave.client import Compacted
        async with AsyncClient(self.native_endpoints, timeout=10.0) as c:
            last = (await c.status()).revision
            self.ref_start = min(starts)
            for _attempt in range(3):
                self.reference = []
                try:
                    watch = c.watch("watch/", prefix=True, start_revision=self.ref_start)
                    while True:
                        ev = await watch.next(timeout=10.0)
                        if ev is None:
                            break
                        self.reference.append((ev.kv.mod_revision, ev.kv.key.decode(), ev.kv.value.decode()))
                        if ev.kv.mod_revision >= last:
                            break
                    watch.close()
                    break
                except Compacted as exc:
                    # history before the compaction is gone: the reference (and the checks) start after it
                    self.ref_start = max(self.ref_start, exc.compact_revision + 1)
                    self.compacted.append(f"reference from {self.ref_start}")
                except Exception as exc:
                    self.ref_error = f"{type(exc).__name__}: {exc}"
                    break

    def judge(self, ops: list[Any]) -> Findings:
        f = Findings()
        ref = getattr(self, "reference", [])
        if getattr(self, "ref_error", ""):
            f.facts["reference"] = self.ref_error
            f.violations.append(f"the committed history could not be read back: {self.ref_error}")
        ref_start = getattr(self, "ref_start", 0)
        ref_last = ref[-1][0] if ref else 0
        events_seen = 0
        compared = 0
        for w, segs in self.watched.items():
            for start, events in segs:
                events_seen += len(events)
                for a, b in itertools.pairwise(events):
                    if b[0] < a[0] or b == a:
                        f.violations.append(f"watcher {w}: revision {b[0]} after {a[0]} (out of order or repeated)")
                if start < ref_start:  # the part before the compaction cannot be compared
                    events = [e for e in events if e[0] >= ref_start]
                    start = ref_start
                if not events:
                    continue
                if not ref:
                    f.violations.append(f"watcher {w} saw {len(events)} events but the committed history is empty")
                    continue
                compared += 1
                upto = events[-1][0]
                if upto > ref_last:
                    continue
                expect = [e for e in ref if start <= e[0] <= upto]
                if events != expect:
                    missing = sorted(set(expect) - set(events))[:3]
                    extra = sorted(set(events) - set(expect))[:3]
                    f.violations.append(f"watcher {w} from revision {start}: {len(events)} events, the committed "
                                        f"history has {len(expect)} (missing {missing}, unexpected {extra})")
        bookmarks = 0
        for w, bsegs in self.bookmarked.items():
            for start, items in bsegs:
                events = [(r, k, v) for kind, r, k, v in items if kind == "e"]
                events_seen += len(events)
                if start < ref_start:
                    start = ref_start
                for i, (kind, rev, _k, _v) in enumerate(items):
                    if kind != "p":
                        continue
                    bookmarks += 1
                    before = [(r, k, v) for kd, r, k, v in items[:i] if kd == "e" and r >= start]
                    late = [r for kd, r, _, _ in items[i + 1:] if kd == "e" and r <= rev]
                    if late:
                        f.violations.append(f"bookmark watcher {w}: event at revision {late[0]} after a progress "
                                            f"notification at {rev}")
                    if ref and rev <= ref_last:
                        expect = [e for e in ref if start <= e[0] <= rev]
                        if [e for e in before if e[0] <= rev] != expect:
                            f.violations.append(f"bookmark watcher {w}: progress notification at {rev} after "
                                                f"{len(before)} events, the committed history has {len(expect)} "
                                                f"from revision {start}")
                events = [e for e in events if e[0] >= start]
                if events and ref and events[-1][0] <= ref_last:
                    compared += 1
                    if events != [e for e in ref if start <= e[0] <= events[-1][0]]:
                        f.violations.append(f"bookmark watcher {w} from revision {start}: events differ from the "
                                            f"committed history")
        ref_at = {(r, k): v for r, k, v in ref}
        for o in ops:
            if o.f == "put" and o.status == "ok" and isinstance(o.out, list):
                v, rev = o.out
                if ref and ref_start <= rev <= ref_last and ref_at.get((rev, o.key)) != str(v):
                    f.lost.append({"key": o.key, "lost": v, "revision": rev})
        f.facts |= {"watchers": len(self.watched), "segments": sum(len(s) for s in self.watched.values()),
                   "events_seen": events_seen, "reference_events": len(ref), "segments_compared": compared,
                   "progress_notifications_checked": bookmarks,
                   "compacted": len(self.compacted), "reference_start": ref_start}
        f.violations = f.violations[:50]
        return f


# ---------------------------------------------------------------------------------------------- lease


@dataclass
class LeaseWorkload(Workload):
    """Each client grants a lease (TTL 4 s), puts a key with it, keeps it alive for a while and
    reads the key every half second: the key must be there whenever a keep-alive was sent less
    than a TTL before the read returned. Then the client stops its keep-alives as if it had been
    paused and measures how long the key takes to go (from the last keep-alive sent)."""

    name: ClassVar[str] = "lease"
    model: ClassVar[str | None] = None
    expiry_s: list[float] = field(default_factory=list)
    abandoned: list[tuple[str, float]] = field(default_factory=list)
    lost_while_alive: list[str] = field(default_factory=list)

    async def _client(self, w: int) -> None:
        rng = random.Random(f"lease/{self.seed}/{w}")
        loop = asyncio.get_running_loop()
        process = self._process()
        rec = self.recorder
        async with self.client_for(w, rng, timeout=3.0) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"lease/{w}/{n}"
                rec.record(process, "invoke", "grant", key, None)
                granted_at = loop.time()  # before the grant: the lease runs from some moment after this
                try:
                    lease = await c.lease(4)
                    await c.put(key, "x", lease=lease.id)
                except Exception:
                    rec.record(process, "info", "grant", key, None)
                    self.stats.info += 1
                    process = self._process()
                    await asyncio.sleep(0.5)
                    continue
                ttl = lease.ttl
                last_ka = granted_at  # the grant itself counts: the key exists for a TTL from then
                rec.record(process, "ok", "grant", key, [lease.id, ttl])
                self.stats.ok += 1
                hold_until = loop.time() + rng.uniform(4, 12)
                while not self.stop.is_set() and loop.time() < hold_until:
                    sent = loop.time()
                    with contextlib.suppress(Exception):
                        await c.lease_keep_alive(lease.id, timeout=1.5)
                        last_ka = sent
                    await asyncio.sleep(0.5)
                    try:
                        raw = await c.get(key, timeout=1.5)
                    except Exception:
                        self.stats.info += 1
                        continue
                    if raw is None and loop.time() < last_ka + ttl - 0.2:
                        self.lost_while_alive.append(f"{key}: gone {loop.time() - last_ka:.2f}s after a keep-alive "
                                                     f"(TTL {ttl}s)")
                    self.stats.ok += 1
                # "paused": no more keep-alives; watch the key go
                gone_by = last_ka + 3 * ttl + 10
                while loop.time() < gone_by:
                    try:
                        raw = await c.get(key, timeout=1.5)
                    except Exception:
                        await asyncio.sleep(0.3)
                        continue
                    if raw is None:
                        self.expiry_s.append(round(loop.time() - last_ka, 3))
                        break
                    await asyncio.sleep(0.25)
                else:
                    self.abandoned.append((key, last_ka))

    async def finish(self) -> None:
        self.still_there: list[str] = []
        async with AsyncClient(self.native_endpoints, timeout=5.0) as c:
            for key, _t in self.abandoned:
                with contextlib.suppress(Exception):
                    if await c.get(key) is not None:
                        self.still_there.append(key)

    def judge(self, ops: list[Any]) -> Findings:
        f = Findings(violations=list(self.lost_while_alive[:50]))
        for key in getattr(self, "still_there", []):
            f.violations.append(f"{key}: its lease was no longer kept alive, yet the key outlived the run")
        ex = sorted(self.expiry_s)
        f.facts = {"leases": len(ex) + len(self.abandoned), "expiry_after_last_keepalive_max_s": ex[-1] if ex else None,
                   "expiry_after_last_keepalive_p50_s": ex[len(ex) // 2] if ex else None,
                   "keys_lost_while_kept_alive": len(self.lost_while_alive)}
        return f
