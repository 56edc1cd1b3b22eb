"""Native protocol vs the etcd gRPC API vs real etcd 3.4: put and linearizable get, 3 members each.

    .venv/bin/python bench/native_bench.py                      # 64 and 256 concurrent, 5 s each
    .venv/bin/python bench/native_bench.py --duration 3 --concurrency 64 --json

Starts a 3-member Conclave cluster (``ProcessCluster``, fsync on, 127.0.0.1) and measures:
* native put / get through ``conclave.AsyncClient`` (the real client library: one pipelined
  connection per worker process, ``--processes`` workers spread over the members);
* gRPC put / range (linearizable) with ``conclave.loadgen`` (the `conclave bench` generator);
then stops it, starts a 3-member etcd 3.4 the same way and measures gRPC put / range again.
Members of one cluster run alone on the machine while they are measured.

First, ``--adapter`` (on by default) isolates the protocol's own cost: the native server adapter in
a process of its own in front of a backend that answers at once (no Raft, no store), driven by
the client library with 64 requests in flight; it reports the server's and the client's CPU per
operation (the issue's estimate for msgpack framing: 5-30 us; a Python gRPC server: 200-300 us).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conclave.loadgen import LoadConfig, LoadError, run_load
from conclave.server.launcher import ProcessCluster

KEY_SPACE = 10_000
VALUE = b"v" * 256
READY_TIMEOUT_S = 60


def _percentile(sorted_us: list[int], q: float) -> float:
    if not sorted_us:
        return 0.0
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))] / 1000.0


async def _native_worker(
    endpoint: str, op: str, clients: int, duration_s: float, ready: Any, go: Any
) -> dict[str, Any]:
    from conclave import AsyncClient
    from conclave.client import ClientError

    async with AsyncClient([endpoint], discover=False, timeout=10) as c:
        for i in range(50):  # connect and make sure the keys exist for get
            await c.put(b"k%05d" % i, VALUE)
        if op == "get":
            await asyncio.gather(*(c.put(b"k%05d" % i, VALUE) for i in range(1000)))
        ready.put(os.getpid())
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, READY_TIMEOUT_S):
            return {"failure": "never released"}
        rng = random.Random(os.getpid())
        latencies = array.array("q")
        errors: dict[str, int] = {}
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        deadline = start + duration_s
        key_space = 1000 if op == "get" else KEY_SPACE

        async def client() -> None:
            perf = time.perf_counter
            call = c.put if op == "put" else c.get_kv
            while True:
                key = b"k%05d" % rng.randrange(key_space)
                t0 = perf()
                if t0 >= deadline:
                    return
                try:
                    if op == "put":
                        await call(key, VALUE)
                    else:
                        await call(key)
                except ClientError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                t1 = perf()
                if t1 <= deadline:
                    latencies.append(int((t1 - t0) * 1e6))

        await asyncio.gather(*(client() for _ in range(clients)))
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        return {"latencies": latencies.tobytes(), "errors": errors, "elapsed": time.perf_counter() - start,
                "cpu_s": usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime}


def _native_entry(endpoint: str, op: str, clients: int, duration_s: float, ready: Any, go: Any, out: Any) -> None:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uvloop.install()
    except ImportError:
        pass
    try:
        out.put(asyncio.run(_native_worker(endpoint, op, clients, duration_s, ready, go)))
    except BaseException as exc:  # reported by the parent
        ready.put(-1)
        out.put({"failure": f"{type(exc).__name__}: {exc}"})


def run_native(endpoints: list[str], op: str, concurrency: int, processes: int, duration_s: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = []
    for i in range(processes):
        share = concurrency // processes + (1 if i < concurrency % processes else 0)
        p = ctx.Process(target=_native_entry,
                        args=(endpoints[i % len(endpoints)], op, share, duration_s, ready, go, out))
        p.start()
        procs.append(p)
    for _ in procs:
        ready.get(timeout=READY_TIMEOUT_S)
    go.set()
    results = [out.get(timeout=duration_s + READY_TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(10)
    failures = [r["failure"] for r in results if "failure" in r]
    if failures:
        raise RuntimeError(f"native {op}: {failures[0]}")
    lat = array.array("q")
    errors: dict[str, int] = {}
    for r in results:
        lat.frombytes(r["latencies"])
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ordered = sorted(lat)
    elapsed = max(r["elapsed"] for r in results)
    return {"ops_per_s": len(ordered) / duration_s if elapsed else 0.0, "ops": len(ordered),
            "p50_ms": _percentile(ordered, 0.50), "p99_ms": _percentile(ordered, 0.99),
            "mean_ms": (sum(ordered) / len(ordered) / 1000.0) if ordered else 0.0, "errors": errors,
            "client_cpu_us_per_op": sum(r["cpu_s"] for r in results) / max(1, len(ordered)) * 1e6}


def run_grpc(endpoints: list[str], op: str, concurrency: int, processes: int, duration_s: float) -> dict[str, Any]:
    cfg = LoadConfig(op=op, endpoints=tuple(endpoints), clients=concurrency, conns=max(processes, 3),
                     duration_s=duration_s, key_space=KEY_SPACE, processes=processes)
    r = run_load(cfg)
    return {"ops_per_s": r.ops_per_s, "ops": r.ops, "p50_ms": r.latency_ms_p50, "p99_ms": r.latency_ms_p99,
            "mean_ms": r.latency_ms_mean, "errors": r.errors, "client_cpu_us_per_op": r.generator_cpu_us_per_op}


class _InstantBackend:
    """Answers put and range at once: what remains is the protocol's own cost."""

    cluster_id = 1
    member_id = 1

    def raft_term(self) -> int:
        return 1

    def has_leader(self) -> bool:
        return True

    def current_revision(self) -> int:
        return 1

    async def put(self, req: Any) -> Any:
        from conclave.kv import types as kv

        return kv.PutResponse(kv.ResponseHeader(revision=1))

    async def range(self, req: Any) -> Any:
        from conclave.kv import types as kv

        return kv.RangeResponse(kv.ResponseHeader(revision=1), (kv.KeyValue(req.key, 1, 1, 1, VALUE),), False, 1)

    def __getattr__(self, name: str) -> Any:  # every other call: not measured here
        async def unsupported(*_: Any) -> Any:
            raise NotImplementedError(name)

        return unsupported


