"""A load generator over the etcd v3 gRPC API (``conclave bench``), for Conclave and real etcd alike.

Theory of operation: the parent process prepares the key space, then starts P worker processes
(``multiprocessing`` "spawn", so no gRPC state crosses a fork). Each worker opens its share of the C
connections (grpc.aio channels, round-robin over the endpoints) and runs its share of the N clients:
coroutines that issue one request at a time in a closed loop until the common deadline. Workers
connect first and report ready; the parent then releases them all at once, so the measured window
excludes start-up. Each worker returns its completed-operation latencies (microseconds), error counts
by status code, and its own CPU time (user and system seconds, over the measured window). The parent
merges them into ops/s, latency percentiles and the generator's CPU cost per operation, so a reader
can tell whether the generator itself was the bottleneck.

Bad input (unknown op, zero clients, unreachable endpoint) is reported as :class:`LoadError` with a
clear message, never a traceback or a hang: every wait has a timeout.
"""

from __future__ import annotations

import array
import asyncio
import math
import multiprocessing
import os
import random
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

OPS = ("put", "range", "txn-put")
CONNECT_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 10.0
RANGE_KEYS_MAX = 1000  # keys written before a range run; ranges read among them
# --spread-keys: a key's first byte is taken from this alphabet by the key's number, so keys fall
# evenly over the split points `conclave serve --shards K` takes from the same alphabet
# (server/config.py SPLIT_ALPHABET; loadgen does not import the server).
SPREAD_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class LoadError(Exception):
    """The load run cannot start or did not produce a result."""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    op: str
    endpoints: tuple[str, ...]
    clients: int = 64
    conns: int = 1
    duration_s: float = 10.0
    key_size: int = 8
    val_size: int = 256
    key_space: int = 100_000
    consistency: str = "l"
    processes: int = 1
    seed: int = 1
    protocol: str = "grpc"  # or "native": Conclave's own protocol through conclave.AsyncClient
    spread_keys: bool = False  # first key byte from SPREAD_ALPHABET: every shard of --shards K gets keys

    def key(self, index: int) -> bytes:
        """Key number ``index`` (``key_size`` bytes; with ``spread_keys`` its first byte spreads it)."""
        if not self.spread_keys:
            return key_bytes(index, self.key_size)
        head = SPREAD_ALPHABET[index % len(SPREAD_ALPHABET)].encode()
        return head + key_bytes(index, self.key_size - 1) if self.key_size > 1 else head

    def validate(self) -> None:
        if self.op not in OPS:
            raise LoadError(f"unknown operation {self.op!r}; expected one of {', '.join(OPS)}")
        if not self.endpoints:
            raise LoadError("no endpoints given (--endpoints host:port[,host:port...])")
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit():
                raise LoadError(f"endpoint {ep!r} is not host:port")
        if self.clients < 1 or self.conns < 1 or self.processes < 1:
            raise LoadError("--clients, --conns and --processes must be at least 1")
        if self.processes > self.clients:
            raise LoadError(f"--processes ({self.processes}) cannot exceed --clients ({self.clients})")
        if self.duration_s <= 0:
            raise LoadError("--duration must be positive")
        if self.key_size < 1 or self.val_size < 0 or self.key_space < 1:
            raise LoadError("--key-size and --key-space must be >= 1 and --val-size >= 0")
        if self.consistency not in ("l", "s"):
            raise LoadError("--consistency must be l (linearizable) or s (serializable)")
        if self.protocol not in ("grpc", "native"):
            raise LoadError("--protocol must be grpc (the etcd API) or native (Conclave's own)")


@dataclass(slots=True)
class WorkerResult:
    index: int
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_us: bytes = b""
    user_s: float = 0.0
    sys_s: float = 0.0
    elapsed_s: float = 0.0
    failure: str = ""


