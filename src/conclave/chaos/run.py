"""One chaos run, start to verdict: cluster, workload, nemesis, healing, quiet period, checks.

Theory of operation. ``run_chaos(config)`` cleans up what dead runs left, starts the cluster, runs
the workload for ``time`` seconds while the nemesis plays the seeded schedule, heals everything,
keeps the workload running through a quiet period of ``quiet`` seconds (recovery is measured
there: the first acknowledged write after the last heal must come within ``recovery_timeout``),
stops the clients, reads every key once more, tears the cluster down (in ``finally``: Ctrl-C,
SIGTERM and exceptions included) and then checks the history. It returns a summary dict and an
exit status: 0 valid, 1 violation (linearizability, a lost acknowledged write, or no recovery
after healing), 2 undecided (the checker answered unknown) or the harness failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.chaos import analysis, report
from conclave.chaos.bank import BankWorkload, bank_split_keys
from conclave.chaos.cluster import ChaosCluster
from conclave.chaos.nemesis import Nemesis
from conclave.chaos.netns import cleanup_leftovers
from conclave.chaos.schedule import make_schedule
from conclave.chaos.workload import Findings, KeyPool, Recorder, Workload
from conclave.chaos.workloads import WORKLOADS


@dataclass
class ChaosConfig:
    time: float = 60.0
    nodes: int = 3
    nemesis: tuple[str, ...] = ("kill", "pause", "partition")
    nemesis_text: str = "kill,pause,partition"
    workload: str = "register"
    seed: int = 0
    interval: float = 10.0
    clients: int = 10
    keys: int = 5
    ops_per_key: int = 200
    quiet: float = 10.0
    recovery_timeout: float = 30.0
    out: Path | None = None
    mode: str = "auto"
    check_budget: float = 120.0
    election_ms: int = 1000
    heartbeat_ms: int = 100
    grpc_engine: str = "python"
    shards: int = 1
    accounts: int = 100

    def rerun(self) -> str:
        args = ["conclave", "chaos", "--time", f"{self.time:g}", "--nodes", str(self.nodes), "--nemesis",
                self.nemesis_text, "--interval", f"{self.interval:g}", "--workload", self.workload,
                "--clients", str(self.clients), "--seed", str(self.seed)]
        if self.keys != 5:
            args += ["--keys", str(self.keys)]
        if self.ops_per_key != (100 if self.workload == "append" else 200):
            args += ["--ops-per-key", str(self.ops_per_key)]
        if self.quiet != 10.0:
            args += ["--quiet", f"{self.quiet:g}"]
        if self.mode != "auto":
            args += ["--mode", self.mode]
        if self.grpc_engine != "python":
            args += ["--grpc-engine", self.grpc_engine]
        if self.shards != 1:
            args += ["--shards", str(self.shards)]
        if self.workload == "bank" and self.accounts != 100:
            args += ["--accounts", str(self.accounts)]
        return shlex.join(args)


# nemeses whose faults a cluster of several shards refuses (ShardedBackend: membership changes)
REFUSED_WITH_SHARDS = {"member": "membership changes are refused by a cluster of more than one shard"}


def shard_args(cfg: ChaosConfig) -> list[str]:
    """The members' shard flags: the bank's accounts split evenly over the groups; the server's
    default split (``--shards K``) for the other workloads."""
    if cfg.shards <= 1:
        return []
    if cfg.workload == "bank":
        from conclave.chaos.bank import bank_split_keys
        return ["--shard-split-keys", ",".join(bank_split_keys(cfg.accounts, cfg.shards))]
    return ["--shards", str(cfg.shards)]


def usable_nemeses(cfg: ChaosConfig, say: Callable[[str], None]) -> tuple[str, ...]:
    """``cfg.nemesis`` without the ones the cluster's shape refuses (each skipped with its reason)."""
    if cfg.shards <= 1:
        return cfg.nemesis
    kept = []
    for n in cfg.nemesis:
        if n in REFUSED_WITH_SHARDS:
            say(f"nemesis {n} skipped with --shards {cfg.shards}: {REFUSED_WITH_SHARDS[n]}")
        else:
            kept.append(n)
    return tuple(kept)


