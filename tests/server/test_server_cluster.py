"""A 3-member cluster of real processes: replication, failover, durability, catch-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, leader_of, wait_for


def test_writes_on_any_member_are_read_linearizably_everywhere(
    cluster_factory: Callable[..., ProcessCluster],
) -> None:
    c = cluster_factory(3)
    clients = [Etcd(e) for e in c.endpoints]
    try:
        wait_for(lambda: clients[0].put(b"warm", b"up") is not None, 20, "first write")
        for i, writer in enumerate(clients):
            writer.put(b"k%d" % i, b"from-%d" % i)
            # A linearizable read on every member sees the write at once (ReadIndex).
            for reader in clients:
                assert reader.value(b"k%d" % i) == b"from-%d" % i
        revs = {cl.get(b"k0").header.revision for cl in clients}
        assert len(revs) == 1
        # Every response names the member that answered and one cluster.
        headers = [cl.get(b"k0").header for cl in clients]
        assert len({h.member_id for h in headers}) == 3
        assert len({h.cluster_id for h in headers}) == 1
    finally:
        for cl in clients:
            cl.close()


def _writer(endpoints: list[str], prefix: bytes, acked: list[bytes], stop: threading.Event) -> None:
    clients = [Etcd(e) for e in endpoints]
    i = 0
    n = 0
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        key = prefix + b"%06d" % n
        try:
            clients[i % len(clients)].put(key, b"v", timeout=3)
            acked.append(key)
            n += 1
        except grpc.RpcError:
            i += 1  # that member is down or has no leader: try another; the key is retried
    for cl in clients:
        cl.close()


def test_kill_leader_and_follower_under_load_loses_no_acknowledged_write(
    cluster_factory: Callable[..., ProcessCluster],
) -> None:
    c = cluster_factory(3)
    wait_for(lambda: Etcd(c.endpoints[0]).put(b"warm", b"up") is not None, 20, "first write")
    acked: list[list[bytes]] = [[], []]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_writer, args=(c.endpoints, b"a/%d/" % t, acked[t], stop)) for t in range(2)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        leader = leader_of(c)
        leader.kill()
        time.sleep(2.0)
        follower = next(m for m in c.members if m.alive() and m is not leader_of(c))
        follower.kill()
        leader.start()  # the old leader comes back (from its WAL) while the follower is down
        time.sleep(2.0)
        follower.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(70)
    all_acked = acked[0] + acked[1]
    assert len(all_acked) > 50, "the load generator made too little progress to mean anything"
    c.wait_ready(30)
    clients = [Etcd(e) for e in c.endpoints]
    try:
        for cl in clients:
            wait_for(lambda cl=cl: cl.get(b"a/", range_end=b"a0").count >= len(all_acked), 30, "catch-up")
            got = {bytes(kv.key) for kv in cl.get(b"a/", range_end=b"a0").kvs}
            missing = [k for k in all_acked if k not in got]
            assert not missing, f"{cl.endpoint} lost acknowledged writes: {missing[:5]}"
        rev = clients[0].get(b"a/").header.revision
        wait_for(lambda: all(cl.get(b"x", serializable=True).header.revision >= rev for cl in clients), 20,
                 "members to apply everything")
        hashes = {cl.hash_kv(rev).hash for cl in clients}
        assert len(hashes) == 1, f"replicas diverged: {hashes}"
    finally:
        for cl in clients:
            cl.close()


def test_follower_behind_a_snapshot_catches_up(cluster_factory: Callable[..., ProcessCluster]) -> None:
    c = cluster_factory(3, snapshot_count=100)
    first = Etcd(c.endpoints[0])
    try:
        wait_for(lambda: first.put(b"warm", b"up") is not None, 20, "first write")
        leader = leader_of(c)
        lagging = next(m for m in c.members if m is not leader)
        assert lagging.stop() == 0, "graceful stop must exit 0"
        lc = Etcd(leader.endpoint)
        for i in range(450):  # several snapshots + log compactions while the member is away
            lc.put(b"s/%04d" % i, b"x" * 100)
        lc.close()
        lagging.start()
        c.wait_ready(30, [lagging])
        lag = Etcd(lagging.endpoint)
        wait_for(lambda: lag.get(b"s/", range_end=b"s0", serializable=True).count == 450, 30,
                 "the restarted member to catch up")
        rev = first.get(b"s/").header.revision
        wait_for(lambda: lag.get(b"x", serializable=True).header.revision >= rev, 20, "apply")
        assert lag.hash_kv(rev).hash == first.hash_kv(rev).hash
        assert "snapshot" in leader.log_text()
        lag.close()
    finally:
        first.close()


def test_sigterm_stops_cleanly_and_data_survives_restart(cluster_factory: Callable[..., ProcessCluster]) -> None:
    c = cluster_factory(1)
    cl = Etcd(c.endpoints[0])
    wait_for(lambda: cl.put(b"durable", b"yes") is not None, 20, "first write")
    cl.close()
    m = c.members[0]
    assert m.stop() == 0
    m.start()
    c.wait_ready(20, [m])
    cl = Etcd(c.endpoints[0])
    try:
        wait_for(lambda: cl.value(b"durable") == b"yes", 20, "the value after restart")
    finally:
        cl.close()
