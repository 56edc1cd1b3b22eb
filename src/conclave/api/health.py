"""``/metrics``, ``/health``, ``/livez`` and ``/readyz``: what probes and scrapers ask a member.

Theory of operation: each endpoint is an ``HttpHandler`` (``(method, path, headers, body) ->
(status, headers, body)``, :mod:`conclave.api.http`), registered on a router by
:func:`register_routes`; the same router serves the client port (HTTP/1.1 beside gRPC on the
compiled edge), ``--listen-client-http-urls`` and ``--listen-metrics-urls``. The checks talk to
the member only through ``wire.contract.EtcdBackend`` (``status()`` for alarms and the learner
flag, ``has_leader()``, ``range()`` for a read), never to the server's internals.

``/health`` follows etcd 3.5: GET only; JSON ``{"health":"true","reason":""}`` with 200, or
``"false"`` with a reason and 503 when an alarm is active (``?exclude=NOSPACE`` ignores one),
when there is no leader, or when a one-key, keys-only Range fails within the request timeout.
``?serializable=true`` skips the leader check and makes that Range serializable. Results feed
``etcd_server_health_success`` / ``etcd_server_health_failures``.

``/livez`` and ``/readyz`` follow etcd 3.6 (Kubernetes' healthz convention): a list of named
checks (livez: ``serializable_read``; readyz: ``data_corruption``, ``serializable_read``,
``linearizable_read``, ``non_learner``), ``ok`` when all pass, 503 listing ``[-]name failed:
why`` otherwise, ``?verbose`` lists every check, ``?exclude=name`` (repeatable) skips one, and
``/readyz/<name>`` runs that check alone. Each result feeds ``etcd_server_healthcheck`` (gauge,
1 = passing) and ``etcd_server_healthchecks_total{status}``.

``/metrics`` is prometheus_client's exposition of the member's registry (the text format, or
OpenMetrics when the scraper asks for it). The families are collected on the event loop (the
collectors read the member's state, which only that thread may touch) and formatted in a worker
thread: formatting is most of a scrape's cost (the ~800 pre-initialised gRPC series), and the
loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.wire.contract import EtcdBackend

Headers = list[tuple[str, str]]
Result = tuple[int, Headers, bytes]
Check = Callable[[], Awaitable[None]]

JSON = [("content-type", "application/json")]
TEXT = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]
HEALTH_KEY = b"health"
ALARM_REASONS = {"NOSPACE": "ALARM NOSPACE", "CORRUPT": "ALARM CORRUPT"}
LIVEZ_CHECKS = ("serializable_read",)
READYZ_CHECKS = ("data_corruption", "serializable_read", "linearizable_read", "non_learner")


class CheckFailed(Exception):
    """A check's failure; the message is what the probe shows."""


def _query(path: str) -> dict[str, list[str]]:
    return parse_qs(path.partition("?")[2], keep_blank_values=True)


def _true(q: dict[str, list[str]], name: str) -> bool:
    return any(v.lower() in ("true", "1", "") for v in q.get(name, ()))


def _not_get(method: str) -> Result | None:
    if method != "GET":
        return 405, [*TEXT, ("allow", "GET")], b"Method Not Allowed\n"
    return None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, kverr.EtcdError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return kverr.Timeout().message
    return f"{type(exc).__name__}: {exc}"


def _alarm_names(errors: tuple[str, ...]) -> list[str]:
    """The alarm types in Maintenance.Status's errors (``memberID:<id> alarm:<NAME>``)."""
    return [e.rpartition("alarm:")[2] for e in errors if "alarm:" in e]


