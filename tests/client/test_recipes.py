"""Recipes across several real client processes against one real cluster."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from conclave import AsyncClient, Client
from conclave.client import LamportClock, LockTimeout, NotElected, Timestamp
from conclave.server.launcher import ProcessCluster

from .conftest import finish, leader_member, native_endpoints, restore, spawn


def test_lock_never_has_two_holders_and_tokens_increase(cluster: ProcessCluster, tmp_path: Path) -> None:
    log = tmp_path / "holders.log"
    procs = [spawn("lock", native_endpoints(cluster), log, 5) for _ in range(4)]
    for p in procs:
        finish(p, 90)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 4 * 5 * 2
    holder = None
    tokens = []
    for action, token, pid in lines:
        if action == "acquire":
            assert holder is None, f"two holders at once: {holder} and {pid}"
            holder = (token, pid)
            tokens.append(int(token))
        else:
            assert holder == (token, pid)
            holder = None
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_lock_timeout_and_release_on_exit(cluster: ProcessCluster) -> None:
    with Client(native_endpoints(cluster)) as a, Client(native_endpoints(cluster)) as b:
        with a.lock("solo", ttl=5) as held:
            first = held.fencing_token
            assert held.is_held()
            with pytest.raises(LockTimeout):
                b.lock("solo", ttl=5).acquire(timeout=0.5)
        with b.lock("solo", ttl=5, timeout=5) as again:
            assert again.fencing_token > first


def test_counter_increments_from_many_processes_sum_exactly(cluster: ProcessCluster) -> None:
    procs = [spawn("counter", native_endpoints(cluster), 25) for _ in range(4)]
    values = [v for p in procs for rec in finish(p, 90) for v in rec["values"]]
    assert sorted(values) == list(range(1, 101))  # every increment returned a distinct new value
    with Client(native_endpoints(cluster)) as c:
        assert c.counter("hits").get() == 100


def test_queue_items_are_taken_exactly_once(cluster: ProcessCluster) -> None:
    eps = native_endpoints(cluster)
    consumers = [spawn("queue-get", eps) for _ in range(3)]
    producers = [spawn("queue-put", eps, name, 20) for name in ("p1", "p2")]
    for p in producers:
        finish(p, 60)
    taken = [item for c in consumers for rec in finish(c, 60) for item in rec["taken"]]
    assert sorted(taken) == sorted(f"{n}-{i}" for n in ("p1", "p2") for i in range(20))
    for name in ("p1", "p2"):  # FIFO per producer as seen by each consumer
        for c_items in ([i for i in taken if i.startswith(name)],):
            assert len(c_items) == 20


def test_broadcast_subscribers_on_different_members_agree_across_a_leader_kill(cluster: ProcessCluster) -> None:
    leader = leader_member(cluster)
    followers = [m for m in cluster.members if m is not leader]
    eps_all = native_endpoints(cluster)
    try:
        # One subscriber starts on the leader (and must fail over), one on a follower.
        subs = [
            spawn("subscribe", [leader.native_endpoint, *[f.native_endpoint for f in followers]], "news", "END"),
            spawn("subscribe", [followers[0].native_endpoint], "news", "END"),
        ]
        for s in subs:
            assert s.stdout is not None and "subscribed" in s.stdout.readline()
        appender = spawn("append", [f.native_endpoint for f in followers] + eps_all, "news", 40, 0.02)
        time.sleep(0.4)
        leader.kill()
        acked = finish(appender, 90)[0]["acked"]
        with Client([f.native_endpoint for f in followers], timeout=20) as c:
            end_seq = c.broadcast("news").append("END")
        seqs = [finish(s, 90)[0]["seen"] for s in subs]
        assert seqs[0] == seqs[1]
        assert [s for s, _ in seqs[0]] == list(range(len(seqs[0])))  # dense, no gap, no duplicate
        assert seqs[0][-1] == [end_seq, "END"]
        delivered = {s: m for s, m in seqs[0]}
        assert all(delivered[s] == m for s, m in acked)  # every acknowledged append is there
    finally:
        restore(cluster)


def test_election_campaign_proclaim_observe_resign(cluster: ProcessCluster) -> None:
    eps = native_endpoints(cluster)
    with Client(eps) as a, Client(eps) as b:
        ea, eb = a.election("jobs", ttl=5), b.election("jobs", ttl=5)
        ea.campaign("worker-a")
        assert ea.is_leader() and ea.leader().value == b"worker-a"
        observed: list[bytes | None] = []
        obs = b.election("jobs").observe()
        observed.append(next(obs).value)
        won = threading.Event()

        def campaign_b() -> None:
            eb.campaign("worker-b", timeout=20)
            won.set()

        t = threading.Thread(target=campaign_b)
        t.start()
        time.sleep(0.3)
        assert not won.is_set()
        ea.proclaim("worker-a v2")
        observed.append(next(obs).value)
        ea.resign()
        t.join(20)
        assert won.is_set() and eb.is_leader()
        nxt = next(obs)
        while nxt is None or nxt.value != b"worker-b":
            nxt = next(obs)
        with pytest.raises(NotElected):
            ea.proclaim("stale")
        eb.resign()
        assert observed == [b"worker-a", b"worker-a v2"]


def test_claim_unique_is_first_come_and_can_be_temporary(cluster: ProcessCluster) -> None:
    with Client(native_endpoints(cluster)) as c:
        first = c.claim_unique("usernames", "ada", "user-1")
        again = c.claim_unique("usernames", "ada", "user-1")
        other = c.claim_unique("usernames", "ada", "user-2")
        assert first.claimed and again.claimed and not other.claimed and other.owner == b"user-1"
        assert not c.release_unique("usernames", "ada", "user-2")
        assert c.release_unique("usernames", "ada", "user-1")
        assert c.claim_unique("usernames", "ada", "user-2").claimed
        lease = c.lease(1)
        assert c.claim_unique("tmp", "slot", "me", lease=lease.id).claimed
        lease.revoke()
        assert c.claim_unique("tmp", "slot", "you").claimed


def test_a_refused_claim_is_falsy_so_if_claim_unique_does_not_take_the_branch(cluster: ProcessCluster) -> None:
    """Regression (issue 10): ``if client.claim_unique(...)`` took the branch for a value held by another."""
    with Client(native_endpoints(cluster)) as c:
        me, other = "owner-me", "owner-other"
        assert c.claim_unique("users", "alice", other)
        taken = False
        if c.claim_unique("users", "alice", me):
            taken = True
        assert not taken
        refused = c.claim_unique("users", "alice", me)
        assert not refused and not refused.claimed and refused.owner == other.encode()
        mine = c.claim_unique("users", "bob", me)
        assert mine and mine.claimed and bool(c.claim_unique("users", "bob", me))  # a retry is still ours


def test_async_claim_is_falsy_when_refused(cluster: ProcessCluster) -> None:
    async def run() -> tuple[bool, bool]:
        async with AsyncClient(native_endpoints(cluster)) as c:
            return bool(await c.claim_unique("users-aio", "carol", "a")), bool(
                await c.claim_unique("users-aio", "carol", "b"))

    assert asyncio.run(run()) == (True, False)


def test_barrier_and_double_barrier(cluster: ProcessCluster) -> None:
    eps = native_endpoints(cluster)
    with Client(eps) as a, Client(eps) as b:
        bar = a.barrier("start")
        bar.hold()
        passed = threading.Event()
        t = threading.Thread(target=lambda: (b.barrier("start").wait(timeout=10), passed.set()))
        t.start()
        time.sleep(0.3)
        assert not passed.is_set()
        bar.release()
        t.join(10)
        assert passed.is_set()

        entered: list[str] = []

        def participant(client: Client, name: str) -> None:
            db = client.double_barrier("phase", 2, ttl=5)
            db.enter(timeout=10)
            entered.append(name)
            db.leave(timeout=10)

        t1 = threading.Thread(target=participant, args=(a, "a"))
        t1.start()
        time.sleep(0.3)
        assert entered == []  # one of two: still waiting
        participant(b, "b")
        t1.join(10)
        assert sorted(entered) == ["a", "b"]


def test_lamport_clock_orders_causally_related_messages_across_processes(cluster: ProcessCluster) -> None:
    procs = [spawn("lamport", native_endpoints(cluster), f"n{i}", 6) for i in range(3)]
    for p in procs:
        for received, merged, before in finish(p, 90)[0]["pairs"]:
            assert merged > received and merged > before
    with Client(native_endpoints(cluster)) as c:
        log = [Timestamp.decode(m) for _, (_, m) in zip(range(18), c.broadcast("lamport").subscribe(0), strict=False)]
    # A message sent after its sender received another is stamped later (happened-before => <).
    for i, ts in enumerate(log):
        prev_own = max((j for j in range(i) if log[j].node == ts.node), default=-1)
        assert all(log[j] < ts for j in range(prev_own))
    clock = LamportClock("x")
    assert clock.observe(Timestamp(41, "y")) == Timestamp(42, "x") and clock.tick() == Timestamp(43, "x")
