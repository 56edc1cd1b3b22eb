"""etcdctl 3.4 coordination commands against a 3-member Conclave cluster (issue 5).

watch, lease, lock, elect, member add/promote/remove/update with real processes joining and
leaving, endpoint hashkv, snapshot save + restore into a new cluster, move-leader, alarms,
defrag (check perf is in bench/cluster_bench.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, etcdctl_path, leader_of, wait_for

ETCDCTL = etcdctl_path()
if ETCDCTL is None:
    pytest.skip("etcdctl is not installed", allow_module_level=True)


def ctl(eps: list[str], *args: str, stdin: str | None = None, timeout: float = 30) -> tuple[int, str]:
    assert ETCDCTL is not None
    done = subprocess.run(
        [ETCDCTL, "--endpoints=" + ",".join(eps), "--dial-timeout=5s", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def spawn(eps: list[str], *args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    assert ETCDCTL is not None
    return subprocess.Popen(
        [ETCDCTL, "--endpoints=" + ",".join(eps), "--dial-timeout=5s", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=stdin, start_new_session=True, bufsize=0,
    )


_pending: dict[int, bytes] = {}


def read_lines(p: subprocess.Popen[bytes], n: int, timeout: float = 15) -> list[str]:
    """Read n lines from a child's stdout, bounded in time (unbuffered: select must see all data)."""
    import selectors

    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = _pending.pop(p.pid, b"")
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    sel.close()
    lines = buf.split(b"\n")
    out, rest = lines[:n], b"\n".join(lines[n:])
    if len(lines) <= n:
        out, rest = lines[:-1], lines[-1]
    _pending[p.pid] = rest
    return [x.decode() for x in out]


def output(p: subprocess.Popen[bytes]) -> str:
    assert p.stdout is not None
    return (_pending.pop(p.pid, b"") + p.stdout.read()).decode()


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        os.killpg(p.pid, sig)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


@pytest.fixture(scope="module")
def cluster(module_cluster: ProcessCluster) -> ProcessCluster:
    return module_cluster


def test_watch_prefix_prev_kv_history_and_interactive(cluster: ProcessCluster) -> None:
    eps = cluster.endpoints
    assert ctl(eps, "put", "w/a", "1")[0] == 0
    _rc, out = ctl(eps, "get", "w/a", "-w", "json")
    start = json.loads(out)["header"]["revision"]
    live = spawn(eps[1:2], "watch", "--prefix", "w/", "--prev-kv")
    hist = spawn(eps[2:3], "watch", "w/a", "--rev", str(start))
    time.sleep(0.5)
    assert ctl(eps, "put", "w/a", "2")[0] == 0
    assert ctl(eps, "del", "w/a")[0] == 0
    got = read_lines(live, 8)
    assert got == ["PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2"], got
    assert read_lines(hist, 7) == ["PUT", "w/a", "1", "PUT", "w/a", "2", "DELETE"]
    stop(live)
    stop(hist)
    inter = spawn(eps, "watch", "-i", stdin=subprocess.PIPE)
    assert inter.stdin is not None
    inter.stdin.write(b"watch w/i\n")
    inter.stdin.flush()
    time.sleep(0.5)
    assert ctl(eps, "put", "w/i", "x")[0] == 0
    assert read_lines(inter, 3) == ["PUT", "w/i", "x"]
    stop(inter)


def test_lease_grant_timetolive_keepalive_list_revoke(cluster: ProcessCluster) -> None:
    eps = cluster.endpoints
    rc, out = ctl(eps, "lease", "grant", "30")
    assert rc == 0 and out.startswith("lease ") and "granted with TTL(30s)" in out, out
    lid = out.split()[1]
    assert ctl(eps, "put", "l/k", "v", "--lease", lid)[0] == 0
    rc, out = ctl(eps, "lease", "timetolive", lid, "--keys")
    assert rc == 0 and f"lease {lid} granted with TTL(30s)" in out and "attached keys([l/k])" in out, out
    rc, out = ctl(eps, "lease", "list")
    assert rc == 0 and lid in out
    rc, out = ctl(eps, "lease", "keep-alive", "--once", lid)
    assert rc == 0 and f"lease {lid} keepalived with TTL(30)" in out, out
    rc, out = ctl(eps, "lease", "revoke", lid)
    assert rc == 0 and f"lease {lid} revoked" in out
    rc, out = ctl(eps, "get", "l/k")
    assert rc == 0 and out == ""
    rc, out = ctl(eps, "lease", "timetolive", lid)
    assert "already expired" in out, out
    rc, out = ctl(eps, "lease", "revoke", lid)
    assert rc != 0 and "requested lease not found" in out
    rc, out = ctl(eps, "lease", "grant", "9000000001")
    assert rc != 0 and "too large lease TTL" in out


