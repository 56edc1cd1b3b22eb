"""The client against a real 3-member cluster: both protocols, discovery, failover, watches that
resume after the member they were on dies, sessions whose keys vanish with their process."""

from __future__ import annotations

import threading
import time

import pytest

from conclave import AsyncClient, Client
from conclave.client import EventType, OutcomeUnknown, Unavailable, get_op, put_op, value
from conclave.server.launcher import ProcessCluster

from .conftest import finish, leader_member, native_endpoints, restore, spawn


@pytest.mark.parametrize("protocol", ["native", "grpc"])
def test_same_surface_over_both_protocols(cluster: ProcessCluster, protocol: str) -> None:
    eps = native_endpoints(cluster) if protocol == "native" else cluster.endpoints
    with Client(eps, protocol=protocol) as c:
        c.put(f"{protocol}/a", "1")
        c.put(f"{protocol}/b".encode(), b"2")
        assert c.get(f"{protocol}/a") == b"1" and c.get(f"{protocol}/none") is None
        assert [kv.key for kv in c.get_prefix(f"{protocol}/")] == [f"{protocol}/a".encode(), f"{protocol}/b".encode()]
        t = c.txn().if_(value(f"{protocol}/a") == "1").then(put_op(f"{protocol}/c", "3")).else_(
            get_op(f"{protocol}/a")).commit()
        assert t.succeeded and c.get(f"{protocol}/c") == b"3"
        lease = c.lease(5)
        c.put(f"{protocol}/eph", "x", lease=lease.id)
        assert lease.time_to_live(keys=True).keys == (f"{protocol}/eph".encode(),)
        lease.revoke()
        assert c.get(f"{protocol}/eph") is None
        assert len(c.members()) == 3 and c.status().leader != 0
        w = c.watch(f"{protocol}/w", prefix=True)
        w.start()
        c.put(f"{protocol}/w1", "x")
        c.delete(f"{protocol}/w1")
        assert [(e.type, e.kv.key) for e in (w.next(timeout=5), w.next(timeout=5))] == [
            (EventType.PUT, f"{protocol}/w1".encode()), (EventType.DELETE, f"{protocol}/w1".encode())]
        w.close()
        with c.lock(f"{protocol}-lock", ttl=5) as held:
            assert held.fencing_token > 0
        assert c.counter(f"{protocol}-n").increment(2) == 2
        assert c.delete(f"{protocol}/", prefix=True).deleted == 3


def test_a_client_that_knows_one_member_learns_the_others(cluster: ProcessCluster) -> None:
    with Client([cluster.members[1].native_endpoint]) as c:
        c.get("anything")
        assert sorted(c.endpoints) == sorted(native_endpoints(cluster))
        assert all(m.native_urls for m in c.members())


def test_unreachable_endpoints_give_unavailable_quickly() -> None:
    with Client(["127.0.0.1:1"], timeout=1.0, connect_timeout=0.2) as c:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            c.get("k")
        assert time.monotonic() - start < 3


def test_failover_and_watch_resume_when_the_connected_member_dies(cluster: ProcessCluster) -> None:
    victim = leader_member(cluster)  # the hardest case: the leader goes and a new one is elected
    others = [m.native_endpoint for m in cluster.members if m is not victim]
    try:
        with Client([victim.native_endpoint, *others], discover=False, timeout=10) as watcher_client, \
                Client(others, discover=False, timeout=10) as writer:
            w = watcher_client.watch("resume/", prefix=True)
            w.start()
            assert watcher_client.aio.endpoint == victim.native_endpoint
            written = []
            for i in range(5):
                writer.put(f"resume/{i}", str(i))
                written.append(f"resume/{i}")
            victim.kill()
            for i in range(5, 15):
                for _ in range(50):
                    try:
                        writer.put(f"resume/{i}", str(i))
                        break
                    except (Unavailable, OutcomeUnknown):
                        time.sleep(0.1)  # a retried put writes the same value: harmless here
                written.append(f"resume/{i}")
            seen: list[str] = []
            it = iter(w)
            deadline = time.monotonic() + 30
            while len(set(seen)) < 15 and time.monotonic() < deadline:
                ev = next(it)
                assert ev.type == EventType.PUT
                seen.append(ev.kv.key.decode())
            w.close()
            # every write seen, in order, and no revision delivered twice across the reconnect
            firsts = list(dict.fromkeys(seen))
            assert firsts == written
            assert watcher_client.aio.endpoint != victim.native_endpoint
            # a read after failover is linearizable on the new member
            assert watcher_client.get("resume/14") == b"14"
    finally:
        restore(cluster)


def test_session_keys_disappear_when_the_process_dies(cluster: ProcessCluster) -> None:
    proc = spawn("session", native_endpoints(cluster), "alive/worker-1")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "lease" in line, proc.stderr.read() if proc.stderr else ""
    with Client(native_endpoints(cluster)) as c:
        assert c.get("alive/worker-1") is not None
        time.sleep(2.5)  # longer than the TTL: the background keep-alive holds it
        assert c.get("alive/worker-1") is not None
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while c.get("alive/worker-1") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("alive/worker-1") is None


def test_async_client_pipelines_many_concurrent_calls(cluster: ProcessCluster) -> None:
    import asyncio

    async def main() -> None:
        async with AsyncClient(native_endpoints(cluster)) as c:
            await asyncio.gather(*(c.put(f"pipe/{i}", str(i)) for i in range(200)))
            values = await asyncio.gather(*(c.get(f"pipe/{i}") for i in range(200)))
            assert values == [str(i).encode() for i in range(200)]
            assert await c.delete_prefix("pipe/") == 200

    asyncio.run(main())


def test_sync_client_is_usable_from_several_threads(cluster: ProcessCluster) -> None:
    errors: list[BaseException] = []
    with Client(native_endpoints(cluster)) as c:
        def work(n: int) -> None:
            try:
                for i in range(20):
                    c.put(f"thr/{n}/{i}", "x")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert len(c.get_prefix("thr/")) == 80


def test_worker_helper_reports_errors(cluster: ProcessCluster) -> None:
    proc = spawn("no-such-role", native_endpoints(cluster))
    with pytest.raises(AssertionError):
        finish(proc, 30)


def test_watch_moves_off_a_paused_member_without_losing_events(cluster: ProcessCluster) -> None:
    leader = leader_member(cluster)
    victim = next(m for m in cluster.members if m is not leader)  # a follower: no election needed
    others = [m.native_endpoint for m in cluster.members if m is not victim]
    try:
        with Client([victim.native_endpoint, *others], discover=False, timeout=10) as wc, \
                Client(others, discover=False) as writer:
            w = wc.watch("paused/", prefix=True)
            w.start()
            writer.put("paused/0", "a")
            assert w.next(timeout=5).kv.key == b"paused/0"
            victim.pause()  # SIGSTOP: the connection stays open, nothing is answered
            for i in range(1, 6):
                writer.put(f"paused/{i}", "b")
            got = [w.next(timeout=15).kv.key for _ in range(5)]
            assert got == [f"paused/{i}".encode() for i in range(1, 6)]
            assert wc.aio.endpoint != victim.native_endpoint
            start = time.monotonic()
            assert wc.get("paused/5") == b"b"  # reads go elsewhere too
            assert time.monotonic() - start < 5
            w.close()
    finally:
        victim.resume()
        restore(cluster)
