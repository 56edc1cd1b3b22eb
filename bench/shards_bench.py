"""Single-shard put throughput with K = 1, 3, 6 Raft groups on the same 3 members (issue 16).

Theory of operation: for each K the script starts a 3-member Conclave cluster on 127.0.0.1
(``ProcessCluster``, heartbeat 100 ms, election 1000 ms, fsync on; ``--shards K`` when K > 1),
waits until every group has a leader and the leader balancing has settled (every member's
``GET /conclave/shards`` agrees, nobody leads more than its fair share ``ceil(G/N)`` of the G groups
counting the meta group, and the leader map has not moved for ``SETTLE_S``), then drives it with
``conclave bench put --spread-keys`` like a real client: ONE process, one HTTP/2 (gRPC) connection
per endpoint (``--conns 3`` round-robins the 3 endpoints), the clients multiplexed over them, each
put a single-key request (so it runs in one group). ``--spread-keys`` makes each key start with a
character of 0-9A-Za-z, the alphabet ``--shards K`` takes its split keys from, so every group gets
writes (the default keys all start with 'k': one group). Each group's revision is read before and
after the run to show how the puts were spread. Then the same load against a 3-member etcd 3.4
cluster is the reference row. One cluster at a time, same machine, same run.

    .venv/bin/python bench/shards_bench.py [--duration 5] [--clients 64] [--shards 1,3,6] [--rounds 1]
                                           [--skip-etcd] [--json OUT]

``--rounds N`` repeats the whole set N times, the configurations interleaved (K=1, 3, 6, etcd, K=1,
...), and the table shows each configuration's median with the range of its puts/s: on a shared
machine a load swing then hits every configuration rather than one.

Cross-shard transactions (a txn over 2 and over 3 groups vs a single-group Txn, and etcd 3.4)
are measured by ``bench/xshard_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conclave.server.launcher import ProcessCluster

SETTLE_S = 5.0  # the leader map must hold this long (2.5 balance periods of 2 s) to count as settled
SETTLE_TIMEOUT_S = 60.0
POLL_S = 0.5



def shard_view(endpoint: str) -> dict[str, Any] | None:
    from conclave.cli.shards import fetch

    try:
        return fetch(endpoint, 3.0)
    except (OSError, ValueError):
        return None


def status_leaders(endpoints: list[str]) -> dict[str, tuple[int, int]]:
    """endpoint -> (its member id, the leader it sees), over the etcd Maintenance.Status RPC."""
    import grpc

    from conclave.api import pb
    from conclave.api.stubs import rpc

    out = {}
    for ep in endpoints:
        with grpc.insecure_channel(ep) as ch:
            try:
                r = rpc(ch, "etcdserverpb.Maintenance", "Status")(pb.StatusRequest(), timeout=3.0)
            except grpc.RpcError:
                continue
            out[ep] = (int(r.header.member_id), int(r.leader))
    return out


def leader_map(cluster: ProcessCluster, shards: int) -> tuple[dict[int, str], dict[str, str]] | None:
    """({group: leader's name}, {member name: member id hex}) when every member agrees, else None."""
    names: dict[int, str] = {}
    if shards == 1:
        st = status_leaders(cluster.endpoints)
        if len(st) != len(cluster.members):
            return None
        names = {mid: m.name for m in cluster.members for ep, (mid, _) in st.items() if ep == m.endpoint}
        seen = {lead for _, lead in st.values()}
        if len(seen) != 1 or 0 in seen or next(iter(seen)) not in names:
            return None
        return {1: names[next(iter(seen))]}, {n: f"{i:x}" for i, n in names.items()}
    views = {}
    for m in cluster.members:
        v = shard_view(m.endpoint)
        if v is None:
            return None
        views[m.name] = v
        names[int(v["member"])] = m.name
    maps = [{int(r["group"]): int(r["leader"]) for r in v["groups"]} for v in views.values()]
    if any(mp != maps[0] for mp in maps) or any(lead not in names for lead in maps[0].values()):
        return None
    return {g: names[lead] for g, lead in maps[0].items()}, {n: f"{i:x}" for i, n in names.items()}


def wait_settled(cluster: ProcessCluster, shards: int) -> tuple[dict[int, str], bool, float]:
    """Wait for a leader in every group and the balancing to settle: (leaders, settled, seconds)."""
    start = time.monotonic()
    groups = 1 if shards == 1 else shards + 1
    fair = math.ceil(groups / len(cluster.members))
    last: dict[int, str] | None = None
    since = start
    while time.monotonic() - start < SETTLE_TIMEOUT_S:
        got = leader_map(cluster, shards)
        now = time.monotonic()
        if got is None:
            last = None
        else:
            leaders = got[0]
            if leaders != last:
                last, since = leaders, now
            elif max(Counter(leaders.values()).values()) <= fair and now - since >= SETTLE_S:
                return leaders, True, now - start
        time.sleep(POLL_S)
    return last or {}, False, time.monotonic() - start


def revisions(cluster: ProcessCluster) -> dict[int, int]:
    v = shard_view(cluster.members[0].endpoint)
    return {} if v is None else {int(r["group"]): int(r["revision"]) for r in v["groups"] if r["role"] == "data"}


def run_put(endpoints: list[str], duration: float, clients: int) -> dict[str, Any] | None:
    cmd = [sys.executable, "-m", "conclave", "bench", "put", "--endpoints", ",".join(endpoints),
           "--clients", str(clients), "--conns", str(len(endpoints)), "--processes", "1", "--spread-keys",
           "--duration", str(duration), "--val-size", "256", "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 10 + 120)
    if done.returncode != 0:
        print(f"  conclave bench put FAILED:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    rep: dict[str, Any] = json.loads(done.stdout)
    return rep


def leaders_text(leaders: dict[int, str], members: list[str], shards: int) -> str:
    """'m1:2 m2:2 m3:2' over the data groups (the meta group's leader noted apart)."""
    data = {g: n for g, n in leaders.items() if shards == 1 or g != 0}
    counts = Counter(data.values())
    text = " ".join(f"{m}:{counts.get(m, 0)}" for m in members)
    return text + (f" (meta {leaders.get(0, '?')})" if shards > 1 else "")


def bench_one(root: Path, kind: str, shards: int, args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--shards", str(shards)] if kind == "conclave" and shards > 1 else []
    cluster = ProcessCluster(root, 3, kind=kind, heartbeat_ms=100, election_ms=1000, extra_args=extra)
    label = "etcd 3.4" if kind == "etcd" else f"K={shards}"
    row: dict[str, Any] = {"config": label, "kind": kind, "shards": shards}
    cluster.start()
    try:
        members = [m.name for m in cluster.members]
        if kind == "etcd":
            time.sleep(3.0)  # let the first election settle (as cluster_bench.py)
            st = status_leaders(cluster.endpoints)
            ids = {mid: m.name for m in cluster.members for ep, (mid, _) in st.items() if ep == m.endpoint}
            lead = {lead for _, lead in st.values()}
            leaders = {1: ids.get(next(iter(lead)), "?")} if len(lead) == 1 else {}
            settled, took = bool(leaders), 3.0
        else:
            leaders, settled, took = wait_settled(cluster, shards)
        row.update(leaders=leaders_text(leaders, members, shards), settled=settled, settle_s=round(took, 1))
        print(f"== {label}: leaders {row['leaders']}" + ("" if settled else " (balancing NOT settled)")
              + f" after {took:.1f} s", flush=True)
        before = revisions(cluster) if kind == "conclave" and shards > 1 else {}
        rep = run_put(cluster.endpoints, args.duration, args.clients)
        if rep is None:
            row["failed"] = True
            for m in cluster.members:  # the data dirs are removed at the end: say what the members said
                tail = "\n    ".join(m.log_text().splitlines()[-12:])
                print(f"  {m.name} ({'alive' if m.alive() else 'exited'}), last log lines:\n    {tail}",
                      file=sys.stderr)  # fmt: skip
            return row
        after = revisions(cluster) if before else {}
        row.update(ops_per_s=rep["ops_per_s"], p50=rep["latency_ms_p50"], p99=rep["latency_ms_p99"],
                   errors=rep.get("errors", {}), gen_cpu_share=rep["generator_cpu_per_process"][0]["cpu_share"])
        if before:
            row["writes_per_group"] = {g: after.get(g, 0) - before.get(g, 0) for g in sorted(before)}
        if kind == "conclave" and shards > 1:
            got = leader_map(cluster, shards)
            if got is not None and got[0] != leaders:
                row["leaders_after"] = leaders_text(got[0], members, shards)
        spread = f"  puts per group {row['writes_per_group']}" if before else ""
        moved = f"  leaders moved during the run: {row['leaders_after']}" if "leaders_after" in row else ""
        print(f"  {rep['ops_per_s']:>9,.0f} puts/s  p50 {rep['latency_ms_p50']:7.2f} ms  p99 "
              f"{rep['latency_ms_p99']:7.2f} ms  errors {rep.get('errors', {})}  generator "
              f"{row['gen_cpu_share']:.0%} of a core{spread}{moved}", flush=True)  # fmt: skip
    finally:
        cluster.stop()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per configuration (default 5)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent puts in flight (default 64)")
    ap.add_argument("--shards", default="1,3,6", help="comma-separated K values (default 1,3,6)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every configuration this many times, interleaved; the table shows medians")
    ap.add_argument("--skip-etcd", action="store_true", help="no etcd 3.4 reference row")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    try:
        ks = [int(k) for k in args.shards.split(",") if k.strip()]
    except ValueError:
        ap.error(f"--shards must be a comma-separated list of integers, got {args.shards!r}")
    if not ks or any(k < 1 or k > 64 for k in ks):
        ap.error("--shards values must be between 1 and 64")
    if args.rounds < 1 or args.duration <= 0 or args.clients < 1:
        ap.error("--rounds and --clients must be at least 1 and --duration positive")
    root = Path(tempfile.mkdtemp(prefix="conclave-shards-bench-"))
    configs: list[tuple[str, int]] = [("conclave", k) for k in ks]
    if not args.skip_etcd:
        if shutil.which("etcd") is None:
            print("etcd is not installed: no reference row", file=sys.stderr)
        else:
            configs.append(("etcd", 1))
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):  # the configurations interleaved: a load swing hits them all
            if args.rounds > 1:
                print(f"##### round {rnd + 1} of {args.rounds}", flush=True)
            for kind, k in configs:
                row = bench_one(root / f"r{rnd}-{kind}{k}", kind, k, args)
                row["round"] = rnd + 1
                rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.clients} clients, 1 process, 1 gRPC connection per member, single-key puts, 256 B values, "
          f"{args.duration:g} s per row" + (f", median of {args.rounds} rounds (puts/s range)" if args.rounds > 1
                                             else ""))  # fmt: skip
    print("| config | data-group leaders per member | puts/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for label in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == label]
        ok = [r for r in mine if not r.get("failed")]
        leaders = " / ".join(r["leaders"] + ("" if r["settled"] else " (not settled)") for r in mine)
        if not ok:
            print(f"| {label} | {leaders} | failed | | |")
            continue
        med = {f: statistics.median(r[f] for r in ok) for f in ("ops_per_s", "p50", "p99")}
        rng = f" ({min(r['ops_per_s'] for r in ok):,.0f}-{max(r['ops_per_s'] for r in ok):,.0f})" if len(ok) > 1 else ""
        failed = f", {len(mine) - len(ok)} failed" if len(ok) < len(mine) else ""
        print(f"| {label} | {leaders} | {med['ops_per_s']:,.0f}{rng}{failed} | {med['p50']:.1f} | {med['p99']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r.get("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