def test_lock_is_mutually_exclusive_and_passes_on_when_holder_dies(cluster: ProcessCluster, tmp_path: Path) -> None:
    eps = cluster.endpoints
    log = tmp_path / "lock.log"
    body = f"echo start $$ >> {log}; sleep 1; echo end $$ >> {log}"
    procs = [spawn(eps[i : i + 1], "lock", "--ttl", "2", "L1", "--", "sh", "-c", body) for i in range(3)]
    for p in procs:
        p.wait(30)
        assert p.returncode == 0, output(p)
    lines = log.read_text().split()
    events = list(zip(lines[0::2], lines[1::2], strict=True))
    assert len(events) == 6
    # Mutual exclusion: every start is followed by the end of the same holder.
    for i in range(0, 6, 2):
        assert events[i][0] == "start" and events[i + 1] == ("end", events[i][1]), events
    # A holder that dies (kill -9, so no unlock) loses the lock when its lease expires.
    holder = spawn(eps, "lock", "--ttl", "2", "L2")
    assert read_lines(holder, 1)[0].startswith("L2/")
    waiter = spawn(eps, "lock", "--ttl", "2", "L2", "echo", "second")
    time.sleep(1.0)
    assert waiter.poll() is None, "the second locker must wait while the first holds the lock"
    t0 = time.monotonic()
    stop(holder, signal.SIGKILL)
    waiter.wait(30)
    assert "second" in output(waiter)
    assert time.monotonic() - t0 < 15


def test_elect_campaign_observe_and_failover(cluster: ProcessCluster) -> None:
    eps = cluster.endpoints
    observer = spawn(eps[2:3], "elect", "-l", "E1")
    first = spawn(eps[0:1], "elect", "E1", "p1")
    assert read_lines(first, 2)[1] == "p1"
    second = spawn(eps[1:2], "elect", "E1", "p2")
    obs = read_lines(observer, 2)
    assert obs[1] == "p1", obs
    time.sleep(0.5)
    assert second.poll() is None
    # etcdctl 3.4's elect has no --ttl (its session lease is 60 s), so the leader is killed with
    # SIGINT, on which it resigns; takeover after a kill -9 is the lock test's (lease expiry).
    stop(first, signal.SIGINT)
    assert read_lines(second, 2, timeout=20)[1] == "p2"
    assert read_lines(observer, 2, timeout=20)[1] == "p2"
    stop(second)
    stop(observer)


def test_endpoint_hashkv_move_leader_defrag_alarm(cluster: ProcessCluster) -> None:
    eps = cluster.endpoints
    assert ctl(eps, "put", "hashkv-probe", "x")[0] == 0  # a non-empty store: a hash of 0 is left out of the JSON
    rc, out = ctl(eps, "endpoint", "hashkv", "--cluster", "-w", "json")
    assert rc == 0
    hashes = {h["HashKV"].get("hash") for h in json.loads(out)}
    assert len(hashes) == 1
    leader = leader_of(cluster)
    target = next(m for m in cluster.members if m is not leader)
    tid = Etcd(target.endpoint).status().header.member_id
    rc, out = ctl(eps, "move-leader", format(tid, "x"))
    assert rc == 0 and "Leadership transferred from" in out and format(tid, "x") in out, out
    assert leader_of(cluster) is target
    rc, out = ctl(eps, "defrag", "--cluster")
    assert rc == 0 and out.count("Finished defragmenting etcd member") == 3
    rc, out = ctl(eps, "alarm", "list")
    assert rc == 0 and out == ""


