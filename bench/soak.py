"""Soak one real member with mixed, churning load and watch its RSS (does memory stay flat?).

    .venv/bin/python bench/soak.py --duration 600                 # 10 minutes, default gc policy
    .venv/bin/python bench/soak.py --duration 600 --gc-freeze-interval 1 --gc-full-interval 0   # old policy
    .venv/bin/python bench/soak.py --duration 120 --json

Starts a single-member ``conclave serve`` (ProcessCluster), then for ``--duration`` seconds runs,
over one gRPC channel: writers (put / overwrite / delete over a bounded key space, values of
varying size), txns (compare-version then put or range), lease churn (grant, attach keys, revoke;
some left to expire), watch churn (streams created on prefixes, a few events read, then
cancelled by the client) and a compactor (every 2 s, compact to revision - 500, as etcd's
auto-compaction would; without it MVCC history grows legitimately). Samples the member's
VmRSS every second and reports RSS after warm-up, at the end, the peak and the growth, plus the
member's "gc: full collection" log lines, and the RSS at two settle points (load held,
compaction, Defragment: a full collection in the member), after the warm-up and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY_SPACE = 2000
COMPACT_EVERY_S = 2.0
COMPACT_KEEP = 500


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _mixed_load(endpoint: str, pid: int, duration: float, warmup: float, seed: int) -> dict[str, Any]:
    import grpc

    from conclave.api import pb
    from conclave.api.stubs import rpc

    rng = random.Random(seed)
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    details: dict[str, int] = {}  # error code and message -> count
    samples: list[tuple[float, int]] = []

    def key(i: int) -> bytes:
        return b"/soak/%s/%05d" % (b"abcd"[i % 4 : i % 4 + 1], i)

    async with grpc.aio.insecure_channel(endpoint) as ch:
        put, rng_, delete = rpc(ch, "etcdserverpb.KV", "Put"), rpc(ch, "etcdserverpb.KV", "Range"), rpc(
            ch, "etcdserverpb.KV", "DeleteRange")
        txn, compact = rpc(ch, "etcdserverpb.KV", "Txn"), rpc(ch, "etcdserverpb.KV", "Compact")
        grant, revoke = rpc(ch, "etcdserverpb.Lease", "LeaseGrant"), rpc(ch, "etcdserverpb.Lease", "LeaseRevoke")
        watch = rpc(ch, "etcdserverpb.Watch", "Watch")
        defrag = rpc(ch, "etcdserverpb.Maintenance", "Defragment")
        # The port opens before the member has elected itself: wait for a first write (bounded),
        # or the writers would spin on fail-fast "no leader" answers.
        ready_by = time.monotonic() + 30
        while True:
            try:
                await put(pb.PutRequest(key=b"/soak/ready", value=b"1"), timeout=5)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > ready_by:
                    raise
                await asyncio.sleep(0.05)
        start_at = time.monotonic()
        stop_at = start_at + duration
        # While a settle point is taken the load holds still: writers finish their current call and
        # wait, so the RSS read after the member's Defragment (a full collection) is not the phase
        # of the allocator's sawtooth but what the member keeps.
        running = asyncio.Event()
        running.set()
        settled: list[tuple[float, int]] = []

        async def guarded(name: str, coro: Any) -> Any:
            try:
                out = await coro
                counts[name] = counts.get(name, 0) + 1
                return out
            except grpc.aio.AioRpcError as exc:
                code = f"{name}:{exc.code().name}"
                errors[code] = errors.get(code, 0) + 1
                details[f"{code}: {exc.details()}"] = details.get(f"{code}: {exc.details()}", 0) + 1
                return None

        async def writer() -> None:
            while time.monotonic() < stop_at:
                await running.wait()
                i = rng.randrange(KEY_SPACE)
                roll = rng.random()
                if roll < 0.6:
                    value = rng.randbytes(rng.choice((16, 256, 1024)))
                    await guarded("put", put(pb.PutRequest(key=key(i), value=value), timeout=10))
                elif roll < 0.8:
                    end = key(i + rng.randrange(1, 20)) if rng.random() < 0.3 else b""
                    await guarded("delete", delete(pb.DeleteRangeRequest(key=key(i), range_end=end), timeout=10))
                else:
                    cmp = pb.Compare(key=key(i), target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)
                    await guarded("txn", txn(pb.TxnRequest(
                        compare=[cmp],
                        success=[pb.RequestOp(request_put=pb.PutRequest(key=key(i), value=b"t" * 64))],
                        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key(i)))],
                    ), timeout=10))

        async def leaser() -> None:
            while time.monotonic() < stop_at:
                await running.wait()
                g = await guarded("lease_grant", grant(pb.LeaseGrantRequest(TTL=rng.choice((2, 5))), timeout=10))
                if g is None:
                    await asyncio.sleep(0.1)
                    continue
                for _ in range(rng.randrange(1, 6)):
                    await guarded("lease_put", put(pb.PutRequest(
                        key=b"/soak/lease/%d/%d" % (g.ID, rng.randrange(1000)), value=b"l" * 128, lease=g.ID),
                        timeout=10))
                if rng.random() < 0.7:  # the rest expire
                    await guarded("lease_revoke", revoke(pb.LeaseRevokeRequest(ID=g.ID), timeout=10))

        async def watcher() -> None:
            while time.monotonic() < stop_at:
                await running.wait()
                call = watch()
                prefix = b"/soak/" + rng.choice((b"a", b"b", b"c", b"d", b"lease"))
                try:
                    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                        key=prefix, range_end=prefix[:-1] + bytes([prefix[-1] + 1]), prev_kv=rng.random() < 0.5)))
                    for _ in range(rng.randrange(1, 20)):
                        await asyncio.wait_for(call.read(), timeout=5)
                    counts["watch"] = counts.get("watch", 0) + 1
                except (TimeoutError, grpc.aio.AioRpcError) as exc:
                    errors[f"watch:{type(exc).__name__}"] = errors.get(f"watch:{type(exc).__name__}", 0) + 1
                finally:
                    call.cancel()

        async def compactor() -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(COMPACT_EVERY_S)
                r = await guarded("range", rng_(pb.RangeRequest(key=b"/soak/", range_end=b"/soak0", count_only=True),
                                                timeout=10))
                if r is not None and r.header.revision > COMPACT_KEEP:
                    await guarded("compact", compact(pb.CompactionRequest(revision=r.header.revision - COMPACT_KEEP),
                                                     timeout=10))

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                samples.append((round(time.monotonic() - start_at, 1), rss_bytes(pid)))
                await asyncio.sleep(1.0)

        async def settle_point() -> None:
            running.clear()
            await asyncio.sleep(1.0)  # the calls in flight finish (each is bounded by its timeout anyway)
            r = await guarded("range", rng_(pb.RangeRequest(key=b"/soak/", range_end=b"/soak0", count_only=True),
                                            timeout=10))
            if r is not None and r.header.revision > COMPACT_KEEP:
                await guarded("compact", compact(pb.CompactionRequest(revision=r.header.revision - COMPACT_KEEP),
                                                 timeout=10))
            await guarded("defragment", defrag(pb.DefragmentRequest(), timeout=30))
            await asyncio.sleep(0.5)
            settled.append((round(time.monotonic() - start_at, 1), rss_bytes(pid)))
            running.set()

        async def settler() -> None:
            for at in (warmup, duration - 2.5):
                await asyncio.sleep(max(0.0, start_at + at - time.monotonic()))
                await settle_point()

        await asyncio.gather(*(writer() for _ in range(8)), *(leaser() for _ in range(2)),
                             *(watcher() for _ in range(4)), compactor(), sampler(), settler())
    return {"counts": counts, "errors": errors, "error_details": details, "samples": samples, "settled": settled}


def summarize(samples: list[tuple[float, int]], warmup: float, window_s: float = 25.0) -> dict[str, float]:
    """RSS growth after warm-up, in MB: the lowest RSS of the last ``window_s`` seconds minus the
    lowest of the first ``window_s`` seconds after warm-up; also the peak.

    RSS under this load is a sawtooth (about 10 MB, a period of about 20 s: compactions free what
    the churn built up), so a sample taken at the end says more about the phase of the tooth than
    about growth; the troughs are what a leak lifts. A window must hold at least one trough.
    """
    after = [(t, rss) for t, rss in samples if t >= warmup]
    if len(after) < 10 or after[-1][0] - after[0][0] < 2 * window_s:
        raise RuntimeError(f"too few RSS samples after warm-up: {len(after)} over "
                           f"{after[-1][0] - after[0][0] if after else 0:.0f} s (need {2 * window_s:.0f} s)")
    mb = 2**20
    first, last = after[0][0], after[-1][0]
    start = min(rss for t, rss in after if t <= first + window_s) / mb
    end = min(rss for t, rss in after if t >= last - window_s) / mb
    return {
        "rss_warm_mb": round(start, 1),
        "rss_end_mb": round(end, 1),
        "rss_peak_mb": round(max(rss for _, rss in after) / mb, 1),
        "growth_mb": round(end - start, 1),
    }


def settled_growth(settled: list[tuple[float, int]]) -> dict[str, Any]:
    """RSS at the two settle points (after warm-up, just before the end: load held, compaction,
    Defragment, which makes the member run a full collection) and its growth, in MB."""
    if len(settled) != 2:
        raise RuntimeError(f"expected 2 settle points, got {len(settled)}: {settled}")
    (t0, a), (t1, b) = settled
    mb = 2**20
    return {"settled_at_s": [t0, t1], "rss_settled_warm_mb": round(a / mb, 1), "rss_settled_end_mb": round(b / mb, 1),
            "settled_growth_mb": round((b - a) / mb, 1)}


def run_soak(root: Path, duration: float, warmup: float, gc_full_interval: float | None = None,
             seed: int = 1, gc_freeze_interval: float | None = None) -> dict[str, Any]:
    """Start a member under ``root``, soak it, stop it; the report (see the module docstring)."""
    from conclave.server.launcher import ProcessCluster

    env = {} if gc_full_interval is None else {"CONCLAVE_GC_FULL_INTERVAL_S": str(gc_full_interval)}
    if gc_freeze_interval is not None:
        env["CONCLAVE_GC_FREEZE_INTERVAL_S"] = str(gc_freeze_interval)
    cluster = ProcessCluster(root, size=1)
    root.mkdir(parents=True, exist_ok=True)
    for m in cluster.members:
        m.start(env=env)
    try:
        cluster.wait_ready(30)
        member = cluster.members[0]
        assert member.proc is not None
        load = asyncio.run(_mixed_load(member.endpoint, member.proc.pid, duration, warmup, seed))
        alive = member.alive()
    finally:
        cluster.stop()
    log = cluster.members[0].log_text()
    full = [(int(a), int(b)) for a, b in re.findall(r"gc: full collection freed (\d+) unreachable objects in (\d+) ms",
                                                     log)]
    return {
        "duration_s": duration,
        "warmup_s": warmup,
        "gc_freeze_interval_s": gc_freeze_interval,
        "gc_full_interval_s": gc_full_interval,
        "alive_at_end": alive,
        **summarize(load["samples"], warmup),
        **settled_growth(load["settled"]),
        "ops": load["counts"],
        "errors": load["errors"],
        "error_details": load["error_details"],
        "full_collections": [{"freed": f, "pause_ms": p} for f, p in full],
        "rss_mb_by_minute": [round(rss / 2**20, 1) for t, rss in load["samples"] if int(t) % 60 == 0],
        "samples": load["samples"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default %(default)s)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline (default %(default)s)")
    p.add_argument("--gc-freeze-interval", type=float, default=None,
                   help="CONCLAVE_GC_FREEZE_INTERVAL_S for the member (default: the member's default, 0: no freezing)")
    p.add_argument("--gc-full-interval", type=float, default=None,
                   help="CONCLAVE_GC_FULL_INTERVAL_S for the member (with freezing; 0: freeze only)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="conclave-soak-") as root:
        rep = run_soak(Path(root) / "c", args.duration, args.warmup, args.gc_full_interval, args.seed,
                       args.gc_freeze_interval)
    if args.json:
        json.dump(rep, sys.stdout, indent=2)
        print()
    else:
        rep.pop("samples")
        for k, v in rep.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