class Health:
    """The endpoints of one member (see the module docstring)."""

    def __init__(self, backend: EtcdBackend, *, timeout_s: float, registry: CollectorRegistry) -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self.registry = registry
        self.success_total = 0
        self.failures_total = 0
        registry.register(_HealthCounters(self))
        self._check_gauge = Gauge("etcd_server_healthcheck", "The result of each kind of healthcheck.",
                                  ["type", "name"], registry=registry)
        self._check_total = Counter("etcd_server_healthchecks_total", "The total number of each kind of "
                                    "healthcheck.", ["type", "name", "status"], registry=registry)
        self.checks: dict[str, Check] = {
            "data_corruption": self._data_corruption,
            "serializable_read": lambda: self._read(serializable=True),
            "linearizable_read": lambda: self._read(serializable=False),
            "non_learner": self._non_learner,
        }

    # ------------------------------------------------------------------ checks

    async def _read(self, *, serializable: bool) -> None:
        req = kv.RangeRequest(key=HEALTH_KEY, keys_only=True, limit=1, serializable=serializable)
        try:
            await asyncio.wait_for(self.backend.range(req), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise CheckFailed(_error_text(exc)) from None

    async def _data_corruption(self) -> None:
        status = await self.backend.status()
        if "CORRUPT" in _alarm_names(status.errors):
            raise CheckFailed("data corruption alarm is active")

    async def _non_learner(self) -> None:
        status = await self.backend.status()
        if status.is_learner:
            raise CheckFailed("this member is a learner")

    # ------------------------------------------------------------------ /health

    async def health_status(self, *, serializable: bool, exclude: set[str]) -> tuple[bool, str]:
        """(healthy, reason) as etcd 3.5's /health decides them."""
        status = await self.backend.status()
        for name in _alarm_names(status.errors):
            if name not in exclude:
                return False, ALARM_REASONS.get(name, "ALARM UNKNOWN")
        if not serializable and not self.backend.has_leader():
            return False, "RAFT NO LEADER"
        try:
            await self._read(serializable=serializable)
        except CheckFailed as exc:
            return False, f"RANGE ERROR:{exc}"
        return True, ""

    async def health(self, method: str, path: str, headers: Headers, body: Any) -> Result:
        refused = _not_get(method)
        if refused is not None:
            return refused
        q = _query(path)
        exclude = {v for vs in q.get("exclude", ()) for v in vs.split(",") if v}
        ok, reason = await self.health_status(serializable=_true(q, "serializable"), exclude=exclude)
        if ok:
            self.success_total += 1
        else:
            self.failures_total += 1
        out = json.dumps({"health": "true" if ok else "false", "reason": reason}, separators=(",", ":"))
        return (200 if ok else 503), JSON, out.encode()

    # ------------------------------------------------------------------ /livez, /readyz

    def _probe(self, kind: str, names: tuple[str, ...]) -> Callable[[str, str, Headers, Any], Awaitable[Result]]:
        async def handler(method: str, path: str, headers: Headers, body: Any) -> Result:
            refused = _not_get(method)
            if refused is not None:
                return refused
            base = path.partition("?")[0].rstrip("/")
            q = _query(path)
            if base != f"/{kind}":  # /readyz/<check>: that check alone
                name = base.rpartition("/")[2]
                if name not in names:
                    return 404, TEXT, b"404 page not found\n"
                err = await self._run(kind, name)
                if err is None:
                    return 200, TEXT, b"ok\n"
                return 503, TEXT, f"[-]{name} failed: {err}\n".encode()
            exclude = {v for vs in q.get("exclude", ()) for v in vs.split(",") if v}
            lines, healthy = [], True
            for name in names:
                if name in exclude:
                    lines.append(f"[+]{name} excluded: ok")
                    continue
                err = await self._run(kind, name)
                if err is None:
                    lines.append(f"[+]{name} ok")
                else:
                    healthy = False
                    lines.append(f"[-]{name} failed: {err}")
            listing = "".join(line + "\n" for line in lines)
            if not healthy:
                return 503, TEXT, f"{listing}{kind} check failed\n".encode()
            if "verbose" in q:
                return 200, TEXT, f"{listing}{kind} check passed\n".encode()
            return 200, TEXT, b"ok\n"

        return handler

    async def _run(self, kind: str, name: str) -> str | None:
        """Run one check; its error text, or None when it passes. Feeds the check metrics."""
        try:
            await self.checks[name]()
            err = None
        except CheckFailed as exc:
            err = str(exc)
        self._check_gauge.labels(kind, name).set(1 if err is None else 0)
        self._check_total.labels(kind, name, "success" if err is None else "failure").inc()
        return err

    # ------------------------------------------------------------------ /metrics

    async def metrics(self, method: str, path: str, headers: Headers, body: Any) -> Result:
        refused = _not_get(method)
        if refused is not None:
            return refused
        accept = next((v for k, v in headers if k.lower() == "accept"), "")
        encoder, content_type = choose_encoder(accept)
        collected = _Collected(list(self.registry.collect()))
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, collected)
        return 200, [("content-type", content_type)], body


class _Collected:
    """Families collected already, handed to an encoder as a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class _HealthCounters(Collector):
    """etcd's two /health counters, under their exact names. etcd's are counters without the
    ``_total`` suffix, which prometheus_client always appends to a counter: they go out untyped,
    so every query written for etcd finds them."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> list[Metric]:
        out = []
        for name, doc, value in (
            ("etcd_server_health_success", "The total number of successful health checks", self.health.success_total),
            ("etcd_server_health_failures", "The total number of failed health checks", self.health.failures_total),
        ):
            m = Metric(name, doc, "unknown")
            m.add_sample(name, {}, value)
            out.append(m)
        return out


def register_routes(router: Any, health: Health) -> None:
    """Add the endpoints to an ``api.http.HttpRouter``."""
    router.add("/metrics", health.metrics)
    router.add("/health", health.health)
    for kind, names in (("livez", LIVEZ_CHECKS), ("readyz", READYZ_CHECKS)):
        handler = health._probe(kind, names)
        router.add(f"/{kind}", handler)
        router.add(f"/{kind}/", handler)
