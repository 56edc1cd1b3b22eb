"""`conclave status --watch`: a live terminal view of the cluster, refreshed every second.

Theory of operation: every refresh asks each endpoint for ``Maintenance.Status`` (member id,
leader, term, raft and applied index, revision, database size, alarms) and scrapes the member's
``/metrics`` on its advertised client URL (the client port serves HTTP/1.1 beside gRPC). Two
figures come from the scrape, as differences between refreshes: ops/s (the growth of
``etcd_mvcc_{put,range,delete,txn}_total`` over the time between two scrapes) and the fsync
p99 (``etcd_disk_wal_fsync_duration_seconds`` over the last ``WINDOW`` refreshes, interpolated
inside a bucket as Prometheus' ``histogram_quantile`` does). A member that does not answer shows
its error in its row; the others go on. The table is drawn with ``rich``'s ``Live``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

WINDOW = 10  # refreshes the fsync p99 is computed over
OPS_COUNTERS = ("etcd_mvcc_put_total", "etcd_mvcc_range_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total")
FSYNC = "etcd_disk_wal_fsync_duration_seconds"
SCRAPE_TIMEOUT_S = 1.0


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative ``(upper bound, count)`` buckets (sorted, +Inf last), with
    linear interpolation inside the bucket, as Prometheus' histogram_quantile; None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the highest finite bound, as Prometheus answers
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


@dataclass(slots=True)
class Scrape:
    at: float
    ops_total: float
    fsync: list[tuple[float, float]]  # cumulative buckets


def parse_scrape(text: str, at: float) -> Scrape:
    ops = 0.0
    fsync: list[tuple[float, float]] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in OPS_COUNTERS:
                ops += s.value
            elif s.name == FSYNC + "_bucket":
                fsync.append((float(s.labels["le"]), s.value))
    fsync.sort()
    return Scrape(at, ops, fsync)


@dataclass(slots=True)
class MemberView:
    """What the view remembers of one endpoint between refreshes."""

    endpoint: str
    scrapes: deque[Scrape] = field(default_factory=lambda: deque(maxlen=WINDOW + 1))
    status: Any = None
    error: str = ""
    metrics_url: str = ""

    def ops_per_s(self) -> float | None:
        if len(self.scrapes) < 2:
            return None
        a, b = self.scrapes[-2], self.scrapes[-1]
        return (b.ops_total - a.ops_total) / (b.at - a.at) if b.at > a.at else None

    def fsync_p99(self) -> float | None:
        if len(self.scrapes) < 2:
            return None
        first, last = self.scrapes[0].fsync, self.scrapes[-1].fsync
        if len(first) != len(last):
            return None
        delta = [(le, c - c0) for (le, c), (_, c0) in zip(last, first, strict=True)]
        return quantile(0.99, delta)


def _metrics_url(client_url: str) -> str:
    url = client_url if "://" in client_url else "http://" + client_url
    return url.rstrip("/") + "/metrics"


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
        return str(resp.read().decode())


def refresh(client: Any, views: list[MemberView], names: dict[int, str], urls: dict[int, str]) -> None:
    """One round: Status from every endpoint, then each member's /metrics."""
    for v in views:
        try:
            v.status = client.status(v.endpoint)
            v.error = ""
        except Exception as exc:
            v.status = None
            v.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        url = urls.get(v.status.member_id)
        if url:
            v.metrics_url = url
        if not v.metrics_url:
            continue
        with contextlib.suppress(Exception):  # ops/s and fsync p99 show "-" without reachable metrics
            v.scrapes.append(parse_scrape(_scrape(v.metrics_url), time.monotonic()))


def _members(client: Any) -> tuple[dict[int, str], dict[int, str]]:
    try:
        members = client.members()
    except Exception:
        return {}, {}
    names = {m.id: m.name for m in members}
    urls = {m.id: _metrics_url(m.client_urls[0]) for m in members if m.client_urls}
    return names, urls


def _size(n: float) -> str:
    """Bytes as `etcdctl endpoint status` prints them (kB = 1000 B)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def render(views: list[MemberView], names: dict[int, str]) -> Any:
    from rich.table import Table

    leaders = {v.status.leader for v in views if v.status is not None and v.status.leader}
    leader = next(iter(leaders)) if len(leaders) == 1 else 0
    title = f"leader {names.get(leader, '') or f'{leader:x}'}" if leader else (
        "no leader" if not leaders else "members disagree on the leader")
    table = Table(title=f"Conclave cluster: {title}  ({time.strftime('%H:%M:%S')})")
    for col in ("NAME", "ID", "ENDPOINT", "ROLE", "TERM", "RAFT INDEX", "APPLIED", "REVISION", "OPS/S",
                "FSYNC P99", "DB SIZE", "ERRORS"):
        table.add_column(col, justify="right" if col in ("TERM", "RAFT INDEX", "APPLIED", "REVISION", "OPS/S",
                                                           "FSYNC P99", "DB SIZE") else "left")
    for v in views:
        s = v.status
        if s is None:
            table.add_row("", "", v.endpoint, "[red]unreachable[/red]", "", "", "", "", "", "", "", v.error)
            continue
        role = "learner" if s.is_learner else ("[bold green]leader[/bold green]" if s.leader == s.member_id
                                               else "follower" if s.leader else "[red]no leader[/red]")
        ops, p99 = v.ops_per_s(), v.fsync_p99()
        table.add_row(names.get(s.member_id, ""), f"{s.member_id:x}", v.endpoint, role, str(s.raft_term),
                      str(s.raft_index), str(s.raft_applied_index), str(s.revision),
                      "-" if ops is None else f"{ops:,.0f}", "-" if p99 is None else f"{1000 * p99:.1f} ms",
                      _size(s.db_size), ", ".join(s.errors))
    return table


def watch(client: Any, args: argparse.Namespace) -> int:
    """Refresh every ``args.interval`` seconds until interrupted (or ``args.watch_count`` times)."""
    from rich.console import Console
    from rich.live import Live

    views = [MemberView(ep) for ep in client.endpoints]
    names, urls = _members(client)
    console = Console()
    if not console.is_terminal:  # a pipe or a log: room for every column
        console = Console(width=max(console.width, 150))
    done = 0
    try:
        with Live(render(views, names), console=console, refresh_per_second=4, auto_refresh=False) as live:
            next_at = time.monotonic()
            while True:
                refresh(client, views, names, urls)
                live.update(render(views, names), refresh=True)
                done += 1
                if args.watch_count and done >= args.watch_count:
                    break
                if done % WINDOW == 0 or not names:  # members may have changed
                    names, urls = _members(client)
                next_at += args.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        pass
    return 0 if any(v.status is not None for v in views) else 1