def test_quota_raises_nospace_until_compacted_and_disarmed(cluster_factory: Callable[..., ProcessCluster]) -> None:
    c = cluster_factory(1, extra_args=["--quota-backend-bytes", "20000"])
    eps = c.endpoints
    wait_for(lambda: ctl(eps, "put", "warm", "up")[0] == 0, 20, "first write")
    out = ""
    for _ in range(100):
        rc, out = ctl(eps, "put", "q", "x" * 1000)
        if rc != 0:
            break
    assert "database space exceeded" in out, out
    rc, out = ctl(eps, "alarm", "list")
    assert "alarm:NOSPACE" in out, out
    rev = json.loads(ctl(eps, "get", "q", "-w", "json")[1])["header"]["revision"]
    assert ctl(eps, "compaction", str(rev))[0] == 0
    assert ctl(eps, "defrag")[0] == 0
    rc, out = ctl(eps, "alarm", "disarm")
    assert rc == 0 and "alarm:NOSPACE" in out
    rc, out = ctl(eps, "put", "q", "small")
    assert rc == 0, out


def test_membership_learner_join_promote_update_remove(cluster_factory: Callable[..., ProcessCluster]) -> None:
    c = cluster_factory(3)
    eps = c.endpoints
    wait_for(lambda: ctl(eps, "put", "before", "join")[0] == 0, 20, "first write")
    new = c.add_member_process("m4")
    rc, out = ctl(eps, "member", "add", "m4", "--peer-urls", new.peer_url, "--learner")
    assert rc == 0 and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out, out
    rc, out = ctl(eps, "member", "add", "m5", "--peer-urls", "http://127.0.0.1:1", "--learner")
    assert rc != 0 and "too many learner members in cluster" in out, out
    new.start()
    c.wait_ready(30, [new])
    wait_for(lambda: ctl([new.endpoint], "get", "before", "--consistency=s")[1] == "before\njoin\n", 20,
             "the learner to catch up")
    rc, out = ctl([new.endpoint], "put", "x", "y")
    assert rc != 0 and "rpc not supported for learner" in out, out
    members = json.loads(ctl(eps, "member", "list", "-w", "json")[1])["members"]
    m4 = next(m for m in members if new.peer_url in m["peerURLs"])
    assert m4.get("isLearner") is True
    m1 = next(m for m in members if m["name"] == "m1")
    rc, out = ctl(eps, "member", "promote", format(m1["ID"], "x"))
    assert rc != 0 and "can only promote a learner member" in out, out
    rc, out = ctl(eps, "member", "promote", format(m4["ID"], "x"))
    assert rc == 0 and "promoted" in out, out
    assert ctl([new.endpoint], "put", "from", "m4")[0] == 0
    # The joined member is a full voter: it can lead (its configuration is the cluster's).
    rc, out = ctl(eps, "move-leader", format(m4["ID"], "x"))
    assert rc == 0 and f"to {m4['ID']:x}" in out, out
    rc, out = ctl(eps, "member", "update", format(m4["ID"], "x"), f"--peer-urls={new.peer_url}")
    assert rc == 0 and "updated" in out, out
    rc, out = ctl([new.endpoint], "member", "remove", format(m1["ID"], "x"))
    assert rc == 0 and "removed" in out, out
    wait_for(lambda: not c.members[0].alive(), 15, "the removed member to stop")
    assert "removed from the cluster" in c.members[0].log_text()
    rest = [m.endpoint for m in c.members[1:]]
    rc, out = ctl(rest, "member", "list")
    assert rc == 0 and out.count("started") == 3 and "m1" not in out
    assert ctl(rest, "put", "after", "remove")[0] == 0
    rc, out = ctl(rest, "endpoint", "hashkv", "--cluster", "-w", "json")
    assert len({h["HashKV"]["hash"] for h in json.loads(out)}) == 1


