"""/health, /livez, /readyz and /metrics as handlers, on a fake backend (no sockets, no sleeps
beyond a short read timeout)."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conclave.api.health import Health, register_routes
from conclave.api.http import HttpRouter
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.wire.contract import StatusInfo

from .fake_backend import FakeBackend


class Backend(FakeBackend):
    """The fake member, with alarms, a learner flag and a read that can fail or hang."""

    def __init__(self) -> None:
        super().__init__()
        self.alarms: list[str] = []
        self.learner = False
        self.read_error: BaseException | None = None
        self.read_hangs = False
        self.reads: list[bool] = []  # the serializable flag of each health read

    async def status(self) -> StatusInfo:
        base = await super().status()
        errors = tuple(f"memberID:{self.member_id} alarm:{a}" for a in self.alarms)
        return StatusInfo(base.version, base.db_size, base.db_size_in_use, base.leader, base.raft_index,
                          base.raft_term, base.raft_applied_index, is_learner=self.learner, errors=errors)

    async def range(self, req: kv.RangeRequest) -> kv.RangeResponse:
        self.reads.append(req.serializable)
        if self.read_hangs:
            await asyncio.sleep(30)
        if self.read_error is not None and not req.serializable:
            raise self.read_error
        return await super().range(req)


def call(router: HttpRouter, path: str, method: str = "GET", headers: list[tuple[str, str]] | None = None
         ) -> tuple[int, dict[str, str], str]:
    status, hdrs, body = asyncio.run(router(method, path, headers or [], b""))
    assert isinstance(body, bytes)
    return status, dict(hdrs), body.decode()


def make(timeout_s: float = 1.0) -> tuple[HttpRouter, Backend, Health]:
    backend = Backend()
    health = Health(backend, timeout_s=timeout_s, registry=CollectorRegistry())
    router = HttpRouter()
    register_routes(router, health)
    return router, backend, health


def test_health_true_on_a_healthy_member() -> None:
    router, backend, _ = make()
    status, hdrs, body = call(router, "/health")
    assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})
    assert hdrs["content-type"] == "application/json"
    assert backend.reads == [False]  # linearizable by default


def test_health_false_without_leader_and_serializable_skips_it() -> None:
    router, backend, _ = make()
    backend.leader = False
    status, _, body = call(router, "/health")
    assert (status, json.loads(body)) == (503, {"health": "false", "reason": "RAFT NO LEADER"})
    status, _, body = call(router, "/health?serializable=true")
    assert (status, json.loads(body)["health"]) == (200, "true")
    assert backend.reads == [True]


def test_health_false_on_an_alarm_unless_excluded() -> None:
    router, backend, _ = make()
    backend.alarms = ["NOSPACE"]
    status, _, body = call(router, "/health")
    assert (status, json.loads(body)) == (503, {"health": "false", "reason": "ALARM NOSPACE"})
    status, _, body = call(router, "/health?exclude=NOSPACE")
    assert (status, json.loads(body)["health"]) == (200, "true")
    backend.alarms = ["CORRUPT"]
    assert json.loads(call(router, "/health?exclude=NOSPACE")[2])["reason"] == "ALARM CORRUPT"


def test_health_false_when_the_read_fails_or_times_out() -> None:
    router, backend, _ = make(timeout_s=0.2)
    backend.read_error = kverr.Timeout()
    status, _, body = call(router, "/health")
    assert status == 503
    assert json.loads(body)["reason"] == "RANGE ERROR:etcdserver: request timed out"
    backend.read_error = None
    backend.read_hangs = True
    status, _, body = call(router, "/health")
    assert status == 503 and json.loads(body)["reason"].startswith("RANGE ERROR:")


def test_health_counts_and_refuses_post() -> None:
    router, backend, health = make()
    call(router, "/health")
    backend.leader = False
    call(router, "/health")
    call(router, "/health")
    assert (health.success_total, health.failures_total) == (1, 2)
    status, hdrs, _ = call(router, "/health", method="POST")
    assert status == 405 and hdrs["allow"] == "GET"
    fams = {f.name: f for f in text_string_to_metric_families(call(router, "/metrics")[2])}
    assert fams["etcd_server_health_success"].samples[0].value == 1
    assert fams["etcd_server_health_failures"].samples[0].value == 2


def test_livez_and_readyz() -> None:
    router, backend, _ = make()
    assert call(router, "/livez")[:3:2] == (200, "ok\n")
    status, hdrs, body = call(router, "/readyz?verbose")
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    assert body.splitlines() == ["[+]data_corruption ok", "[+]serializable_read ok", "[+]linearizable_read ok",
                                 "[+]non_learner ok", "readyz check passed"]
    backend.learner = True
    backend.read_error = kverr.NoLeader()
    status, _, body = call(router, "/readyz")
    assert status == 503
    assert "[-]linearizable_read failed: etcdserver: no leader" in body.splitlines()
    assert "[-]non_learner failed: this member is a learner" in body.splitlines()
    assert body.endswith("readyz check failed\n")
    # the serializable read still passes: the member is alive
    assert call(router, "/livez")[0] == 200
    status, _, body = call(router, "/readyz?exclude=linearizable_read&exclude=non_learner")
    assert status == 200 and body == "ok\n"
    status, _, body = call(router, "/readyz?exclude=non_learner&verbose")
    assert status == 503 and "[+]non_learner excluded: ok" in body


def test_readyz_sub_paths() -> None:
    router, backend, _ = make()
    backend.alarms = ["CORRUPT"]
    assert call(router, "/readyz/serializable_read")[::2] == (200, "ok\n")
    status, _, body = call(router, "/readyz/data_corruption")
    assert (status, body) == (503, "[-]data_corruption failed: data corruption alarm is active\n")
    assert call(router, "/readyz/no_such_check")[0] == 404
    assert call(router, "/livez/serializable_read")[0] == 200
    assert call(router, "/livez/linearizable_read")[0] == 404  # not a livez check
    fams = {f.name: f for f in text_string_to_metric_families(call(router, "/metrics")[2])}
    gauge = {(s.labels["type"], s.labels["name"]): s.value for s in fams["etcd_server_healthcheck"].samples}
    assert gauge[("readyz", "data_corruption")] == 0 and gauge[("readyz", "serializable_read")] == 1


def test_metrics_content_types() -> None:
    router, _, _ = make()
    status, hdrs, body = call(router, "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4")
    status, hdrs, body = call(router, "/metrics", headers=[("accept", "application/openmetrics-text; version=1.0.0")])
    assert hdrs["content-type"].startswith("application/openmetrics-text") and body.endswith("# EOF\n")