def run_chaos(cfg: ChaosConfig, say: Callable[[str], None] = print) -> tuple[int, dict[str, Any]]:
    removed = cleanup_leftovers()
    if removed:
        say(f"cleanup: removed what earlier runs left: {', '.join(removed)}")
    out = cfg.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="conclave-chaos-")) if out is None else out / "members"
    cluster = ChaosCluster(root, cfg.nodes, mode=cfg.mode, heartbeat_ms=cfg.heartbeat_ms,
                           election_ms=cfg.election_ms, grpc_engine=cfg.grpc_engine,
                           tmpfs_mb=256 if "disk" in cfg.nemesis else 0, extra_args=shard_args(cfg),
                           shards=cfg.shards)
    if cluster.fallback_reason:
        say(f"network namespaces unavailable ({cluster.fallback_reason}): members on 127.0.0.1 behind the peer proxy")
    schedule = make_schedule(cfg.seed, usable_nemeses(cfg, say), cfg.time, cfg.interval, cfg.nodes,
                             pause_s=max(3.0, 2.5 * cfg.election_ms / 1000))
    recorder = Recorder(0.0)
    workload: Workload | None = None
    nemesis: Nemesis | None = None
    phases: dict[str, float] = {}
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(_sig: int, _frm: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    try:
        cluster.setup()
        say(f"run {cluster.run_id}: {cfg.nodes} members ({cluster.mode} mode"
            f"{f', {cfg.shards} shards' if cfg.shards > 1 else ''}), seed {cfg.seed}, "
            f"{len(schedule)} faults scheduled, workload {cfg.workload}, {cfg.clients} clients")
        cluster.start()
        workload = WORKLOADS[cfg.workload](cluster.endpoints(), cluster.native_endpoints(), recorder, cfg.clients,
                                           cfg.seed, pool=KeyPool(f"{cfg.workload}/", cfg.keys, cfg.ops_per_key))
        workload.current_endpoints = cluster.endpoints
        if isinstance(workload, BankWorkload):
            workload.accounts = cfg.accounts
            workload.splits = bank_split_keys(cfg.accounts, cfg.shards) if cfg.shards > 1 else []
        asyncio.run(workload.setup())
        t0 = time.monotonic()
        recorder.t0 = t0
        nemesis = Nemesis(cluster, schedule, t0, say, cfg.seed)

        async def main() -> None:
            assert workload is not None and nemesis is not None
            workload.stop = asyncio.Event()
            wl = asyncio.create_task(workload.run())

            async def progress() -> None:
                while True:
                    await asyncio.sleep(5)
                    s = workload.stats
                    say(f"[{time.monotonic() - t0:6.1f}s] ops ok {s.ok} fail {s.fail} info {s.info}, "
                        f"keys {workload.pool.next_id}")

            prog = asyncio.create_task(progress())
            try:
                nem = asyncio.create_task(nemesis.run())
                await asyncio.sleep(max(0.0, cfg.time - (time.monotonic() - t0)))
                nem.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await nem
                await nemesis.heal_all()
                phases["healed"] = time.monotonic() - t0
                say(f"[{phases['healed']:6.1f}s] every fault healed; quiet period of {cfg.quiet:g}s")
                await asyncio.sleep(cfg.quiet)
                # recovery may take longer than the quiet period: wait for it, up to the bound
                limit = phases["healed"] + cfg.recovery_timeout
                while time.monotonic() - t0 < limit and not _write_after(recorder, phases["healed"]):
                    await asyncio.sleep(0.5)
                workload.stop.set()
                try:
                    await asyncio.wait_for(wl, timeout=30)
                except TimeoutError:
                    wl.cancel()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    say("a client task was cancelled under it (see client_spurious_cancellations)")
                phases["stopped"] = time.monotonic() - t0
                await workload.finish()
            finally:
                prog.cancel()
                wl.cancel()
                with contextlib.suppress(BaseException):
                    await wl

        asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: healing and removing the cluster")
    finally:
        if nemesis is not None:
            with contextlib.suppress(Exception):
                asyncio.run(nemesis.heal_all())
        cluster.teardown()
        signal.signal(signal.SIGTERM, old_term)
    duration = time.monotonic() - recorder.t0 if recorder.t0 else 0.0
    summary = _analyse(cfg, cluster, recorder, workload, nemesis, phases, duration, interrupted, say)
    if out is not None:
        _write_outputs(out, summary, recorder, root)
    elif root.exists():
        shutil.rmtree(root, ignore_errors=True)
    rc = 0 if summary["verdict"] == "valid" else 1 if summary["verdict"] == "violation" else 2
    return rc, summary


def _write_after(recorder: Recorder, healed_s: float) -> bool:
    t = healed_s * analysis.US
    invoked: dict[int, int] = {}
    for e in reversed(recorder.events):
        if e["time"] < t:
            break
        if e["type"] == "ok" and e["f"] in analysis.WRITES:
            invoked[e["process"]] = e["time"]
    return bool(invoked)


def _analyse(cfg: ChaosConfig, cluster: ChaosCluster, recorder: Recorder, workload: Workload | None,
             nemesis: Nemesis | None, phases: dict[str, float], duration: float, interrupted: bool,
             say: Callable[[str], None]) -> dict[str, Any]:
    events = recorder.events
    ops = analysis.pair_ops(events)
    model = WORKLOADS[cfg.workload].model
    findings = workload.judge(ops) if workload is not None else Findings()
    if model is not None:
        say(f"checking {len(ops)} operations on {len({o.key for o in ops})} keys with the {model} model")
        checked = analysis.check_history(events, model, cfg.check_budget)
    else:
        checked = analysis.Checked("n/a", None, None, 0.0, 0, error="no checker model: the workload's own checks")
    lost = findings.lost
    if nemesis is not None:
        findings.violations.extend(nemesis.findings)
    records = [r.as_dict() for r in (nemesis.records if nemesis else [])]
    heals = [float(r["end"]) for r in records if r["end"] is not None and not r["skipped"]]  # type: ignore[arg-type]
    rec = analysis.recovery(ops, heals)
    k = 0
    for r in records:
        if r["end"] is not None and not r["skipped"]:
            r["recovery_s"] = rec[k]
            k += 1
    final_heal = phases.get("healed")
    final_recovery = analysis.recovery(ops, [final_heal])[0] if final_heal is not None else None
    counts = {s: sum(1 for o in ops if o.status == s) for s in ("ok", "fail", "info")}
    recovered = final_recovery is not None and final_recovery <= cfg.recovery_timeout
    quiet_bad = 0
    if final_heal is not None and final_recovery is not None:
        settle = (final_heal + final_recovery + 5.0) * analysis.US
        quiet_bad = sum(1 for o in ops if o.call >= settle and o.status == "info")
    if (checked.verdict == "not linearizable" or lost or findings.violations
            or (not interrupted and final_heal is not None and not recovered)):
        verdict = "violation"
    elif checked.verdict in ("linearizable", "n/a") and not interrupted:
        verdict = "valid"
    else:
        verdict = "unknown"
    worst = max((r for r in rec if r is not None), default=None)
    windows = [(float(r["start"]), float(r["end"])) for r in records  # type: ignore[arg-type]
               if r["end"] is not None and not r["skipped"]]
    in_fault = sum(e - s for s, e in windows)
    ok_in = sum(1 for o in ops if o.status == "ok" and o.ret is not None
                and any(s * analysis.US <= o.ret <= e * analysis.US for s, e in windows))
    ok_all = counts["ok"]
    rest_s = max(duration - in_fault, 1e-9)
    summary: dict[str, Any] = {
        "verdict": verdict,
        "seed": cfg.seed,
        "run_id": cluster.run_id,
        "rerun": cfg.rerun(),
        "workload": cfg.workload,
        "checker": checked.verdict + (f" ({checked.error})" if checked.error else ""),
        "checker_seconds": round(checked.seconds, 2),
        "keys": checked.keys,
        "failing_keys": checked.failing,
        "unknown_keys": checked.unknown,
        "nodes": cfg.nodes,
        "mode": cluster.mode,
        "grpc_engine": cfg.grpc_engine,
        "shards": cfg.shards,
        "duration_s": round(duration, 1),
        "ops": len(ops),
        "ok": counts["ok"], "fail": counts["fail"], "info": counts["info"],
        "faults_injected": sum(1 for r in records if not r["skipped"]),
        "faults_skipped": sum(1 for r in records if r["skipped"]),
        "worst_recovery_s": worst,
        "ok_per_s_during_faults": round(ok_in / in_fault, 1) if in_fault else None,
        "ok_per_s_outside_faults": round((ok_all - ok_in) / rest_s, 1),
        "longest_gap_without_ok_s": analysis.longest_gap(ops, 0.0, duration),
        "faults_not_recovered": sum(1 for r in records if r.get("end") is not None and not r["skipped"]
                                    and r.get("recovery_s") is None),
        "recovery_after_final_heal_s": final_recovery,
        "info_after_recovery": quiet_bad,
        "lost_acknowledged_writes": len(lost),
        "violations": findings.violations[:50],
        **{f"{cfg.workload}_{k}": v for k, v in findings.facts.items()},
        "client_spurious_cancellations": workload.spurious_cancellations if workload is not None else 0,
        "interrupted": interrupted,
        "faults": records,
        "lost": lost,
    }
    summary["_checked"] = checked
    summary["_ops"] = ops
    return summary


def _write_outputs(out: Path, summary: dict[str, Any], recorder: Recorder, root: Path) -> None:
    recorder.write(out / "history.jsonl")
    for log in root.glob("*.log"):
        shutil.copy(log, out / log.name)
    shutil.rmtree(root, ignore_errors=True)
    checked: analysis.Checked = summary["_checked"]
    ops: list[analysis.Op] = summary["_ops"]
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    (out / "faults.json").write_text(json.dumps(public["faults"], indent=1))
    (out / "summary.json").write_text(json.dumps(public, indent=1, default=str))
    viewer = None
    if checked.result is not None and checked.history is not None:
        with contextlib.suppress(Exception):
            from conclave.verify.model import model_named
            from conclave.verify.viewer import render_html
            model = model_named(str(WORKLOADS[summary["workload"]].model))
            viewer = render_html(checked.history, checked.result, model)
    rows = analysis.series(ops, int(summary["duration_s"]) + 1)
    (out / "report.html").write_text(report.render(public, ops, rows, viewer), encoding="utf-8")
