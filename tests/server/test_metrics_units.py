"""server/metrics.py and api/rpcmetrics.py without a member: the cheap histogram exports what
prometheus_client's Histogram would, applied results are counted as etcd counts them, the WAL's
observer sees what a sync did."""

from __future__ import annotations

import random
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conclave.api.rpcmetrics import RpcMetrics
from conclave.kv.types import (
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    PutResponse,
    RangeResponse,
    ResponseOp,
    TxnRequest,
    TxnResponse,
)
from conclave.machine.state import Result
from conclave.raft.types import Entry, HardState
from conclave.server.metrics import DISK_BUCKETS, Buckets, MemberMetrics
from conclave.storage.wal import DiskStorage, SyncStats


def samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.name.startswith(prefix):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_buckets_export_what_a_prometheus_histogram_exports() -> None:
    rng = random.Random(7)
    values = [rng.choice(DISK_BUCKETS) for _ in range(50)] + [rng.expovariate(50) for _ in range(500)] + [100.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    b = Buckets("h_seconds", "doc", DISK_BUCKETS)

    class One:
        def collect(self) -> list[object]:
            return [b.family()]

    ours.register(One())  # type: ignore[arg-type]
    h = Histogram("h_seconds", "doc", buckets=DISK_BUCKETS, registry=theirs)
    for v in values:
        b.observe(v)
        h.observe(v)
    mine, ref = samples(ours, "h_seconds"), samples(theirs, "h_seconds")
    assert mine.keys() == ref.keys()
    for k in ref:
        assert abs(mine[k] - ref[k]) < 1e-9, k
    assert b.count == len(values)


def test_applied_results_are_counted_as_etcd_counts_them() -> None:
    m = MemberMetrics()
    txn = TxnResponse(succeeded=True, responses=(ResponseOp(response_put=PutResponse()),
                                                 ResponseOp(response_range=RangeResponse()),
                                                 ResponseOp(response_txn=TxnResponse(responses=(
                                                     ResponseOp(response_put=PutResponse()),)))))
    results = [
        Result(1, 1, PutRequest(key=b"a"), PutResponse(), None),
        Result(1, 2, PutRequest(key=b"b"), PutResponse(), None),
        Result(1, 3, DeleteRangeRequest(key=b"a"), None, None),
        Result(1, 4, TxnRequest(), txn, None),
        Result(1, 5, LeaseGrantRequest(ttl=10), None, None),
        Result(1, 6, LeaseRevokeRequest(id=5), None, None),
        Result(0, 0, LeaseRevokeRequest(id=6), None, None),  # the leader's expiry
        Result(1, 7, None, None, None),  # a member entry
    ]
    m.count_applied(results)
    assert (m.mvcc_put_total, m.mvcc_delete_total, m.mvcc_txn_total, m.mvcc_range_total) == (4, 1, 1, 1)
    assert (m.lease_granted_total, m.lease_revoked_total, m.lease_expired_total) == (1, 1, 1)


def test_the_wal_tells_its_observer_what_a_sync_did(tmp_path: Path) -> None:
    seen: list[SyncStats] = []
    clock = iter(range(1, 1000))

    class Observer:
        def now(self) -> float:
            return float(next(clock))

        def synced(self, stats: SyncStats) -> None:
            seen.append(stats)

    with DiskStorage(tmp_path, observer=Observer()) as st:
        st.save(HardState(term=1, vote=0, commit=0), [Entry(term=1, index=i, data=b"x" * 10) for i in (1, 2, 3)])
        st.sync()
        st.sync()  # nothing new: no report
        st.save(None, [Entry(term=1, index=4, data=b"y")])
        st.sync()
    assert [s.entries for s in seen] == [3, 1]
    assert all(s.wal_bytes > 0 and s.fsync_s == 1.0 and s.snapshots == 0 for s in seen)


def test_rpc_counters_cover_every_method_and_code() -> None:
    reg = CollectorRegistry()
    r = RpcMetrics(reg)
    t0 = r.start("/etcdserverpb.KV/Put")
    r.handled("/etcdserverpb.KV/Put", 0, t0)
    r.handled("/etcdserverpb.KV/Put", 14, t0)  # UNAVAILABLE
    r.handled("/no.such/Method", 0, 0.0)  # not an etcd method: ignored
    r.received("/etcdserverpb.KV/Put", 40)
    r.sent("/etcdserverpb.KV/Put", 25)
    s = samples(reg, "grpc_server_")
    put = (("grpc_method", "Put"), ("grpc_service", "etcdserverpb.KV"), ("grpc_type", "unary"))
    assert s[("grpc_server_handled_total", tuple(sorted((*put, ("grpc_code", "OK")))))] == 1
    assert s[("grpc_server_handled_total", tuple(sorted((*put, ("grpc_code", "Unavailable")))))] == 1
    assert s[("grpc_server_started_total", put)] == 1
    assert s[("grpc_server_msg_received_total", put)] == 1 and s[("grpc_server_msg_sent_total", put)] == 1
    client = samples(reg, "etcd_network_client_grpc_")
    assert client[("etcd_network_client_grpc_received_bytes_total", ())] == 40
    assert client[("etcd_network_client_grpc_sent_bytes_total", ())] == 25
    codes = {dict(k[1])["grpc_code"] for k in s if k[0] == "grpc_server_handled_total"}
    assert len(codes) == 17
    assert not any(k[0].startswith("grpc_server_handling_seconds") for k in s)  # basic


def test_transport_counts_bytes_round_trips_failures_and_drops() -> None:
    import asyncio

    from conclave.raft.types import Message, MessageType
    from conclave.server.launcher import free_ports
    from conclave.server.transport import QUEUE_MESSAGES_MAX, Transport

    p1, p2, dead = free_ports(3)

    async def no_rpc(method: str, args: object) -> object:
        raise AssertionError("the ping must be answered by the transport, not the node")

    async def scenario() -> None:
        m1, m2 = MemberMetrics(), MemberMetrics()
        got: list[Message] = []
        t1 = Transport(1, 7, lambda ms: None, no_rpc, lambda n: None, metrics=m1)
        t2 = Transport(2, 7, got.extend, no_rpc, lambda n: None, metrics=m2)
        await t1.listen("127.0.0.1", p1)
        await t2.listen("127.0.0.1", p2)
        t1.set_peer(2, ("127.0.0.1", p2))
        t1.set_peer(3, ("127.0.0.1", dead))  # nobody listens there
        try:
            t1.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=1)])
            def rtts() -> float:
                return m1.registry.get_sample_value("etcd_network_peer_round_trip_time_seconds_count",
                                                    {"To": "2"}) or 0.0

            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while loop.time() < end and (not got or not rtts() or not m1.peer(3).sent_failures):
                await asyncio.sleep(0.02)
            assert got and m1.peer(2).sent_bytes > 0 and m2.peer(1).received_bytes >= m1.peer(2).sent_bytes > 0
            assert rtts() >= 1  # the first probe goes out as the connection comes up
            assert m1.peer(3).sent_failures >= 1
            # a full queue drops the message and counts it
            t1.send([Message(MessageType.HEARTBEAT, to=3, frm=1, term=1)] * (QUEUE_MESSAGES_MAX + 5))
            assert m1.peer(3).dropped_messages >= 5
        finally:
            await t1.close()
            await t2.close()

    asyncio.run(scenario())