@dataclass(frozen=True, slots=True)
class LoadReport:
    op: str
    endpoints: tuple[str, ...]
    clients: int
    conns: int
    processes: int
    key_size: int
    val_size: int
    consistency: str
    duration_s: float
    ops: int
    errors: dict[str, int]
    ops_per_s: float
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_max: float
    generator_user_s: float
    generator_sys_s: float
    generator_cpu_us_per_op: float
    generator_cpu_per_process: tuple[dict[str, float], ...]
    protocol: str = "grpc"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["endpoints"] = list(self.endpoints)
        d["generator_cpu_per_process"] = list(self.generator_cpu_per_process)
        return d

    def text(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        lines = [
            f"op {self.op} ({self.protocol}): {self.clients} clients, {self.conns} connections, "
            f"{self.processes} processes, "
            f"key {self.key_size} B, value {self.val_size} B"
            + (f", consistency {self.consistency}" if self.op == "range" else ""),
            f"  {self.ops} ops in {self.duration_s:.2f} s = {self.ops_per_s:,.0f} ops/s (errors: {errors})",
            f"  latency ms: mean {self.latency_ms_mean:.3f}  p50 {self.latency_ms_p50:.3f}  "
            f"p90 {self.latency_ms_p90:.3f}  p99 {self.latency_ms_p99:.3f}  max {self.latency_ms_max:.3f}",
            f"  generator CPU: user {self.generator_user_s:.2f} s + sys {self.generator_sys_s:.2f} s "
            f"= {self.generator_cpu_us_per_op:.1f} us/op; per process: "
            + ", ".join(f"{p['cpu_s']:.2f} s ({p['cpu_share']:.0%} of a core)" for p in self.generator_cpu_per_process),
        ]
        return "\n".join(lines)


def key_bytes(index: int, key_size: int) -> bytes:
    """Key number ``index`` padded/truncated to exactly ``key_size`` bytes."""
    raw = f"{index:x}".encode()
    if len(raw) >= key_size:
        return raw[-key_size:]
    return b"k" * (key_size - len(raw)) + raw


def split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


# --------------------------------------------------------------------------------------- worker


def _request_factory(cfg: LoadConfig, rng: random.Random) -> tuple[str, str, Any]:
    from conclave.api import pb

    value = b"v" * cfg.val_size
    if cfg.op == "put":
        put_cls = pb.PutRequest
        return (
            "etcdserverpb.KV",
            "Put",
            lambda: put_cls(key=cfg.key(rng.randrange(cfg.key_space)), value=value),
        )
    if cfg.op == "txn-put":
        txn_cls, op_cls, put_cls = pb.TxnRequest, pb.RequestOp, pb.PutRequest

        def txn() -> Any:
            key = cfg.key(rng.randrange(cfg.key_space))
            return txn_cls(success=[op_cls(request_put=put_cls(key=key, value=value))])

        return "etcdserverpb.KV", "Txn", txn
    range_cls = pb.RangeRequest
    serializable = cfg.consistency == "s"
    keys = [cfg.key(i) for i in range(min(cfg.key_space, RANGE_KEYS_MAX))]
    return "etcdserverpb.KV", "Range", lambda: range_cls(key=rng.choice(keys), serializable=serializable)


async def _measure(
    cfg: LoadConfig,
    index: int,
    ready: Any,
    go: Any,
    result: WorkerResult,
    calls: list[Callable[[], Awaitable[Any]]],
    clients: int,
    error_name: Callable[[BaseException], str | None],
) -> WorkerResult:
    """Closed loop: ``clients`` coroutines issue calls until the deadline; record latencies and CPU.

    ``error_name`` names a failed call's error (counted, the loop goes on) or returns None for an
    error that must propagate.
    """
    latencies = array.array("q")
    errors: dict[str, int] = {}
    ready.put(index)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, go.wait, READY_TIMEOUT_S):
        result.failure = "never released by the parent"
        return result
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    deadline = start + cfg.duration_s

    async def one_client(call: Callable[[], Awaitable[Any]]) -> None:
        perf = time.perf_counter
        record = latencies.append
        while True:
            t0 = perf()
            if t0 >= deadline:
                return
            try:
                await call()
            except Exception as err:
                name = error_name(err)
                if name is None:
                    raise
                errors[name] = errors.get(name, 0) + 1
                continue
            t1 = perf()
            if t1 <= deadline:
                record(int((t1 - t0) * 1e6))

    await asyncio.gather(*(one_client(calls[i % len(calls)]) for i in range(clients)))
    result.elapsed_s = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    result.user_s = usage1.ru_utime - usage0.ru_utime
    result.sys_s = usage1.ru_stime - usage0.ru_stime
    result.ops = len(latencies)
    result.errors = errors
    result.latencies_us = latencies.tobytes()
    return result


def _native_call_factory(cfg: LoadConfig, rng: random.Random, client: Any) -> Any:
    """The native-protocol equivalent of ``_request_factory``: a coroutine function per op."""
    from conclave.client.types import put_op

    value = b"v" * cfg.val_size
    if cfg.op == "put":
        return lambda: client.put(cfg.key(rng.randrange(cfg.key_space)), value)
    if cfg.op == "txn-put":
        return lambda: client.transaction(
            [], [put_op(cfg.key(rng.randrange(cfg.key_space)), value)], []
        )
    serializable = cfg.consistency == "s"
    keys = [cfg.key(i) for i in range(min(cfg.key_space, RANGE_KEYS_MAX))]
    return lambda: client.range(rng.choice(keys), serializable=serializable)


