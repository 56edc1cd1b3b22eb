"""Patroni (PostgreSQL high availability) on a 3-member DCS: etcd 3.4 and Conclave, same scenario.

Patroni speaks only etcd's JSON gateway (``etcd3:`` section: /version, /v3/kv, /v3/lease, /v3/watch).
The scenario, every step bounded in time:

1. two Patroni nodes bootstrap a primary and a streaming replica; a row written on the primary
   is read on the replica;
2. kill -9 of the primary's Patroni and of its PostgreSQL (the postmaster's process group): the
   replica takes the leader key (its REST API answers 200 on /primary) and is promoted
   (``pg_is_in_recovery()`` false) within ttl + loop_wait; both times from the kill are printed;
3. the old primary's Patroni is restarted and the node rejoins as a streaming replica
   (pg_rewind or a new clone, as Patroni decides) and reads a row written after the failover;
4. kill -9 of the DCS's Raft leader during normal operation, first made (MoveLeader) the member
   the primary's Patroni is connected to, so Patroni loses its connection and the leader at once:
   for ttl + 2 * loop_wait seconds, polled every 0.2 s, the primary stays primary, the replica
   stays a replica, the leader key is the same key (same create_revision, same value), and a row
   written afterwards replicates;
5. on the two DCS members left, a graceful stop (SIGTERM) of the primary's Patroni: it stops
   PostgreSQL and deletes its leader key, so the replica takes the key well before ttl and is
   promoted with every row.

Neither Patroni log (nor a Conclave member's) may hold a traceback: an answer Patroni cannot parse
would show there.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conclave.server.launcher import ProcessCluster, free_ports

try:
    import psycopg
except ImportError:  # the patroni_base fixture says so: a skip, or a failure under CI=true
    psycopg = None

from .conftest import (
    PatroniNode,
    Runner,
    dcs_get,
    dcs_leader,
    dcs_move_leader,
    http_json,
    make_node,
    missing,
    wait_until,
)

TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 2, 5  # Patroni's minimum ttl is 20 (smaller is raised to 20)
TIMING = {"ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT}
# Patroni's own bound on a failover is ttl + loop_wait: the leader key expires at most ttl after its
# last refresh, and the replica's next HA loop sees that. Its HA cycle then does its own work (DCS
# calls, pg_ctl promote) before /primary answers 200. On a quiet machine both DCSs gave 18.9-20.1 s;
# a CI run once failed the bare ttl + loop_wait with etcd as the DCS, so the assertions allow one
# such cycle on top (a DCS that did not expire the key would take a whole ttl more).
HA_CYCLE_S = 3
NAMESPACE = "/service/"


def gateway_hosts(cluster: ProcessCluster) -> tuple[list[str], bool]:
    """Where Patroni reaches each member's JSON gateway, and whether to pin Patroni to that list.

    etcd and Conclave's compiled edge serve it on the client port (Patroni may then use the member
    list's client URLs). Conclave's python engine cannot share the gRPC port: without the edge
    (or with CONCLAVE_PATRONI_GATEWAY=http, or =python to force that engine too), every member
    also listens with --listen-client-http-urls on a port of its own, and Patroni keeps to those
    (use_proxies).
    """
    if cluster.kind != "conclave":
        return cluster.endpoints, False
    from conclave.api.edge_server import IMPORT_ERROR

    mode = os.environ.get("CONCLAVE_PATRONI_GATEWAY", "client-port")
    assert mode in ("client-port", "http", "python"), f"CONCLAVE_PATRONI_GATEWAY={mode!r}"
    if not IMPORT_ERROR and mode == "client-port":
        return cluster.endpoints, False
    hosts = []
    for m, port in zip(cluster.members, free_ports(len(cluster.members)), strict=True):
        m.argv += ["--listen-client-http-urls", f"http://127.0.0.1:{port}"]
        if mode == "python":
            m.argv += ["--grpc-engine", "python"]
        hosts.append(f"127.0.0.1:{port}")
    return hosts, True


def sql(node: PatroniNode, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(host="127.0.0.1", port=node.pg_port, user="postgres", dbname="postgres",
                         password=node.passwords["superuser"], connect_timeout=3, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def try_sql(node: PatroniNode, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
    try:
        return sql(node, query, params)
    except psycopg.Error:
        return None


def role(node: PatroniNode) -> str | None:
    status, body = node.rest("/patroni")
    return body.get("role") if status == 200 and isinstance(body, dict) else None


def in_recovery(node: PatroniNode) -> bool | None:
    rows = try_sql(node, "select pg_is_in_recovery()")
    return rows[0][0] if rows else None


TRANSPORT_FAILURES = ("ReadTimeoutError", "NewConnectionError", "Connection refused", "MaxRetryError",
                      "Response ended prematurely")


def tracebacks(log: str) -> list[str]:
    """Each logged traceback with its chained causes, up to the next timestamped log line."""
    out: list[str] = []
    current: list[str] | None = None
    for line in log.splitlines():
        if line.startswith("Traceback") and current is None:
            current = [line]
        elif current is not None and line[:4].isdigit() and line[4:5] == "-":  # "2026-12-02 ..." ends it
            out.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    if current is not None:
        out.append("\n".join(current))
    return out


def test_tracebacks_split_and_transport_failures_are_told_apart() -> None:
    log = ("2026-12-02 16:07:50,000 INFO: ok\nTraceback (most recent call last):\n  File x\n"
           "urllib3.exceptions.ReadTimeoutError: Read timed out.\n\nDuring handling...\nTraceback (most recent "
           "call last):\netcd.EtcdException: POST /v3/kv/put request failed\n2026-12-02 16:07:52,028 INFO: next\n"
           "Traceback (most recent call last):\nKeyError: 'header'\n")
    found = tracebacks(log)
    assert len(found) == 2 and "EtcdException" in found[0] and "KeyError" in found[1]
    assert [any(m in t for m in TRANSPORT_FAILURES) for t in found] == [True, False]


def watch_promotion(node: PatroniNode, deadline: float) -> tuple[float | None, float | None]:
    """When node's Patroni first answers 200 on /primary (it holds the leader key) and when its
    PostgreSQL first says pg_is_in_recovery() false (promoted), polled together every 0.1 s on one
    open connection (a new connection per poll would add its own latency), bounded by deadline."""
    rest_at = sql_at = None
    conn = None
    try:
        while time.monotonic() < deadline and (rest_at is None or sql_at is None):
            if rest_at is None and node.rest("/primary")[0] == 200:
                rest_at = time.monotonic()
            if sql_at is None:
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(host="127.0.0.1", port=node.pg_port, user="postgres",
                                               dbname="postgres", password=node.passwords["superuser"],
                                               connect_timeout=2, autocommit=True)
                    row = conn.execute("select pg_is_in_recovery()").fetchone()
                    if row is not None and row[0] is False:
                        sql_at = time.monotonic()
                except psycopg.Error:
                    if conn is not None:
                        conn.close()
                    conn = None
            time.sleep(0.1)
    finally:
        if conn is not None:
            conn.close()
    return rest_at, sql_at


def is_primary(node: PatroniNode) -> bool:
    return node.rest("/primary")[0] == 200 and in_recovery(node) is False


def is_streaming_replica(node: PatroniNode, primary: PatroniNode) -> bool:
    if node.rest("/replica")[0] != 200 or in_recovery(node) is not True:
        return False
    rows = try_sql(primary, "select count(*) from pg_stat_replication where state = 'streaming' and "
                            "application_name = %s", (node.name,))
    return bool(rows and rows[0][0] == 1)


def has_row(node: PatroniNode, token: str) -> bool:
    rows = try_sql(node, "select count(*) from conclave_patroni where token = %s", (token,))
    return bool(rows and rows[0][0] == 1)


def logs(*nodes: PatroniNode) -> str:
    return "\n".join(f"--- {n.name} ({n.log_path}) ---\n{n.log_tail()}" for n in nodes)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("dcs", ["etcd", "conclave"])
def test_patroni_failover_and_dcs_leader_loss(dcs: str, patroni_base: tuple[Path, Runner, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    if dcs == "etcd" and shutil.which("etcd") is None:
        missing("etcd 3.4 (Debian's etcd-server) is not installed")
    base, runner, bin_dir = patroni_base
    started = time.monotonic()
    cluster = ProcessCluster(base / "dcs", 3, kind=dcs)  # in base: CONCLAVE_KEEP_PATRONI keeps its logs
    hosts, use_proxies = gateway_hosts(cluster)
    nodes = [make_node(base, runner, bin_dir, "pg0"), make_node(base, runner, bin_dir, "pg1")]
    pg0, pg1 = nodes
    scope = f"conclave-{uuid.uuid4().hex[:8]}"
    leader_key = f"{NAMESPACE}{scope}/leader"
    try:
        cluster.start()
        dcs_leader(cluster)
        # Patroni's first call: GET /version on a client URL, each part of etcdserver/etcdcluster an integer
        # (etcd answers etcdcluster "not_decided" for a moment after it starts: wait for the numbers)
        answers: list[tuple[int, Any]] = []

        def numeric_version() -> bool:
            answers.append(http_json(f"http://{hosts[0]}/version"))
            status, body = answers[-1]
            return status == 200 and isinstance(body, dict) and all(
                p.isdigit() for k in ("etcdserver", "etcdcluster") for p in str(body.get(k)).split("."))

        try:
            wait_until(numeric_version, 15, "GET /version", every=0.2)
        except AssertionError:
            raise AssertionError(f"{dcs} does not answer GET /version with numeric versions: {answers[-1]}") from None
        version = answers[-1][1]
        for n in nodes:
            n.write_config(scope, NAMESPACE, hosts, TIMING, use_proxies)

        dcs_s = time.monotonic() - started
        # 1. bootstrap: pg0 initialises the cluster and takes the leader key, pg1 clones it
        boot_from = time.monotonic()
        pg0.start()
        wait_until(lambda: is_primary(pg0), 120, f"pg0 to bootstrap as primary\n{logs(pg0)}", every=0.5)
        pg1.start()
        wait_until(lambda: is_streaming_replica(pg1, pg0), 120, f"pg1 to stream from pg0\n{logs(pg0, pg1)}",
                   every=0.5)
        sql(pg0, "create table conclave_patroni (token text primary key)")
        first = uuid.uuid4().hex
        sql(pg0, "insert into conclave_patroni values (%s)", (first,))
        wait_until(lambda: has_row(pg1, first), 30, "the row written on the primary to reach the replica")
        kv = dcs_get(cluster, leader_key)
        assert kv is not None and kv.value == b"pg0", f"leader key {leader_key}: {kv}"
        bootstrap_s = time.monotonic() - boot_from

        # 2. kill -9 of the primary's Patroni and PostgreSQL: pg1 must be promoted within ttl + loop_wait
        pg1_mark = pg1.log_path.stat().st_size
        pg0.kill_patroni()
        pg0.kill_postgres()
        killed = time.monotonic()
        rest_at, sql_at = watch_promotion(pg1, killed + TTL + LOOP_WAIT + 30)
        assert rest_at is not None and sql_at is not None, f"pg1 was not promoted (REST {rest_at}, SQL {sql_at})\n" \
            f"{logs(pg1)}"
        failover_s, writable_s = rest_at - killed, sql_at - killed
        with capsys.disabled():
            where = "its own --listen-client-http-urls port" if use_proxies else "the client port"
            print(f"\n[patroni/{dcs}] gateway on {where}, GET /version {version}; DCS up in {dcs_s:.1f}s, "
                  f"primary + replica bootstrapped in {bootstrap_s:.1f}s; "
                  f"failover after kill -9 of the primary: "
                  f"leader key taken (REST /primary 200) after {failover_s:.2f}s, promoted (pg_is_in_recovery() "
                  f"false) after {writable_s:.2f}s "
                  f"(ttl {TTL}, loop_wait {LOOP_WAIT}, retry_timeout {RETRY_TIMEOUT})")
        since_kill = pg1.log_path.read_bytes()[pg1_mark:].decode(errors="replace")[-12000:]
        assert failover_s <= TTL + LOOP_WAIT + HA_CYCLE_S, \
            f"the leader key took {failover_s:.2f}s > ttl + loop_wait + one HA cycle\n{since_kill}"
        assert writable_s <= TTL + LOOP_WAIT + HA_CYCLE_S, \
            f"the promotion took {writable_s:.2f}s > ttl + loop_wait + one HA cycle\n{since_kill}"
        kv = dcs_get(cluster, leader_key)
        assert kv is not None and kv.value == b"pg1", f"leader key after the failover: {kv}"
        second = uuid.uuid4().hex
        sql(pg1, "insert into conclave_patroni values (%s)", (second,))

        # 3. the old primary rejoins as a replica of the new one
        rejoin_from = time.monotonic()
        log_mark = pg0.log_path.stat().st_size
        pg0.start()
        wait_until(lambda: is_streaming_replica(pg0, pg1), 150, f"pg0 to rejoin as a replica\n{logs(pg0, pg1)}",
                   every=0.5)
        wait_until(lambda: has_row(pg0, second) and has_row(pg0, first), 30, "the rejoined replica to have both rows")
        rejoin_s = time.monotonic() - rejoin_from
        rejoin_log = pg0.log_path.read_bytes()[log_mark:].decode(errors="replace")
        how = ("pg_rewind" if "running pg_rewind" in rejoin_log else
               "a new clone" if "replica has been created" in rejoin_log else "a restart as replica (no rewind needed)")

        # 4. kill -9 of the DCS leader: Patroni keeps its leader key, nobody is demoted or promoted
        kv = dcs_get(cluster, leader_key)
        assert kv is not None and kv.value == b"pg1"
        held_since = kv.create_revision
        pg1_pid = pg1.postmaster_pid()
        # the hard case: the member that leads is the one the primary's Patroni is talking to
        target = pg1.dcs_member_in_use(cluster)
        assert target is not None, f"no 'Selected new etcd server' in pg1's log\n{logs(pg1)}"
        victim = dcs_move_leader(cluster, target)
        assert victim is target, f"MoveLeader to {target.name} left {victim.name} leading"
        log_mark = pg1.log_path.stat().st_size
        victim.kill()
        lost_at = time.monotonic()
        seen: dict[str, int] = {"pg1 primary": 0, "pg0 replica": 0, "key held": 0}
        while time.monotonic() - lost_at < TTL + 2 * LOOP_WAIT:
            r1, r0 = role(pg1), role(pg0)
            assert r1 in (None, "primary"), f"pg1 became {r1} after the DCS leader died\n{logs(pg1)}"
            assert r0 in (None, "replica"), f"pg0 became {r0} after the DCS leader died\n{logs(pg0)}"
            assert in_recovery(pg1) is not True, f"pg1 was demoted\n{logs(pg1)}"
            assert in_recovery(pg0) is not False, f"pg0 was promoted: two primaries\n{logs(pg0)}"
            kv = dcs_get(cluster, leader_key)
            if kv is not None:
                assert kv.value == b"pg1" and kv.create_revision == held_since, f"the leader key changed: {kv}"
                seen["key held"] += 1
            seen["pg1 primary"] += r1 == "primary"
            seen["pg0 replica"] += r0 == "replica"
            time.sleep(0.2)
        assert min(seen.values()) > 0, f"the nodes were never seen in their roles: {seen}"
        assert pg1.postmaster_pid() == pg1_pid, "pg1's PostgreSQL was restarted"
        errors = [ln for ln in pg1.log_path.read_bytes()[log_mark:].decode(errors="replace").splitlines()
                  if " ERROR: " in ln]
        third = uuid.uuid4().hex
        sql(pg1, "insert into conclave_patroni values (%s)", (third,))
        wait_until(lambda: has_row(pg0, third), 30, "a row written after the DCS leader loss to replicate")

        # 5. a graceful stop of the primary's Patroni (SIGTERM) on the 2 members left: it stops PostgreSQL
        # and deletes its leader key, so the replica takes over without waiting for the lease to expire
        stopped_from = time.monotonic()
        assert pg1.stop(), f"pg1's Patroni did not stop on SIGTERM in time\n{logs(pg1)}"
        rest_at, sql_at = watch_promotion(pg0, stopped_from + TTL + LOOP_WAIT + 30)
        assert rest_at is not None and sql_at is not None, f"pg0 was not promoted after pg1 stopped\n{logs(pg0, pg1)}"
        handover_s, handover_sql_s = rest_at - stopped_from, sql_at - stopped_from
        assert handover_s < TTL, f"pg0 took the key after {handover_s:.2f}s: it waited for the lease\n{logs(pg0, pg1)}"
        kv = dcs_get(cluster, leader_key)
        assert kv is not None and kv.value == b"pg0", f"leader key after pg1's graceful stop: {kv}"
        assert all(has_row(pg0, t) for t in (first, second, third)), "a row was lost in the handover"

        # a DCS answer Patroni cannot parse shows as a logged traceback: none, on either node. Patroni
        # also logs one for a DCS request that timed out or lost its connection (step 4 kills the DCS
        # member it talks to; on a loaded machine the election can outlast its 1.7 s read timeout):
        # those are the fault injected, not an answer it could not read
        for n in nodes:
            bad = [t for t in tracebacks(n.log_path.read_text(errors="replace")) if not any(
                mark in t for mark in TRANSPORT_FAILURES)]
            assert not bad, f"{n.name} logged a traceback\n{bad[0][-6000:]}"
        if dcs == "conclave":
            for m in cluster.members:
                assert "Traceback" not in m.log_text(), f"Conclave member {m.name} logged a traceback\n" \
                    f"{m.log_text()[-6000:]}"
        with capsys.disabled():
            print(f"[patroni/{dcs}] rejoin of the old primary by {how} in {rejoin_s:.1f}s; "
                  f"DCS leader {victim.name} killed (the member the primary's Patroni was using): "
                  f"roles and leader key unchanged for {TTL + 2 * LOOP_WAIT}s ({seen}), {len(errors)} ERROR lines "
                  f"in the primary's Patroni log; graceful stop of the primary: the replica took the leader key "
                  f"after {handover_s:.2f}s, promoted after {handover_sql_s:.2f}s; "
                  f"whole scenario {time.monotonic() - started:.0f}s")
    finally:
        for n in nodes:
            n.stop()
        cluster.stop()
