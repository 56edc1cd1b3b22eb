"""/metrics on real members: scraped and parsed with prometheus_client's parser; values move as
the operations that were done say they must."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import ProcessCluster, free_ports

from .conftest import Etcd, etcdctl_path, leader_of, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def scrape(port: int) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, sorted labels) -> value)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(scrape_text(port)):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def grpc_handled(samples: Samples, method: str, code: str = "OK", service: str = "etcdserverpb.KV") -> float:
    return sum(v for (n, lab), v in samples.items() if n == "grpc_server_handled_total"
               and ("grpc_method", method) in lab and ("grpc_code", code) in lab and ("grpc_service", service) in lab)


class Watching:
    """One open Watch stream on ``key`` (a thread feeds its requests until closed)."""

    def __init__(self, endpoint: str, key: bytes) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.requests: queue.Queue[Any] = queue.Queue()
        self.requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
        stub = EtcdStub(self.channel, "etcdserverpb.Watch")
        self.responses = stub.Watch(self._iter())
        first = next(self.responses)
        assert first.created

    def _iter(self) -> Iterator[Any]:
        while True:
            item = self.requests.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


@pytest.fixture
def cluster(cluster_factory: Callable[..., ProcessCluster]) -> ProcessCluster:
    c = cluster_factory(3)
    leader_of(c)
    return c


def test_metrics_move_with_the_operations(cluster: ProcessCluster) -> None:
    leader = leader_of(cluster)
    followers = [m for m in cluster.members if m is not leader]
    types, before = scrape(leader.client_port)
    # etcd's types, not what the names suggest
    assert types["etcd_server_proposals_committed_total"] == "gauge"  # a gauge in etcd despite its name
    assert types["etcd_server_has_leader"] == "gauge"
    assert types["etcd_server_leader_changes_seen"] == "counter"
    assert types["etcd_disk_wal_fsync_duration_seconds"] == "histogram"
    assert value(before, "etcd_server_has_leader") == 1
    assert value(before, "etcd_server_is_leader") == 1
    assert value(before, "etcd_server_leader_changes_seen_total") >= 1

    c = Etcd(leader.endpoint)
    lease = EtcdStub(c.channel, "etcdserverpb.Lease")
    watch = Watching(leader.endpoint, b"watched")
    try:
        puts, reads = 25, 7
        for i in range(puts):
            c.put(f"k{i}".encode(), b"v" * 100)
        for i in range(reads):
            c.get(f"k{i}".encode())
        c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k0"), timeout=10)
        c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"1"))]), timeout=10)
        granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=10)
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID), timeout=10)
        lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1), timeout=10)  # left to expire (1 s, the minimum here)
        _, after = scrape(leader.client_port)
        assert value(after, "etcd_debugging_mvcc_watcher_total") == 1
        assert value(after, "etcd_debugging_mvcc_watch_stream_total") == 1
    finally:
        watch.close()
        c.close()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("etcd_mvcc_put_total") == puts + 1  # the txn's put counts as a put
    assert delta("etcd_mvcc_txn_total") == 1
    assert delta("etcd_mvcc_delete_total") == 1
    assert delta("etcd_mvcc_range_total") == reads
    assert delta("etcd_debugging_lease_granted_total") == 2
    assert delta("etcd_debugging_lease_revoked_total") == 1
    assert delta("etcd_debugging_mvcc_keys_total") == puts - 1 + 1  # k0 deleted, t added
    assert delta("etcd_debugging_mvcc_current_revision") == puts + 1 + 1  # puts, the delete, the txn
    assert grpc_handled(after, "Put") - grpc_handled(before, "Put") == puts
    put_labels = {"grpc_method": "Put", "grpc_service": "etcdserverpb.KV", "grpc_type": "unary"}
    assert delta("grpc_server_msg_received_total", **put_labels) == puts
    assert delta("grpc_server_msg_sent_total", **put_labels) == puts
    assert grpc_handled(after, "Range") - grpc_handled(before, "Range") == reads
    assert grpc_handled(after, "LeaseGrant", service="etcdserverpb.Lease") == 2
    # the watch stream the client closed ends as Canceled: started - handled counts the open streams
    def open_watch_streams() -> float:
        _, now = scrape(leader.client_port)
        watch_labels = (("grpc_method", "Watch"), ("grpc_service", "etcdserverpb.Watch"), ("grpc_type", "bidi_stream"))
        return now[("grpc_server_started_total", watch_labels)] - sum(
            v for (n, lab), v in now.items() if n == "grpc_server_handled_total" and set(watch_labels) <= set(lab))

    wait_for(lambda: open_watch_streams() == 0, 10, "the closed watch stream to be counted as handled")
    assert grpc_handled(scrape(leader.client_port)[1], "Watch", code="Canceled", service="etcdserverpb.Watch") == 1
    wait_for(lambda: value(scrape(leader.client_port)[1], "etcd_debugging_mvcc_watcher_total") == 0, 10,
             "the watcher to go with its stream")
    assert value(scrape(leader.client_port)[1], "etcd_debugging_mvcc_watch_stream_total") == 0
    wait_for(lambda: value(scrape(leader.client_port)[1], "etcd_debugging_server_lease_expired_total")
             == value(before, "etcd_debugging_server_lease_expired_total") + 1, 15, "the short lease to expire")
    assert delta("etcd_disk_wal_fsync_duration_seconds_count") >= 1
    assert delta("etcd_network_client_grpc_received_bytes_total") >= puts * 100  # each put carried 100 bytes
    assert delta("etcd_network_client_grpc_sent_bytes_total") >= reads * 100  # each read answered them
    # one client putting one key at a time: one entry each
    assert delta("etcd_server_proposals_applied_total") >= puts
    assert value(after, "etcd_server_proposals_committed_total") >= value(after, "etcd_server_proposals_applied_total")
    assert value(after, "etcd_mvcc_db_total_size_in_bytes") > value(before, "etcd_mvcc_db_total_size_in_bytes")
    assert value(after, "process_resident_memory_bytes") > 10e6
    assert delta("conclave_server_commands_per_entry_count") >= 1
    assert delta("conclave_server_commands_per_entry_sum") >= puts
    # peers: bytes both ways, round trips probed
    for f in followers:
        fid = _member_id(f.client_port)
        assert value(after, "etcd_network_peer_sent_bytes_total", To=fid) > 0
        assert value(after, "etcd_network_peer_received_bytes_total", From=fid) > 0
        assert value(after, "etcd_network_peer_round_trip_time_seconds_count", To=fid) >= 1
    # every member applies every write: the followers' put counters agree with the leader's
    for f in followers:
        _, fs = scrape(f.client_port)
        assert value(fs, "etcd_server_has_leader") == 1 and value(fs, "etcd_server_is_leader") == 0
        wait_for(lambda f=f: value(scrape(f.client_port)[1], "etcd_mvcc_put_total")
                 == value(after, "etcd_mvcc_put_total"), 10, "the follower to apply every put")


def _answers(port: int) -> bool:
    try:
        scrape_text(port, "/livez")
        return True
    except OSError:
        return False


def _member_id(port: int) -> str:
    _, s = scrape(port)
    return next(dict(lab)["server_id"] for (n, lab) in s if n == "etcd_server_id")


def test_leader_changes_after_a_transfer(cluster: ProcessCluster) -> None:
    leader = leader_of(cluster)
    target = next(m for m in cluster.members if m is not leader)
    before = {m.name: value(scrape(m.client_port)[1], "etcd_server_leader_changes_seen_total")
              for m in cluster.members}
    target_id = int(_member_id(target.client_port), 16)
    c = Etcd(leader.endpoint)
    try:
        c.maint.MoveLeader(pb.MoveLeaderRequest(targetID=target_id), timeout=15)
    finally:
        c.close()
    wait_for(lambda: value(scrape(target.client_port)[1], "etcd_server_is_leader") == 1, 10, "the target to lead")
    for m in cluster.members:
        # at least the transfer (a loaded machine may add an election of its own on top)
        wait_for(lambda m=m: value(scrape(m.client_port)[1], "etcd_server_leader_changes_seen_total")
                 >= before[m.name] + 1, 10, f"{m.name} to count the change")
    assert value(scrape(leader.client_port)[1], "etcd_server_is_leader") == 0


def test_python_engine_extensive_and_the_metrics_listener(tmp_path: Any) -> None:
    c = ProcessCluster(tmp_path / "c", 1, extra_args=["--grpc-engine", "python", "--metrics", "extensive"])
    taken = {p for m in c.members for p in (m.client_port, m.peer_port, m.native_port)}
    mport, hport = [p for p in free_ports(6) if p not in taken][:2]  # never one the member uses already
    for m in c.members:
        m.argv += ["--listen-metrics-urls", f"http://127.0.0.1:{mport}",
                   "--listen-client-http-urls", f"http://127.0.0.1:{hport}"]
    c.start()
    try:
        m = c.members[0]
        wait_for(lambda: _answers(mport) and value(scrape(mport)[1], "etcd_server_has_leader") == 1, 15, "a leader")
        cl = Etcd(m.endpoint)
        try:
            for i in range(5):
                cl.put(b"p%d" % i, b"x")
            cl.get(b"p0")
            with pytest.raises(grpc.RpcError):
                cl.kv.Range(pb.RangeRequest(key=b"p0", revision=10_000), timeout=5)  # future revision: OutOfRange
        finally:
            cl.close()
        # grpc.aio sends an aborted call's status before the interceptor's accounting runs, so the
        # client can scrape before the last call is counted: wait for it (bounded)
        wait_for(lambda: grpc_handled(scrape(mport)[1], "Range", code="OutOfRange") == 1, 5,
                 "the aborted Range to be counted")
        types, s = scrape(mport)
        assert grpc_handled(s, "Put") == 5
        assert value(s, "etcd_network_client_grpc_received_bytes_total") >= 5 * 3  # key and value of each put
        assert grpc_handled(s, "Range") == 1
        assert grpc_handled(s, "Range", code="OutOfRange") == 1
        assert types["grpc_server_handling_seconds"] == "histogram"
        count = value(s, "grpc_server_handling_seconds_count", grpc_method="Put", grpc_service="etcdserverpb.KV",
                      grpc_type="unary")
        assert count == 5
        # every method x every code is there from the start, as go-grpc-prometheus does it
        codes = {dict(lab)["grpc_code"] for (n, lab) in s if n == "grpc_server_handled_total"}
        assert len(codes) == 17
        assert scrape_text(mport, "/health").startswith('{"health":"true"')
        # the gateway's listener serves the same routes; the metrics listener only metrics and health
        assert value(scrape(hport)[1], "etcd_server_has_leader") == 1
        assert scrape_text(hport, "/readyz") == "ok\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{mport}/v3/kv/range", data=b"{}"),
                                   timeout=10)
        assert err.value.code == 404
    finally:
        c.stop()


def test_basic_has_no_handling_histogram(cluster: ProcessCluster) -> None:
    types, _ = scrape(cluster.members[0].client_port)
    assert "grpc_server_handling_seconds" not in types


def test_etcdctl_check_datascale_passes(cluster: ProcessCluster) -> None:
    """etcdctl 3.4 reads process_resident_memory_bytes from every endpoint's /metrics."""
    etcdctl = etcdctl_path()
    if etcdctl is None:
        pytest.skip("etcdctl not installed")
    leader = leader_of(cluster)
    t0 = time.monotonic()
    out = subprocess.run([etcdctl, "--endpoints", leader.endpoint, "check", "datascale", "--load=s"],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "ETCDCTL_API": "3"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "PASS" in out.stdout, out.stdout[-2000:]
    assert time.monotonic() - t0 < 240


def test_metrics_scrape_runs_while_writes_go_on(cluster: ProcessCluster) -> None:
    """Scrapes during a write load neither fail nor stall the writes."""
    leader = leader_of(cluster)
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def load() -> None:
        c = Etcd(leader.endpoint)
        try:
            while not stop.is_set() and done[0] < 2000:
                c.put(b"load", b"x")
                done[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            c.close()

    t = threading.Thread(target=load)
    t.start()
    try:
        for _ in range(10):
            scrape(leader.client_port)
    finally:
        stop.set()
        t.join(30)
    assert not errors and done[0] > 0


def test_snapshots_and_backups_are_timed(tmp_path: Any) -> None:
    """The periodic snapshot (child, then its file written with the WAL) and a backup."""
    c = ProcessCluster(tmp_path / "c", 1, snapshot_count=50)
    c.start()
    try:
        m = c.members[0]
        wait_for(lambda: _answers(m.client_port) and value(scrape(m.client_port)[1], "etcd_server_has_leader") == 1,
                 15, "a leader")
        cl = Etcd(m.endpoint)
        try:
            for i in range(120):
                cl.put(b"s%d" % i, b"x" * 50)

            def saved() -> bool:
                s = scrape(m.client_port)[1]
                return (value(s, "etcd_debugging_snap_save_total_duration_seconds_count") >= 1
                        and value(s, "etcd_disk_backend_commit_duration_seconds_count") >= 1)

            wait_for(saved, 20, "a snapshot child and its file write to be timed")
            maint = EtcdStub(cl.channel, "etcdserverpb.Maintenance")
            chunks = list(maint.Snapshot(pb.SnapshotRequest(), timeout=30))
            assert chunks
        finally:
            cl.close()
        s = scrape(m.client_port)[1]
        assert value(s, "etcd_disk_backend_snapshot_duration_seconds_count") == 1
        assert value(s, "etcd_disk_backend_snapshot_duration_seconds_sum") > 0
        assert value(s, "conclave_snapshot_failures_total") == 0
    finally:
        c.stop()
