"""Lease expiry and survival against real members, with the keep-alive client in its own process.

The client is tests/server/clients/keepalive.py (our pb classes, one short LeaseKeepAlive stream per
refresh, endpoint failover round robin), so it can be SIGSTOPped like a paused application.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
import pytest

from conclave.api import pb
from conclave.server.launcher import ProcessCluster, ProcessMember

from .compat_support import (
    WatchRecorder,
    finish_client,
    read_line,
    spawn_client,
    stop_process,
)
from .conftest import Etcd, leader_of, wait_for

TTL_S = 3
KEEPALIVE_INTERVAL_S = 0.5
# The leader notices an expired lease on its next check and revokes it through the log: allow a
# few election timeouts (500 ms here) for that on top of the TTL.
EXPIRY_SLACK_S = 3.0


@pytest.fixture(scope="module")
def cluster(module_cluster: ProcessCluster) -> ProcessCluster:
    return module_cluster


def grant(client: Etcd, ttl: int) -> int:
    # The module's cluster outlives leader kills of earlier tests: on a loaded machine a member may
    # be between leaders for a moment, which etcd answers "no leader" too. Retried, bounded.
    deadline = time.monotonic() + 15
    while True:
        try:
            lease_id = int(client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=10).ID)
            break
        except grpc.RpcError as exc:
            if "no leader" not in (exc.details() or "") or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(0.1)
    assert lease_id != 0
    return lease_id


def keepalive_process(lease_id: int, endpoints: list[str], max_s: float = 60) -> subprocess.Popen[str]:
    proc = spawn_client("keepalive.py", str(lease_id), ",".join(endpoints), str(KEEPALIVE_INTERVAL_S), str(max_s))
    ready = read_line(proc, 20, "keepalive client")
    assert ready.startswith("ready "), ready
    assert int(ready.split()[1]) == TTL_S
    return proc


def present_on(member: ProcessMember, key: bytes) -> bool:
    c = Etcd(member.endpoint)
    try:
        return c.value(key, serializable=True) is not None
    finally:
        c.close()


def test_paused_client_lease_expires_after_ttl(cluster: ProcessCluster) -> None:
    # Fails if: the key disappears while the client keeps the lease alive (past 1.5 TTL), or within
    # TTL - one keep-alive interval after the client is SIGSTOPped (expiry too early), or is still
    # there TTL + slack after it (no expiry), or survives on some member, or its three keys are not
    # deleted in one revision (a watcher sees the DELETEs), or the resumed client is not told the
    # lease is gone (keep-alive must answer TTL 0).
    key = b"/leases/paused/a"
    siblings = [b"/leases/paused/b", b"/leases/paused/c"]
    c = Etcd(cluster.endpoints[0])
    proc: subprocess.Popen[str] | None = None
    deletes = WatchRecorder("expiry", [cluster.endpoints[2]], b"/leases/paused/", 0, deadline_s=40)
    try:
        lease_id = grant(c, TTL_S)
        for k in [key, *siblings]:
            last_put = c.put(k, b"held", lease=lease_id)
        deletes.start_revision = int(last_put.header.revision) + 1
        deletes.start()
        proc = keepalive_process(lease_id, [cluster.endpoints[1], cluster.endpoints[2]])

        kept_until = time.monotonic() + 1.5 * TTL_S
        while time.monotonic() < kept_until:
            assert c.value(key) == b"held", "key vanished while its lease was kept alive"
            time.sleep(0.2)

        os.kill(proc.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        # The last refresh happened at most one interval before the pause.
        must_live_until = paused_at + TTL_S - KEEPALIVE_INTERVAL_S - 0.2
        gone_at = None
        while time.monotonic() < paused_at + TTL_S + EXPIRY_SLACK_S:
            now = time.monotonic()
            if c.value(key) is None:
                gone_at = now
                break
            time.sleep(0.1)
        assert gone_at is not None, f"key still present {TTL_S + EXPIRY_SLACK_S}s after the client was paused"
        assert gone_at >= must_live_until, f"lease expired {gone_at - paused_at:.2f}s after the pause (TTL {TTL_S})"
        print(f"lease expired {gone_at - paused_at:.2f}s after SIGSTOP (TTL {TTL_S}s)")

        for m in cluster.members:  # expiry is a revoke through the log: every replica deletes the keys
            wait_for(lambda m=m: not any(present_on(m, k) for k in [key, *siblings]), 10,
                     f"expired keys gone on {m.name}")
        assert deletes.wait_until(deletes.start_revision, 10)
        time.sleep(0.3)  # a (wrong) second revision of deletes would arrive within this
        expiry_rev = deletes.events[0][0] if deletes.events else 0
        assert deletes.events == [(expiry_rev, "DELETE", k, b"") for k in sorted([key, *siblings])], deletes.events
        ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10)
        assert ttl.TTL == -1 and list(ttl.keys) == []  # etcd's answer for a lease that no longer exists

        os.kill(proc.pid, signal.SIGCONT)
        result = finish_client(proc, "keepalive client", 20)
        assert result["lost"] is True, result
    finally:
        deletes.stop()
        if proc is not None:
            stop_process(proc)  # SIGKILL also ends a stopped process
        c.close()


def test_leader_failover_does_not_expire_kept_alive_leases(cluster: ProcessCluster) -> None:
    # Fails if: a lease that a client keeps alive expires around a leader kill (either key vanishes
    # from a surviving member during 3 TTLs, or comes back re-created), the keep-alive through a
    # follower is not forwarded to the new leader, the client whose member died does not get answers
    # elsewhere, or the restarted member does not serve the keys. Revoking must still delete them.
    leader = leader_of(cluster)
    followers = [m for m in cluster.members if m is not leader]
    via_follower, via_leader = b"/leases/via-follower", b"/leases/via-leader"
    c = Etcd(followers[0].endpoint)
    procs: list[subprocess.Popen[str]] = []
    try:
        lease_f, lease_l = grant(c, TTL_S), grant(c, TTL_S)
        put_f = c.put(via_follower, b"f", lease=lease_f)
        put_l = c.put(via_leader, b"l", lease=lease_l)
        procs.append(keepalive_process(lease_f, [followers[0].endpoint, followers[1].endpoint, leader.endpoint]))
        procs.append(keepalive_process(lease_l, [leader.endpoint, followers[0].endpoint, followers[1].endpoint]))
        time.sleep(1.0)

        leader.kill()
        killed_at = time.monotonic()
        checks = 0
        while time.monotonic() < killed_at + 3 * TTL_S:
            for m in followers:
                for key in (via_follower, via_leader):
                    assert present_on(m, key), f"{key!r} vanished on {m.name} {time.monotonic() - killed_at:.2f}s " \
                        "after the leader was killed, although its lease is kept alive"
            checks += 1
            time.sleep(0.25)
        assert checks >= 10
        new_leader = leader_of(cluster)
        assert new_leader is not leader

        leader.start()
        cluster.wait_ready(members=[leader])
        wait_for(lambda: present_on(leader, via_follower) and present_on(leader, via_leader), 15,
                 "the restarted member to serve the leased keys")

        for key, put, lease_id in ((via_follower, put_f, lease_f), (via_leader, put_l, lease_l)):
            kv = c.get(key).kvs[0]  # the same key, never deleted and re-created
            assert (kv.create_revision, kv.lease) == (put.header.revision, lease_id)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = [finish_client(p, "keepalive client", 20) for p in procs]
        assert not any(r["lost"] for r in results), results
        assert results[1]["switches"], results[1]  # its first member died: it must have moved on
        print(f"keep-alive results: {results}")

        for lease_id in (lease_f, lease_l):
            c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=10)
        assert c.value(via_follower) is None and c.value(via_leader) is None
        with pytest.raises(grpc.RpcError) as err:
            c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_f), timeout=10)
        assert err.value.details() == "etcdserver: requested lease not found"
    finally:
        for p in procs:
            stop_process(p)
        if not leader.alive():
            leader.start()
        c.close()


def test_lease_without_keepalive_still_expires_after_leader_kill(cluster: ProcessCluster) -> None:
    # The other side of "failover extends deadlines": a lease nobody keeps alive must still expire
    # under the new leader, at most TTL + extension (one election timeout) + election + slack later.
    # Fails if: the key outlives that bound (the new leader never tracks the lease), or vanishes
    # before the TTL has passed since the kill (the extension was not applied).
    leader = leader_of(cluster)
    survivor = next(m for m in cluster.members if m is not leader)
    key = b"/leases/orphan"
    c = Etcd(survivor.endpoint)
    try:
        lease_id = grant(c, TTL_S)
        c.put(key, b"orphan", lease=lease_id)
        leader.kill()
        killed_at = time.monotonic()
        gone_at = None
        while time.monotonic() < killed_at + TTL_S + 1.0 + EXPIRY_SLACK_S + 2.0:
            if not present_on(survivor, key):
                gone_at = time.monotonic()
                break
            time.sleep(0.1)
        assert gone_at is not None, "a lease without keep-alives never expired after the failover"
        assert gone_at - killed_at >= TTL_S - 0.3, f"expired {gone_at - killed_at:.2f}s after the kill"
        print(f"orphan lease expired {gone_at - killed_at:.2f}s after the leader kill (TTL {TTL_S}s)")
    finally:
        if not leader.alive():
            leader.start()
            cluster.wait_ready(members=[leader])
        c.close()
    wait_for(lambda: not present_on(leader, key), 15, "the restarted member to apply the expiry")


def _serving_leader(members: list[ProcessMember]) -> int:
    """The leader id as reported by these members (skips a paused member, which would hang Status)."""
    leaders = set()
    for m in members:
        c = Etcd(m.endpoint)
        try:
            leaders.add(int(c.status().leader))
        finally:
            c.close()
    return leaders.pop() if len(leaders) == 1 else 0


def test_resumed_paused_leader_does_not_expire_kept_alive_leases(cluster: ProcessCluster) -> None:
    # Regression: before 7ef64c0 the resumed leader's stale expiry revoke was forwarded to the new
    # leader and committed, deleting the key within ~0.5 s of SIGCONT (5 of 5 runs).
    paused_leader_scenario(cluster)


# There is deliberately no reference run of this scenario against etcd 3.4: a full-suite run saw
# etcd 3.4.23 itself delete the key 0.01 s after its paused leader resumed (a stale-leader lease
# revocation), so etcd is not a stable reference here; Conclave never proposes an expiry anywhere
# but on its own leader's log (server/node.py, _propose_expiry).


def paused_leader_scenario(cluster: ProcessCluster) -> None:
    # The leader is SIGSTOPped for 2 TTLs while a client keeps the lease alive through the
    # followers (they elect a new leader, which renews it). On SIGCONT the old leader's lessor still
    # believes it is primary and every deadline it knows has passed; it must not revoke anything.
    # Fails if: the key is deleted at any time (a DELETE event on the watch, or absent on a member),
    # or the keep-alive client is told its lease is gone.
    leader = leader_of(cluster)
    followers = [m for m in cluster.members if m is not leader]
    key = b"/leases/paused-leader"
    c = Etcd(followers[0].endpoint)
    # The member we talk to may itself have just restarted (an earlier test kills members of this
    # shared cluster): let it learn the leader first, or the grant fails fast with "no leader".
    wait_for(lambda: c.status().leader != 0, 20, "the follower to know the leader")
    proc: subprocess.Popen[str] | None = None
    deletes = WatchRecorder("deletes", [followers[1].endpoint], key, 0, deadline_s=40)
    try:
        lease_id = grant(c, TTL_S)
        put = c.put(key, b"kept", lease=lease_id)
        deletes.start_revision = int(put.header.revision)
        deletes.start()
        proc = keepalive_process(lease_id, [m.endpoint for m in followers])
        time.sleep(1.0)

        probe = Etcd(leader.endpoint)
        old_id = int(probe.status().header.member_id)
        probe.close()
        leader.pause()
        paused_at = time.monotonic()
        try:
            wait_for(lambda: _serving_leader(followers) not in (0, old_id), 10, "a new leader among the followers")
            time.sleep(max(0.0, paused_at + 2 * TTL_S - time.monotonic()))
            assert all(present_on(m, key) for m in followers), "the lease expired while the leader was paused"
        finally:
            leader.resume()
        resumed_at = time.monotonic()
        while time.monotonic() < resumed_at + 4.0:
            for m in cluster.members:
                assert present_on(m, key), f"{key!r} deleted on {m.name} " \
                    f"{time.monotonic() - resumed_at:.2f}s after the old leader {leader.name} resumed"
            time.sleep(0.2)
        assert deletes.events == [(put.header.revision, "PUT", key, b"kept")], deletes.events
        proc.send_signal(signal.SIGTERM)
        result = finish_client(proc, "keepalive client", 20)
        assert result["lost"] is False, result
        c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=10)
    finally:
        deletes.stop()
        if proc is not None:
            stop_process(proc)
        leader.resume()
        c.close()
