"""Watch consistency across a leader kill: every watcher sees exactly the committed sequence.

One watcher per member (gRPC Watch streams in threads, ``hasleader`` set as clientv3 does), two
writers (puts, deletes, two-key txns) and a SIGKILL of the leader mid-way, then its restart. A
watcher whose stream breaks resumes on the next member from its last revision + 1, as a real client
does. The reference sequence is a fresh watch from the start revision (checked against the acked
writes, against range reads at past revisions, and equal on every member).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import ProcessCluster

from .compat_support import (
    FATAL,
    Event,
    WatchRecorder,
    expected_prevs,
    kill_cluster,
    prefix_end,
    progress_violations,
    watch_once_history,
)
from .conftest import Etcd, leader_of, wait_for

PREFIX = b"/wc/"
OPS_PER_WRITER = 150
WRITE_PHASE_MAX_S = 40.0
STALL_S = 4.0


@pytest.fixture(scope="module")
def cluster(module_cluster: ProcessCluster) -> ProcessCluster:
    return module_cluster


@dataclass
class Writer:
    """Puts, deletes and two-key txns under PREFIX; on an error moves to the next member (bounded)."""

    name: str
    endpoints: list[str]
    acked: list[Event] = field(default_factory=list)
    done_ops: int = 0
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        give_up = time.monotonic() + WRITE_PHASE_MAX_S
        index = 0
        client = Etcd(self.endpoints[0])
        try:
            for i in range(OPS_PER_WRITER):
                while not self.stop.is_set() and time.monotonic() < give_up:
                    try:
                        self.acked.extend(self._op(client, i))
                        break
                    except grpc.RpcError:  # possibly committed anyway: the history decides
                        self.failures += 1
                        client.close()
                        index += 1
                        client = Etcd(self.endpoints[index % len(self.endpoints)])
                        time.sleep(0.05)
                else:
                    return
                self.done_ops = i + 1
        finally:
            client.close()

    def _op(self, client: Etcd, i: int) -> list[Event]:
        key = PREFIX + f"{self.name}/{i % 7}".encode()
        value = f"{self.name}-{i}".encode()
        if i % 10 == 9:  # two keys in one revision: events sharing a revision must stay together
            other = PREFIX + f"{self.name}/txn".encode()
            r = client.kv.Txn(pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=key, value=value)),
                pb.RequestOp(request_put=pb.PutRequest(key=other, value=value)),
            ]), timeout=3)  # fmt: skip
            return [(r.header.revision, "PUT", key, value), (r.header.revision, "PUT", other, value)]
        if i % 5 == 4:
            r = client.kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=3)
            return [(r.header.revision, "DELETE", key, b"")] if r.deleted else []
        r = client.put(key, value, timeout=3)
        return [(r.header.revision, "PUT", key, value)]


def replay(events: list[Event], upto: int) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for rev, kind, key, value in events:
        if rev > upto:
            break
        if kind == "PUT":
            state[key] = value
        else:
            state.pop(key, None)
    return state


def test_watchers_on_every_member_see_the_committed_sequence_across_leader_kill(cluster: ProcessCluster) -> None:
    # Fails if: a watcher misses, repeats or reorders an event (also across its resume on another
    # member, or on the restarted member while it catches up), sees a different key/value than
    # committed, a watch is canceled by the server, the members' histories differ, the history
    # lacks an acknowledged write, has a revision gap, or disagrees with range reads at past revisions,
    # or a lease expiry is not one revision of DELETEs.
    probe = Etcd(cluster.endpoints[0])
    start_rev = int(probe.get(b"/").header.revision) + 1
    # Three keys on a lease nobody keeps alive: its expiry (a revoke through the log, around the
    # leader kill) must reach every watcher as three DELETEs in one revision.
    lease_id = int(probe.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=10).ID)
    leased = [PREFIX + b"leased/%d" % i for i in range(3)]
    for k in leased:
        probe.put(k, b"expiring", lease=lease_id)
    probe.close()
    eps = cluster.endpoints
    recorders = [
        WatchRecorder(m.name, eps[i:] + eps[:i], PREFIX, start_rev, deadline_s=90, prev_kv=True,
                      progress_every_s=0.1)
        for i, m in enumerate(cluster.members)
    ]
    for r in recorders:
        r.start()
    leader = leader_of(cluster)
    writers = [Writer(f"w{j}", eps[j:] + eps[:j]) for j in range(2)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: min(w.done_ops for w in writers) >= OPS_PER_WRITER * 2 // 5, 30, "writes before the kill")
        leader.kill()
        time.sleep(1.0)
        leader.start()
        cluster.wait_ready(members=[leader])
        # A watch on the restarted member at once, from the start: it replays history that member may
        # still be catching up on, then follows live.
        late = WatchRecorder("restarted", [leader.endpoint], PREFIX, start_rev, deadline_s=60, prev_kv=True,
                             progress_every_s=0.1)
        late.start()
        recorders.append(late)
        for t in threads:
            t.join(timeout=WRITE_PHASE_MAX_S + 5)
        assert not any(t.is_alive() for t in threads)
        assert [w.done_ops for w in writers] == [OPS_PER_WRITER] * 2, [w.done_ops for w in writers]

        reader = Etcd(eps[0])
        wait_for(lambda: not reader.get(PREFIX + b"leased/", range_end=prefix_end(PREFIX + b"leased/")).kvs, 20,
                 "the leased keys to expire")
        final = reader.kv.Range(pb.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX)), timeout=10)
        final_rev = int(final.header.revision)
        t0 = time.monotonic()
        for r in recorders:
            r.wait_until(final_rev, 20)
        caught_up_s = time.monotonic() - t0
        progressed = {r.name: r.wait_progress(final_rev, 5) for r in recorders}
    finally:
        for w in writers:
            w.stop.set()
        t1 = time.monotonic()
        for r in recorders:
            r.stop()
        print(f"recorders stopped in {time.monotonic() - t1:.2f}s")

    assert all(progressed.values()), progressed
    truth = watch_once_history(eps[0], PREFIX, start_rev, final_rev)
    for m in cluster.members[1:]:  # every member (the restarted one too) has the same history
        assert watch_once_history(m.endpoint, PREFIX, start_rev, final_rev) == truth, m.name
    revisions = sorted({e[0] for e in truth})
    assert revisions == list(range(start_rev, final_rev + 1))  # only this test writes to this cluster
    assert [e[0] for e in truth] == sorted(e[0] for e in truth)
    acked = [e for w in writers for e in w.acked]
    assert set(acked) <= set(truth), sorted(set(acked) - set(truth))[:5]
    assert len(acked) >= 2 * OPS_PER_WRITER * 3 // 4  # deletes of an already deleted key add nothing
    expiry = [e for e in truth if e[2] in leased and e[1] == "DELETE"]
    assert [e[2] for e in expiry] == leased and len({e[0] for e in expiry}) == 1, expiry

    # The history agrees with MVCC range reads at past revisions.
    for rev in [*range(start_rev, final_rev + 1, max(1, (final_rev - start_rev) // 8)), final_rev]:
        got = reader.kv.Range(pb.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX), revision=rev), timeout=10)
        assert {bytes(kv.key): bytes(kv.value) for kv in got.kvs} == replay(truth, rev), rev
    reader.close()

    for r in recorders:
        assert not [e for e in r.errors if e.startswith(FATAL)], (r.name, r.errors)
        assert r.events == truth, (r.name, len(r.events), len(truth), _first_difference(r.events, truth))
        assert r.progress and progress_violations(r) == [], (r.name, progress_violations(r)[:3], len(r.progress))
        assert r.prevs == expected_prevs(truth), (r.name, _first_difference(r.prevs, expected_prevs(truth)))
    killed = next(r for r in recorders if r.endpoints[0] == leader.endpoint and r.name != "restarted")
    assert killed.reconnects, "the watcher on the killed leader never had to resume elsewhere"
    print(f"watchers caught up {caught_up_s:.2f}s after the last write; errors {[r.errors for r in recorders]}")
    print(f"revisions {start_rev}..{final_rev}, {len(truth)} events, writer failures "
          f"{[w.failures for w in writers]}, reconnects {[(r.name, r.reconnects) for r in recorders]}")


def _first_difference(got: list[Any], want: list[Any]) -> tuple[int, Any, Any]:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return i, a, b
    i = min(len(got), len(want))
    return i, got[i] if i < len(got) else None, want[i] if i < len(want) else None


def test_stalled_watchers_fall_behind_and_catch_up_exactly(cluster: ProcessCluster) -> None:
    # A watcher that does not read lets the HTTP/2 window fill, so the server stops taking from
    # its bounded buffer (1024 events) and must move it to the catch-up path, replaying from the
    # history. ~3 MB in 4000 events is far beyond the 64 KiB window and the buffer.
    # Fails if: a stalled watcher (on the leader or on a follower) loses, repeats or reorders events
    # once it reads again, or the apply loop waits for it (writes then stall: the bounded write
    # phase fails).
    prefix = b"/wc-slow/"
    client = Etcd(cluster.endpoints[0])
    start_rev = int(client.get(b"/").header.revision) + 1
    eps = cluster.endpoints
    leader = leader_of(cluster)
    follower = next(m for m in cluster.members if m is not leader)
    recorders = [
        WatchRecorder(f"stalled-{m.name}", [m.endpoint], prefix, start_rev, deadline_s=60, stall_s=STALL_S,
                      channel_options=(("grpc.http2.bdp_probe", 0),), prev_kv=True, progress_every_s=0.2)
        for m in (leader, follower)
    ]
    recorders.append(WatchRecorder("reader", [eps[2]], prefix, start_rev, deadline_s=60, progress_every_s=0.05))
    for r in recorders:
        r.start()
    value = b"v" * 700
    try:
        t0 = time.monotonic()
        for i in range(80):  # 50 keys per revision: whole revisions must stay together
            # The same 50 keys each time, so every event after the first txn carries a prev_kv.
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"%d" % k, value=value + b"%d" % i))
                   for k in range(50)]
            client.kv.Txn(pb.TxnRequest(success=ops), timeout=10)
        write_s = time.monotonic() - t0  # a blocked apply loop would have failed a Txn (10 s deadline)
        final_rev = int(client.get(b"/").header.revision)
        for r in recorders:
            r.wait_until(final_rev, 30)
        progressed = {r.name: r.wait_progress(final_rev, 5) for r in recorders}
    finally:
        for r in recorders:
            r.stop()
        client.close()
    assert all(progressed.values()), progressed
    truth = watch_once_history(eps[1], prefix, start_rev, final_rev, timeout=30)
    assert len(truth) == 80 * 50 and [e[0] for e in truth] == sorted(e[0] for e in truth)
    for r in recorders:
        assert not r.errors, (r.name, r.errors)
        assert r.events == truth, (r.name, len(r.events), len(truth), _first_difference(r.events, truth))
        assert r.progress and progress_violations(r) == [], (r.name, progress_violations(r)[:3], len(r.progress))
        if r.prev_kv:
            assert r.prevs == expected_prevs(truth), (r.name, _first_difference(r.prevs, expected_prevs(truth)))
    print(f"4000 events written in {write_s:.2f}s while two watchers were stalled for {STALL_S}s")


def test_watchers_on_a_member_that_catches_up_by_snapshot(tmp_path: Path) -> None:
    # A follower is killed; the leader then writes far more than --snapshot-count entries and
    # compacts its log past the follower's last index, so the restarted follower can only catch up
    # by receiving a snapshot and replacing its store. Two watchers use only that follower: one that
    # was there before the kill and resumes from its last revision + 1, one created from the start
    # revision as soon as the port opens (without hasleader, so before the snapshot arrives). Both
    # must get every event exactly once (the snapshot carries the MVCC history to replay from).
    # Fails if: either misses, repeats or reorders events or prev_kv values, or the leader did not
    # compact past the follower (then the snapshot path was not taken and this test is void).
    cluster = ProcessCluster(tmp_path / "snap", 3, snapshot_count=40)
    prefix = b"/wc-snap/"
    try:
        cluster.start()
        leader = leader_of(cluster)
        follower = next(m for m in cluster.members if m is not leader)
        writer = Etcd(leader.endpoint)
        start_rev = int(writer.get(b"/").header.revision) + 1
        resumer = WatchRecorder("resumer", [follower.endpoint], prefix, start_rev, deadline_s=60, prev_kv=True,
                                progress_every_s=0.1)
        resumer.start()
        late = WatchRecorder("late", [follower.endpoint], prefix, start_rev, deadline_s=60, prev_kv=True,
                             require_leader=False, progress_every_s=0.1)
        recorders = [resumer, late]
        try:
            for i in range(10):
                writer.put(prefix + b"%d" % (i % 9), b"before-%d" % i)
            killed_rev = int(writer.get(b"/").header.revision)
            assert resumer.wait_until(killed_rev, 10)
            follower.kill()
            for i in range(200):
                writer.put(prefix + b"%d" % (i % 9), b"during-%d" % i)
            late.start()  # retries every 0.1 s until the restarted member accepts it
            follower.start()
            for i in range(20):
                writer.put(prefix + b"%d" % (i % 9), b"after-%d" % i)
            final_rev = int(writer.get(b"/").header.revision)
            for r in recorders:
                r.wait_until(final_rev, 20)
            # Idle and caught up: a progress request must now be answered with the final revision.
            progressed = {r.name: r.wait_progress(final_rev, 5) for r in recorders}
        finally:
            for r in recorders:
                r.stop()
            writer.close()
        assert all(progressed.values()), progressed
        truth = watch_once_history(follower.endpoint, prefix, start_rev, final_rev)
        assert len(truth) == 230
        for r in recorders:
            assert not [e for e in r.errors if e.startswith(FATAL)], (r.name, r.errors)
            assert r.events == truth, (r.name, len(r.events), len(truth), _first_difference(r.events, truth))
            assert r.progress and progress_violations(r) == [], (r.name, progress_violations(r)[:3], len(r.progress))
            assert r.prevs == expected_prevs(truth), (r.name, _first_difference(r.prevs, expected_prevs(truth)))
        assert resumer.reconnects, "the resumer's member was killed: it must have reconnected"
    finally:
        kill_cluster(cluster)
    compacted = [int(m) for m in re.findall(r"snapshot at index (\d+)", leader.log_text())]
    assert compacted and max(compacted) > killed_rev + 100, (compacted, killed_rev)
    print(f"leader compacted at {compacted}; follower was killed at revision {killed_rev}; "
          f"late watcher errors before it connected: {len(late.errors)}")


def test_watcher_on_a_member_without_leader_is_told_and_resumes(cluster: ProcessCluster) -> None:
    # The two other members are SIGSTOPped: the remaining one has no leader, so a hasleader watch
    # stream on it must end with Unavailable "etcdserver: no leader" (as etcd 3.4 does, within a few
    # election timeouts) and a new one is refused at once. The watcher then resumes on the others
    # once they are back, and its record must still be the committed history.
    # Fails if: the stream is not ended (the watcher never reconnects), a new hasleader watch is
    # accepted without a leader, or the resumed record differs from the history.
    prefix = b"/wc-noleader/"
    lone, others = cluster.members[0], cluster.members[1:]
    writer = Etcd(others[0].endpoint)
    start_rev = int(writer.get(b"/").header.revision) + 1
    recorder = WatchRecorder("lone", [m.endpoint for m in cluster.members], prefix, start_rev, deadline_s=60)
    recorder.start()
    try:
        for i in range(5):
            writer.put(prefix + b"%d" % i, b"before")
        assert recorder.wait_until(start_rev + 4, 10)
        for m in others:
            m.pause()
        try:
            wait_for(lambda: bool(recorder.errors), 10, "the lone member to end the hasleader watch stream")
            assert recorder.errors[0].endswith("StatusCode.UNAVAILABLE"), recorder.errors
            lone_client = Etcd(lone.endpoint)
            try:
                create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=prefix))
                with pytest.raises(grpc.RpcError) as refused:
                    list(EtcdStub(lone_client.channel, "etcdserverpb.Watch").Watch(
                        iter([create]), timeout=5, metadata=(("hasleader", "true"),)))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert refused.value.details() == "etcdserver: no leader"
            finally:
                lone_client.close()
        finally:
            for m in others:
                m.resume()
        for i in range(5):
            wait_for(lambda i=i: writer.put(prefix + b"%d" % i, b"after") is not None, 15, "a write after resume")
        final_rev = int(writer.get(b"/").header.revision)
        assert recorder.wait_until(final_rev, 20)
    finally:
        recorder.stop()
        writer.close()
    truth = watch_once_history(lone.endpoint, prefix, start_rev, final_rev)
    assert recorder.events == truth, _first_difference(recorder.events, truth)
    assert recorder.reconnects