class _AdapterCfg:
    listen_native_urls = ["http://127.0.0.1:0"]
    max_request_bytes = 1536 * 1024


def _adapter_server(ports: Any, stop: Any) -> None:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uvloop.install()
    except ImportError:
        pass
    from conclave.api.native import start_native_server

    async def main() -> None:
        server = await start_native_server(_InstantBackend(), _AdapterCfg())
        ports.put(server.ports[0])
        await asyncio.get_running_loop().run_in_executor(None, stop.wait, 600)
        server.close()

    asyncio.run(main())


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_adapter(duration_s: float, in_flight: int = 64) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_adapter_server, args=(ports, stop))
    proc.start()
    port = ports.get(timeout=READY_TIMEOUT_S)
    rows = []

    async def drive(op: str) -> dict[str, Any]:
        from conclave import AsyncClient

        async with AsyncClient([f"127.0.0.1:{port}"], discover=False) as c:
            await c.put("warm", "up")
            done = 0
            end = time.perf_counter() + duration_s
            server0, client0 = _proc_cpu_s(proc.pid), time.process_time()

            async def one() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    if op == "put":
                        await c.put(b"k%05d" % (done % 1000), VALUE)
                    else:
                        await c.get_kv(b"k%05d" % (done % 1000))
                    done += 1

            await asyncio.gather(*(one() for _ in range(in_flight)))
            server_us = (_proc_cpu_s(proc.pid) - server0) / max(1, done) * 1e6
            client_us = (time.process_time() - client0) / max(1, done) * 1e6
            return {"op": op, "ops_per_s": done / duration_s, "server_cpu_us_per_op": server_us,
                    "client_cpu_us_per_op": client_us}

    try:
        for op in ("put", "get"):
            rows.append(asyncio.run(drive(op)))
    finally:
        stop.set()
        proc.join(10)
    return rows