async def _run_native_worker(cfg: LoadConfig, index: int, ready: Any, go: Any) -> WorkerResult:
    from conclave.client import AsyncClient, ClientError

    result = WorkerResult(index)
    clients = split(cfg.clients, cfg.processes, index)
    conns = max(1, split(cfg.conns, cfg.processes, index))
    # One pipelined native connection per AsyncClient; each talks to one member only.
    natives = [
        AsyncClient([cfg.endpoints[(index + i) % len(cfg.endpoints)]], discover=False, timeout=REQUEST_TIMEOUT_S)
        for i in range(conns)
    ]
    try:
        try:
            for c in natives:
                await asyncio.wait_for(c.range(b"\0", count_only=True), CONNECT_TIMEOUT_S)
        except (TimeoutError, ClientError, OSError) as err:
            result.failure = f"cannot reach {cfg.endpoints} over the native protocol: {err}"
            ready.put(index)
            return result
        rng = random.Random(cfg.seed * 1_000_003 + index)
        calls = [_native_call_factory(cfg, rng, c) for c in natives]
        return await _measure(cfg, index, ready, go, result, calls, clients,
                              lambda err: type(err).__name__ if isinstance(err, ClientError) else None)
    finally:
        for c in natives:
            await c.close()


async def _run_worker(cfg: LoadConfig, index: int, ready: Any, go: Any) -> WorkerResult:
    if cfg.protocol == "native":
        return await _run_native_worker(cfg, index, ready, go)
    import grpc

    from conclave.api.stubs import rpc

    result = WorkerResult(index)
    clients = split(cfg.clients, cfg.processes, index)
    conns = max(1, split(cfg.conns, cfg.processes, index))
    options = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(cfg.endpoints[(index + i) % len(cfg.endpoints)], options=options)
        for i in range(conns)
    ]
    try:
        for ch in channels:
            try:
                await asyncio.wait_for(ch.channel_ready(), CONNECT_TIMEOUT_S)
            except TimeoutError:
                result.failure = f"cannot connect to {cfg.endpoints} within {CONNECT_TIMEOUT_S:.0f} s"
                ready.put(index)
                return result
        rng = random.Random(cfg.seed * 1_000_003 + index)
        service, method, make_request = _request_factory(cfg, rng)

        def caller(call: Any) -> Callable[[], Awaitable[Any]]:
            return lambda: call(make_request(), timeout=REQUEST_TIMEOUT_S)

        grpc_calls = [caller(rpc(ch, service, method)) for ch in channels]
        return await _measure(cfg, index, ready, go, result, grpc_calls, clients,
                              lambda err: err.code().name if isinstance(err, grpc.aio.AioRpcError) else None)
    finally:
        for ch in channels:
            await ch.close()