def test_snapshot_save_and_restore_into_a_new_cluster(
    cluster_factory: Callable[..., ProcessCluster], tmp_path: Path
) -> None:
    a = cluster_factory(3)
    wait_for(lambda: ctl(a.endpoints, "put", "warm", "up")[0] == 0, 20, "first write")
    for i in range(30):  # (a put that meets an election on a loaded machine is tried again: puts are idempotent)
        wait_for(lambda i=i: ctl(a.endpoints, "put", f"s/{i:02d}", f"v{i}")[0] == 0, 20, f"put s/{i:02d}")
    backup = tmp_path / "backup.db"
    rc, out = ctl(a.endpoints[:1], "snapshot", "save", str(backup))
    assert rc == 0 and "Snapshot saved at" in out, out
    want = ctl(a.endpoints, "get", "s/", "--prefix")[1]
    a.stop()
    b = ProcessCluster(tmp_path / "restored", 3)
    initial = ",".join(f"{m.name}={m.peer_url}" for m in b.members)
    for m in b.members:
        done = subprocess.run(
            [sys.executable, "-m", "conclave", "snapshot", "restore", str(backup), "--data-dir", str(m.data_dir),
             "--name", m.name, "--initial-cluster", initial, "--initial-cluster-token", b.token,
             "--initial-advertise-peer-urls", m.peer_url],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
    b.start()
    try:
        wait_for(lambda: ctl(b.endpoints, "get", "s/", "--prefix")[1] == want, 30, "the restored data")
        assert ctl(b.endpoints, "put", "new", "write")[0] == 0
        rc, out = ctl(b.endpoints, "endpoint", "hashkv", "--cluster", "-w", "json")
        assert len({h["HashKV"]["hash"] for h in json.loads(out)}) == 1
    finally:
        b.stop()
    bad = tmp_path / "bad.db"
    bad.write_bytes(backup.read_bytes()[:-1] + b"\0")
    done = subprocess.run([sys.executable, "-m", "conclave", "snapshot", "restore", str(bad),
                           "--data-dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "corrupt" in done.stderr and "Traceback" not in done.stderr


# etcdctl check perf (a fixed 60 s load) is a benchmark: bench/cluster_bench.py runs --load=s and m
# against Conclave and etcd side by side (bench/README.md).


# ------------------------------------------------ one lock and one election with etcd's recipe (issue 10)

# Run as a separate process per contender kind. Every interval is recorded inside the hold (after
# acquiring, before releasing), with time.monotonic(), which is one clock for every process of the
# machine; so two recorded intervals that overlap prove two holders at once.
CONTENDER = r'''
import json, os, subprocess, sys, time

HOLD_S = 0.2


def ready_then_wait_for_go(log, role):
    """Start contending together, once every process has imported and connected (a slow start
    under load must not serialise the contenders and leave nothing to exclude)."""
    open(f"{log}.ready-{role}", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(f"{log}.go"):
        assert time.monotonic() < deadline, "no go signal"
        time.sleep(0.02)


def record(log, who, token, key, start, end):
    with open(log, "a") as f:
        f.write(json.dumps({"who": who, "token": token, "key": key, "start": start, "end": end}) + "\n")


def hold(log, who, token, key):
    start = time.monotonic()
    time.sleep(HOLD_S)
    record(log, who, token, key, start, time.monotonic())


role, grpc_eps, native_eps, log, rounds, etcdctl = sys.argv[1:7]
rounds = int(rounds)
if role == "hold":  # run by etcdctl lock while it holds the lock, which names its key in the environment
    key = os.environ["ETCD_LOCK_KEY"]  # (ETCD_LOCK_REV is a header revision, not the fencing token)
    got = subprocess.run([etcdctl, "--endpoints=" + grpc_eps, "get", key, "-w", "json"], check=True,
                         capture_output=True, timeout=30)
    hold(log, "etcdctl", json.loads(got.stdout)["kvs"][0]["create_revision"], key)
elif role == "etcdctl":
    ready_then_wait_for_go(log, role)
    for _ in range(rounds):
        subprocess.run([etcdctl, "--endpoints=" + grpc_eps, "--dial-timeout=5s", "lock", "--ttl", "10", "jobs",
                        "--", sys.executable, __file__, "hold", grpc_eps, native_eps, log, "0", etcdctl],
                       check=True, timeout=90)
elif role == "client":
    from conclave import Client
    with Client(native_eps.split(","), timeout=20) as c:
        c.get("warm")
        ready_then_wait_for_go(log, role)
        for _ in range(rounds):
            with c.lock("jobs", ttl=10, timeout=60) as held:
                hold(log, "client", held.fencing_token, held.key.decode())
elif role == "ctl-elect":  # leader once etcdctl prints the leader key; SIGINT makes it resign
    import signal
    ready_then_wait_for_go(log, role)
    for i in range(rounds):
        p = subprocess.Popen([etcdctl, "--endpoints=" + grpc_eps, "--dial-timeout=5s", "elect", "E4", f"ctl-{i}"],
                             stdout=subprocess.PIPE, text=True)
        key = p.stdout.readline().strip()
        assert p.stdout.readline().strip() == f"ctl-{i}"
        got = subprocess.run([etcdctl, "--endpoints=" + grpc_eps, "get", key, "-w", "json"], check=True,
                             capture_output=True, timeout=30)
        hold(log, "etcdctl", json.loads(got.stdout)["kvs"][0]["create_revision"], key)
        p.send_signal(signal.SIGINT)
        assert p.wait(30) in (0, 130, -2), p.returncode
elif role == "client-elect":
    from conclave import Client
    with Client(native_eps.split(","), timeout=20) as c:
        c.get("warm")
        ready_then_wait_for_go(log, role)
        for i in range(rounds):
            e = c.election("E4", ttl=10)
            token = e.campaign(f"client-{i}", timeout=60)
            assert e.is_leader()
            hold(log, "client", token, e.key.decode())
            e.resign()
elif role == "v3election":
    import grpc
    from conclave.api import pb
    from conclave.api.stubs import EtcdStub
    channel = grpc.insecure_channel(grpc_eps.split(",")[0])
    election = EtcdStub(channel, "v3electionpb.Election")
    lease = EtcdStub(channel, "etcdserverpb.Lease")
    grpc.channel_ready_future(channel).result(timeout=30)
    ready_then_wait_for_go(log, role)
    for i in range(rounds):
        lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=10), timeout=10).ID
        leader = election.Campaign(pb.CampaignRequest(name=b"E4", lease=lid, value=b"v3-%d" % i), timeout=60).leader
        seen = election.Leader(pb.LeaderRequest(name=b"E4"), timeout=10).kv
        assert seen.key == leader.key and seen.create_revision == leader.rev
        hold(log, "v3election", leader.rev, leader.key.decode())
        election.Resign(pb.ResignRequest(leader=leader), timeout=10)
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lid), timeout=10)
elif role == "v3lock":
    import grpc
    from conclave.api import pb
    from conclave.api.stubs import EtcdStub
    channel = grpc.insecure_channel(grpc_eps.split(",")[0])
    lock = EtcdStub(channel, "v3lockpb.Lock")
    lease = EtcdStub(channel, "etcdserverpb.Lease")
    kvs = EtcdStub(channel, "etcdserverpb.KV")
    grpc.channel_ready_future(channel).result(timeout=30)
    ready_then_wait_for_go(log, role)
    for _ in range(rounds):
        lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=10), timeout=10).ID
        key = lock.Lock(pb.LockRequest(name=b"jobs", lease=lid), timeout=60).key
        token = kvs.Range(pb.RangeRequest(key=key), timeout=10).kvs[0].create_revision
        hold(log, "v3lock", token, key.decode())
        lock.Unlock(pb.UnlockRequest(key=key), timeout=10)
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lid), timeout=10)
'''


def contenders(cluster: ProcessCluster, tmp_path: Path, roles: list[str], rounds: int) -> list[dict[str, Any]]:
    """Run one process per role; every one must finish (bounded) and exit 0; the intervals they held."""
    assert ETCDCTL is not None
    script = tmp_path / "contender.py"
    script.write_text(CONTENDER)
    log = tmp_path / "holds.jsonl"
    grpc_eps = ",".join(cluster.endpoints)
    native_eps = ",".join(m.native_endpoint for m in cluster.members)
    procs = [
        subprocess.Popen([sys.executable, str(script), role, grpc_eps, native_eps, str(log), str(rounds), ETCDCTL],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        for role in roles
    ]
    try:
        wait_for(lambda: all(Path(f"{log}.ready-{role}").exists() for role in roles)
                 or any(p.poll() is not None for p in procs), 60, "contenders ready")  # a failed one shows below
        Path(f"{log}.go").touch()
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out.decode()[-3000:]
    finally:
        for p in procs:
            stop(p, signal.SIGKILL)
    return [json.loads(line) for line in log.read_text().splitlines()]


def check_one_holder_at_a_time(holds: list[dict[str, Any]], name: str, kinds: list[str], rounds: int) -> None:
    holds.sort(key=lambda h: h["start"])
    assert sorted(h["who"] for h in holds) == sorted(kinds * rounds)
    for before, after in pairwise(holds):
        assert after["start"] >= before["end"], f"two holders at once: {before} and {after}"
        # The fencing token (the key's create revision) grows with every new holder, whoever it is.
        assert after["token"] > before["token"], (before, after)
    for h in holds:  # one key layout: <name>/<lease id in lowercase hex, unpadded>
        prefix, _, lease_hex = h["key"].partition("/")
        assert prefix == name and lease_hex == format(int(lease_hex, 16), "x"), h
    # The three kinds really contended (FIFO hand-over interleaves them), not ran one after another.
    switches = sum(1 for a, b in pairwise(holds) if a["who"] != b["who"])
    assert switches >= 3, [h["who"] for h in holds]


def test_client_lock_etcdctl_lock_and_v3lock_exclude_each_other(cluster: ProcessCluster, tmp_path: Path) -> None:
    holds = contenders(cluster, tmp_path, ["client", "etcdctl", "v3lock"], 4)
    check_one_holder_at_a_time(holds, "jobs", ["client", "etcdctl", "v3lock"], 4)


def test_client_election_etcdctl_elect_and_v3election_never_lead_at_once(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    holds = contenders(cluster, tmp_path, ["client-elect", "ctl-elect", "v3election"], 3)
    check_one_holder_at_a_time(holds, "E4", ["client", "etcdctl", "v3election"], 3)


def test_client_election_etcdctl_elect_and_v3election_see_one_leader(cluster: ProcessCluster) -> None:
    import grpc

    from conclave import Client
    from conclave.api import pb
    from conclave.api.stubs import EtcdStub

    eps = cluster.endpoints
    channel = grpc.insecure_channel(eps[0])
    election = EtcdStub(channel, "v3electionpb.Election")
    lease = EtcdStub(channel, "etcdserverpb.Lease")
    observer = spawn(eps[2:3], "elect", "-l", "E3")
    ctl_candidate: subprocess.Popen[bytes] | None = None
    with Client([m.native_endpoint for m in cluster.members], timeout=20) as client:
        py = client.election("E3", ttl=10)
        try:
            py.campaign("py", timeout=20)
            assert py.key.startswith(b"E3/")
            # etcdctl's observer and the v3election service see the Python client's leadership.
            assert read_lines(observer, 2) == [py.key.decode(), "py"]
            got = election.Leader(pb.LeaderRequest(name=b"E3"), timeout=10).kv
            assert (bytes(got.key), bytes(got.value)) == (py.key, b"py")
            # An etcdctl candidate and a v3election candidate wait behind it.
            ctl_candidate = spawn(eps[1:2], "elect", "E3", "ctl")
            kvs = EtcdStub(channel, "etcdserverpb.KV")
            candidates = pb.RangeRequest(key=b"E3/", range_end=b"E30", count_only=True)
            wait_for(lambda: kvs.Range(candidates, timeout=10).count == 2, 20, "etcdctl's candidate key")
            lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=10).ID
            campaign = election.Campaign.future(pb.CampaignRequest(name=b"E3", lease=lid, value=b"grpc"), timeout=60)
            time.sleep(1.0)
            assert ctl_candidate.poll() is None and not campaign.done()
            assert py.is_leader()
            # The Python leader resigns: the older waiting candidate (etcdctl's) leads, seen by all.
            py.resign()
            line = read_lines(ctl_candidate, 2, timeout=20)
            assert line[1] == "ctl", line
            assert read_lines(observer, 2, timeout=20) == line
            current = py.leader()
            assert current is not None and (current.key.decode(), current.value) == (line[0], b"ctl")
            assert not campaign.done()
            # etcdctl resigns on SIGINT: the v3election candidate leads.
            stop(ctl_candidate, signal.SIGINT)
            leader = campaign.result(timeout=20).leader
            assert bytes(leader.key) == b"E3/%x" % lid
            assert read_lines(observer, 2, timeout=20) == [bytes(leader.key).decode(), "grpc"]
            current = py.leader()
            assert current is not None and current.value == b"grpc"
            assert current.create_revision == leader.rev
            election.Resign(pb.ResignRequest(leader=leader), timeout=10)
        finally:
            if ctl_candidate is not None:
                stop(ctl_candidate)
            stop(observer)
            channel.close()