def _warm(cluster: ProcessCluster, native: bool) -> None:
    from conclave import Client

    eps = [m.native_endpoint for m in cluster.members] if native else cluster.endpoints
    with Client(eps, protocol="native" if native else "grpc", timeout=30) as c:
        c.put("bench-warm", "x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default %(default)s)")
    p.add_argument("--concurrency", default="64,256", help="concurrent requests, comma-separated (default %(default)s)")
    p.add_argument("--processes", type=int, default=2, help="load generator processes (default %(default)s)")
    p.add_argument("--no-etcd", action="store_true", help="skip the real etcd 3.4 runs")
    p.add_argument("--no-adapter", action="store_true", help="skip the protocol-only measurement")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    rows: list[dict[str, Any]] = []

    def record(system: str, protocol: str, op: str, level: int, fn: Any, eps: list[str]) -> None:
        try:
            r = fn(eps, op, level, args.processes, args.duration)
        except (LoadError, RuntimeError) as exc:
            r = {"failure": str(exc)}
        rows.append({"system": system, "protocol": protocol, "op": op, "concurrency": level, **r})
        if not args.json:
            _print_row(rows[-1])

    if not args.no_adapter:
        adapter = run_adapter(min(args.duration, 3.0))
        if args.json:
            rows.extend({"system": "adapter-only", **r} for r in adapter)
        else:
            print("native protocol alone (instant backend, 64 in flight, one connection):")
            for r in adapter:
                print(f"  {r['op']:<4} {r['ops_per_s']:>9,.0f} ops/s   server {r['server_cpu_us_per_op']:.1f} us/op"
                      f"   client {r['client_cpu_us_per_op']:.1f} us/op", flush=True)
            print(flush=True)
    with tempfile.TemporaryDirectory(prefix="native-bench-") as tmp:
        if not args.json:
            print(f"{'system':<10} {'protocol':<8} {'op':<5} {'conc':>5} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'client us/op':>12}  errors", flush=True)
        cluster = ProcessCluster(Path(tmp) / "conclave", 3)
        cluster.start()
        try:
            _warm(cluster, True)
            native_eps = [m.native_endpoint for m in cluster.members]
            for level in levels:
                record("conclave", "native", "put", level, run_native, native_eps)
                record("conclave", "grpc", "put", level, run_grpc, cluster.endpoints)
                record("conclave", "native", "get", level, run_native, native_eps)
                record("conclave", "grpc", "range", level, run_grpc, cluster.endpoints)
        finally:
            cluster.stop()
        if not args.no_etcd:
            etcd = ProcessCluster(Path(tmp) / "etcd", 3, kind="etcd")
            try:
                etcd.start()
                _warm(etcd, False)
                for level in levels:
                    record("etcd-3.4", "grpc", "put", level, run_grpc, etcd.endpoints)
                    record("etcd-3.4", "grpc", "range", level, run_grpc, etcd.endpoints)
            except (OSError, RuntimeError) as exc:
                print(f"etcd runs skipped: {exc}", file=sys.stderr)
            finally:
                etcd.stop()
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


def _print_row(r: dict[str, Any]) -> None:
    if "failure" in r:
        print(f"{r['system']:<10} {r['protocol']:<8} {r['op']:<5} {r['concurrency']:>5}  FAILED: {r['failure']}",
              flush=True)
        return
    errors = ",".join(f"{k}={v}" for k, v in sorted(r["errors"].items())) or "-"
    print(f"{r['system']:<10} {r['protocol']:<8} {r['op']:<5} {r['concurrency']:>5} {r['ops_per_s']:>9,.0f} "
          f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['client_cpu_us_per_op']:>12.1f}  {errors}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
