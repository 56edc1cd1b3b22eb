"""What a run's history says: per-key verdicts, lost acknowledged writes, availability, rates.

Theory of operation. The history (docs/history-format.md, times in microseconds from the run's
start) is checked by ``conclave.verify`` with the workload's model (each key alone, within a time
and memory budget). The rest is arithmetic over the same events: a *lost acknowledged write* is a
write or cas that was acknowledged (``ok``) and invoked after the write of the key's final value
had completed, so it should have been overwritten yet was not (values are unique, so the final
value names its write); *recovery* after a fault is the time from its healing to the completion
of the first acknowledged write invoked after it; rates and latencies are per second of the run.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from conclave.verify.checker import CheckResult, Limits, Verdict, check
from conclave.verify.formats import load
from conclave.verify.history import History
from conclave.verify.model import model_named

US = 1_000_000
WRITES = frozenset({"write", "cas", "append", "put", "acquire", "fenced-write", "grant", "transfer"})


@dataclass
class Op:
    process: int
    f: str
    key: str
    value: Any
    status: str  # ok | fail | info
    call: int
    ret: int | None
    out: Any = None


def pair_ops(events: list[dict[str, Any]]) -> list[Op]:
    open_: dict[int, dict[str, Any]] = {}
    ops: list[Op] = []
    for e in events:
        if e["type"] == "invoke":
            open_[e["process"]] = e
            continue
        inv = open_.pop(e["process"], None)
        if inv is None:
            continue
        ops.append(Op(e["process"], e["f"], e["key"], inv["value"], e["type"], inv["time"],
                      None if e["type"] == "info" else e["time"], e["value"]))
    for inv in open_.values():
        ops.append(Op(inv["process"], inv["f"], inv["key"], inv["value"], "info", inv["time"], None))
    ops.sort(key=lambda o: o.call)
    return ops


@dataclass
class Checked:
    verdict: str
    result: CheckResult | None
    history: History | None
    seconds: float
    keys: int
    failing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    error: str = ""


def check_history(events: list[dict[str, Any]], model_name: str, budget_s: float = 120.0,
                  memory_mb: int = 2048) -> Checked:
    text = "\n".join(json.dumps(e) for e in events)
    started = time.monotonic()
    try:
        history = load(text, "history.jsonl", "json")
        model = model_named(model_name)
        deadline = started + budget_s
        result = check(history, model, Limits(should_stop=lambda: time.monotonic() > deadline,
                                              memory_bytes_max=memory_mb << 20))
    except Exception as exc:  # a checker failure is reported as unknown, with its reason
        return Checked("unknown", None, None, time.monotonic() - started, 0, error=f"{type(exc).__name__}: {exc}")
    failing = [str(p.key) for p in result.partitions if p.verdict is Verdict.NOT_LINEARIZABLE]
    unknown = [str(p.key) for p in result.partitions if p.verdict is Verdict.UNKNOWN]
    return Checked(result.verdict.value, result, history, time.monotonic() - started, len(result.partitions),
                   failing, unknown, result.reason)


def lost_writes(ops: list[Op], final: dict[str, int | None]) -> list[dict[str, Any]]:
    """Acknowledged writes a final read shows were lost (see the module docstring)."""
    lost: list[dict[str, Any]] = []
    writes: dict[str, dict[Any, Op]] = {}
    for o in ops:
        if o.f == "write":
            writes.setdefault(o.key, {})[o.value] = o
        elif o.f == "cas" and isinstance(o.value, list):
            writes.setdefault(o.key, {})[o.value[1]] = o
    for key, v in final.items():
        by_value = writes.get(key, {})
        source = by_value.get(v) if v is not None else None
        if v is not None and source is None:
            lost.append({"key": key, "final": v, "why": "the final value was never written"})
            continue
        done = source.ret if source is not None else -1
        if done is None:
            continue  # written by an indeterminate op: its place is unknown
        for o in by_value.values():
            if o.status == "ok" and o.call > done and o is not source:
                lost.append({"key": key, "final": v, "lost": o.value, "acked_at_s": (o.ret or 0) / US})
    return lost


def recovery(ops: list[Op], heals: list[float]) -> list[float | None]:
    """Seconds from each heal to the first acknowledged write invoked after it (None: never)."""
    acked = sorted((o.call, o.ret) for o in ops if o.status == "ok" and o.f in WRITES and o.ret)
    out: list[float | None] = []
    for h in heals:
        t = h * US
        after = [ret for call, ret in acked if call >= t]
        out.append(round((min(after) - t) / US, 3) if after else None)
    return out


def longest_gap(ops: list[Op], start_s: float, end_s: float) -> float:
    """The longest stretch (seconds) within [start, end] with no acknowledged operation completing."""
    rets = sorted(o.ret for o in ops if o.status == "ok" and o.ret is not None)
    points = [start_s * US, *[r for r in rets if start_s * US <= r <= end_s * US], end_s * US]
    return round(max((b - a for a, b in itertools.pairwise(points)), default=0) / US, 3)


def series(ops: list[Op], seconds: int) -> list[dict[str, float]]:
    """Per second: operations ok / fail / info, and ok latency median and max (ms)."""
    rows: list[dict[str, Any]] = [{"t": s, "ok": 0, "fail": 0, "info": 0, "lat": []} for s in range(seconds + 1)]
    for o in ops:
        end = o.ret if o.ret is not None else o.call
        s = min(seconds, max(0, int(end // US)))
        rows[s][o.status] += 1
        if o.status == "ok" and o.ret is not None:
            rows[s]["lat"].append((o.ret - o.call) / 1000)
    out = []
    for r in rows:
        lat = sorted(r.pop("lat"))
        r["p50"] = lat[len(lat) // 2] if lat else 0.0
        r["max"] = lat[-1] if lat else 0.0
        out.append(r)
    return out