def worker_main(cfg: LoadConfig, index: int, ready: Any, go: Any, results: Any) -> None:
    """Entry point of one worker process."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        result = runner(_run_worker(cfg, index, ready, go))
    except Exception as err:  # reported to the parent as a clear failure, never lost
        result = WorkerResult(index, failure=f"{type(err).__name__}: {err}")
        ready.put(index)
    results.put(result)


# --------------------------------------------------------------------------------------- parent


async def _prefill(cfg: LoadConfig) -> None:
    """Ranges read existing keys: write them first (outside the measured window)."""
    if cfg.protocol == "native":
        from conclave.client import AsyncClient

        value = b"v" * cfg.val_size
        async with AsyncClient([cfg.endpoints[0]], discover=False, timeout=REQUEST_TIMEOUT_S) as c:
            count = min(cfg.key_space, RANGE_KEYS_MAX)
            await asyncio.gather(*(c.put(cfg.key(i), value) for i in range(count)))
        return
    import grpc

    from conclave.api import pb
    from conclave.api.stubs import rpc

    async with grpc.aio.insecure_channel(cfg.endpoints[0]) as ch:
        try:
            await asyncio.wait_for(ch.channel_ready(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise LoadError(f"cannot connect to {cfg.endpoints[0]} within {CONNECT_TIMEOUT_S:.0f} s") from None
        put = rpc(ch, "etcdserverpb.KV", "Put")
        value = b"v" * cfg.val_size
        count = min(cfg.key_space, RANGE_KEYS_MAX)
        for start in range(0, count, 50):
            await asyncio.gather(
                *(
                    put(pb.PutRequest(key=cfg.key(i), value=value), timeout=REQUEST_TIMEOUT_S)
                    for i in range(start, min(count, start + 50))
                )
            )


def _percentile(sorted_us: list[int], q: float) -> float:
    if not sorted_us:
        return 0.0
    rank = min(len(sorted_us) - 1, max(0, math.ceil(q * len(sorted_us)) - 1))  # nearest rank
    return sorted_us[rank] / 1000.0


def run_load(cfg: LoadConfig, on_window: Callable[[str], None] | None = None) -> LoadReport:
    """Run one load test and return its report (raises LoadError with a clear message).

    ``on_window("start")`` is called right before the workers are released (after the range
    prefill and the connections are made) and ``on_window("end")`` once every worker has
    reported: a benchmark reads the servers' CPU time there (bench/edge_bench.py)."""
    cfg.validate()
    if cfg.op == "range":
        try:
            asyncio.run(_prefill(cfg))
        except LoadError:
            raise
        except Exception as err:
            raise LoadError(f"could not write the keys to range over: {err}") from None
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=worker_main, args=(cfg, i, ready, go, results), name=f"conclave-bench-{i}", daemon=True)
        for i in range(cfg.processes)
    ]
    for p in procs:
        p.start()
    collected: list[WorkerResult] = []
    try:
        for _ in procs:
            ready.get(timeout=READY_TIMEOUT_S)
        if on_window is not None:
            on_window("start")
        go.set()
        wait_s = cfg.duration_s + REQUEST_TIMEOUT_S + READY_TIMEOUT_S
        for _ in procs:
            collected.append(results.get(timeout=wait_s))
        if on_window is not None:
            on_window("end")
    except Exception as err:
        raise LoadError(f"load workers did not report in time ({type(err).__name__})") from None
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    failures = sorted({r.failure for r in collected if r.failure})
    if failures:
        raise LoadError("; ".join(failures))
    return _report(cfg, collected)


def _report(cfg: LoadConfig, results: list[WorkerResult]) -> LoadReport:
    latencies: list[int] = []
    errors: dict[str, int] = {}
    for r in results:
        chunk = array.array("q")
        chunk.frombytes(r.latencies_us)
        latencies.extend(chunk)
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    latencies.sort()
    ops = len(latencies)
    window_s = cfg.duration_s  # every worker counts only operations completed inside its window
    user = sum(r.user_s for r in results)
    system = sum(r.sys_s for r in results)
    per_process = tuple(
        {
            "ops": float(r.ops),
            "user_s": round(r.user_s, 3),
            "sys_s": round(r.sys_s, 3),
            "cpu_s": round(r.user_s + r.sys_s, 3),
            "cpu_share": round((r.user_s + r.sys_s) / r.elapsed_s, 3) if r.elapsed_s else 0.0,
        }
        for r in sorted(results, key=lambda r: r.index)
    )
    return LoadReport(
        op=cfg.op,
        endpoints=cfg.endpoints,
        clients=cfg.clients,
        conns=cfg.conns,
        processes=cfg.processes,
        key_size=cfg.key_size,
        val_size=cfg.val_size,
        consistency=cfg.consistency,
        protocol=cfg.protocol,
        duration_s=round(window_s, 3),
        ops=ops,
        errors=errors,
        ops_per_s=round(ops / window_s, 1),
        latency_ms_mean=round(sum(latencies) / ops / 1000.0, 3) if ops else 0.0,
        latency_ms_p50=_percentile(latencies, 0.50),
        latency_ms_p90=_percentile(latencies, 0.90),
        latency_ms_p99=_percentile(latencies, 0.99),
        latency_ms_max=latencies[-1] / 1000.0 if ops else 0.0,
        generator_user_s=round(user, 3),
        generator_sys_s=round(system, 3),
        generator_cpu_us_per_op=round((user + system) / ops * 1e6, 2) if ops else 0.0,
        generator_cpu_per_process=per_process,
    )


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``"http://a:2379,b:2379"`` -> ``("a:2379", "b:2379")``."""
    out = []
    for raw in text.split(","):
        ep = raw.strip()
        for scheme in ("http://", "https://", "unix://"):
            if ep.startswith(scheme):
                ep = ep[len(scheme) :]
        if ep:
            out.append(ep.rstrip("/"))
    return tuple(out)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
