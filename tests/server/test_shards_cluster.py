"""Shards on real processes: 3 members with --shards 3 (a meta group and 3 data groups each).

Every group elects a leader, the leaders spread after balancing, keys of each group are written
and read back with their group's revision, a range over all groups is merged, a cross-shard txn
commits atomically (gRPC and etcdctl) or not at all (a failed compare), a kill -9 and restart
recovers every group, `conclave shards` draws the table; and a default (one-group) data dir keeps
today's layout and refuses --shards."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.cli.shards import fetch
from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, etcdctl_path, wait_for

KEYS = {b"01": 1, b"M1": 2, b"a1": 2, b"x1": 3}  # split at K and f


def _view(endpoint: str) -> dict[str, Any]:
    return fetch(endpoint, 3.0)


def _all_led(endpoint: str) -> bool:
    try:
        return all(r["leader"] for r in _view(endpoint)["groups"])
    except OSError:
        return False


def test_three_shards_on_three_members(tmp_path: Path) -> None:
    c = ProcessCluster(tmp_path / "c", 3, extra_args=["--shards", "3"])
    c.start()
    clients = [Etcd(m.endpoint) for m in c.members]
    try:
        m1 = c.members[0]
        wait_for(lambda: _all_led(m1.endpoint), 20, "a leader in every group")
        view = _view(m1.endpoint)
        assert [r["group"] for r in view["groups"]] == [0, 1, 2, 3]
        assert [(r["start"], r["end"]) for r in view["groups"][1:]] == [("", "K"), ("K", "f"), ("f", "")]

        def spread() -> bool:  # one data group per member (the meta group is not balanced)
            counts = Counter(r["leader"] for r in _view(m1.endpoint)["groups"] if r["group"] != 0)
            return sorted(counts.values()) == [1, 1, 1]
        wait_for(spread, 20, "leaders spread over the members")

        e = clients[1]
        for k in KEYS:
            wait_for(lambda k=k: e.put(k, b"v-" + k) is not None, 15, f"put {k!r}")
        revs = {r["group"]: r["revision"] for r in _view(c.members[1].endpoint)["groups"]}
        for k, g in KEYS.items():
            r = clients[2].get(k)
            assert bytes(r.kvs[0].value) == b"v-" + k
            assert r.header.revision == revs[g]  # that group's own revision
        r = e.get(b"\0", range_end=b"\0")
        assert [bytes(x.key) for x in r.kvs] == sorted(KEYS) and r.count == 4 and not r.more
        r = e.get(b"\0", range_end=b"\0", limit=2)
        assert [bytes(x.key) for x in r.kvs] == sorted(KEYS)[:2] and r.more and r.count == 4
        r = e.get(b"\0", range_end=b"\0", sort_order=pb.RangeRequest.DESCEND)
        assert [bytes(x.key) for x in r.kvs] == sorted(KEYS, reverse=True)
        # a watch over every group merges the groups' streams
        got: list[bytes] = []
        created = threading.Event()
        done = threading.Event()
        stop = threading.Event()

        def feed() -> Any:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"\0", range_end=b"\0"))
            stop.wait(15)

        call = EtcdStub(e.channel, "etcdserverpb.Watch").Watch(feed(), timeout=15)

        def consume() -> None:
            with contextlib.suppress(grpc.RpcError):
                for resp in call:
                    if resp.created:
                        created.set()
                    got.extend(bytes(ev.kv.key) for ev in resp.events)
                    if len(got) >= 3:
                        done.set()
                        return
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        assert created.wait(10), "the watch over every group was not created"
        for k in (b"05", b"Q5", b"z5"):
            e.put(k, b"w")
        assert done.wait(10), got
        assert sorted(got) == [b"05", b"Q5", b"z5"]
        stop.set()
        call.cancel()
        # a lease attaches to keys of any group
        lease = e.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=10)
        e.put(b"x9", b"l", lease=lease.ID)
        e.put(b"09", b"l", lease=lease.ID)
        ttl = e.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=10)
        assert sorted(bytes(k) for k in ttl.keys) == [b"09", b"x9"]
        # a txn in one group works as before; one across groups commits atomically (cross-shard commit)
        one = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"02", value=b"t"))])
        assert e.kv.Txn(one, timeout=10).succeeded
        two = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"03", value=b"t")),
                                     pb.RequestOp(request_put=pb.PutRequest(key=b"y3", value=b"t"))])
        r2 = e.kv.Txn(two, timeout=15)
        assert r2.succeeded and len(r2.responses) == 2
        assert [clients[0].value(k) for k in (b"03", b"y3")] == [b"t", b"t"]
        # a compare that fails in one group: nothing is written anywhere, the failure branch answers
        cmp_ = [pb.Compare(key=b"03", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"t"),
                pb.Compare(key=b"y3", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"nope")]
        three = pb.TxnRequest(compare=cmp_,
                              success=[pb.RequestOp(request_put=pb.PutRequest(key=b"03", value=b"no")),
                                       pb.RequestOp(request_put=pb.PutRequest(key=b"y3", value=b"no"))],
                              failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"y3"))])
        r3 = e.kv.Txn(three, timeout=15)
        assert not r3.succeeded and bytes(r3.responses[0].response_range.kvs[0].value) == b"t"
        assert [clients[1].value(k) for k in (b"03", b"y3")] == [b"t", b"t"]
        # etcdctl 3.4's txn across shards, as an operator types it
        ctl = etcdctl_path()
        if ctl is not None:
            script = 'value("03") = "t"\n\nput 03 ctl\nput y3 ctl\n\nput 04 nope\n\n'
            done = subprocess.run([ctl, f"--endpoints={c.members[2].endpoint}", "txn"], input=script,
                                  capture_output=True, text=True, timeout=30, env={**_env(), "ETCDCTL_API": "3"})
            assert done.returncode == 0 and done.stdout == "SUCCESS\n\nOK\n\nOK\n", (done.stdout, done.stderr)
            assert [clients[0].value(k) for k in (b"03", b"y3", b"04")] == [b"ctl", b"ctl", None]

        r_y3 = b"ctl" if ctl is not None else b"t"
        # the Python client's txn across shards, over the native protocol and over gRPC
        from conclave import Client
        from conclave.client import get_op, put_op, value

        for protocol, eps in (("native", [m.native_endpoint for m in c.members]), ("grpc", c.endpoints)):
            with Client(eps, protocol=protocol) as pc:
                t = pc.txn().if_(value("03") == r_y3.decode()).then(
                    put_op("05", protocol), put_op("z6", protocol)).else_(get_op("03")).commit()
                assert t.succeeded, protocol
                assert (pc.get("05"), pc.get("z6")) == (protocol.encode(), protocol.encode())
                t = pc.txn().if_(value("z6") == "nope").then(put_op("05", "no"), put_op("z6", "no")).else_(
                    get_op("z6")).commit()
                assert not t.succeeded and (pc.get("05"), pc.get("z6")) == (protocol.encode(), protocol.encode())
        # kill -9 a member and restart it: every group's data comes back from its own WAL
        victim = c.members[2]
        victim.kill()
        clients[2].close()
        # (a put forwarded to a group leader that was the victim times out: tried again, bounded)
        wait_for(lambda: e.put(b"a2", b"after", timeout=3) is not None, 20, "a put while it is down")
        victim.start()
        c.wait_ready(20, [victim])
        clients[2] = Etcd(victim.endpoint)
        want = {**{k: b"v-" + k for k in KEYS}, b"a2": b"after", b"02": b"t", b"z5": b"w", b"y3": r_y3}

        def recovered() -> bool:
            r = clients[2].get(b"\0", range_end=b"\0", serializable=True)
            got = {bytes(x.key): bytes(x.value) for x in r.kvs}
            return all(got.get(k) == v for k, v in want.items())
        wait_for(recovered, 20, "the restarted member has every group's data")
        for g in (1, 2, 3):
            assert (victim.data_dir / "groups" / str(g) / "wal").is_dir()

        out = subprocess.run([sys.executable, "-m", "conclave", "shards", "--endpoints", m1.endpoint],
                             capture_output=True, text=True, timeout=20, env={"COLUMNS": "160", **_env()})
        assert out.returncode == 0, out.stderr
        assert "[K, f)" in out.stdout and "(meta)" in out.stdout and "split K,f" in out.stdout
        # a DeleteRange over every group: the counts summed, prev_kvs in key order
        before = e.get(b"\0", range_end=b"\0", count_only=True).count
        d = e.kv.DeleteRange(pb.DeleteRangeRequest(key=b"\0", range_end=b"\0", prev_kv=True), timeout=10)
        assert d.deleted == before == len(d.prev_kvs) and before >= 8
        assert [bytes(x.key) for x in d.prev_kvs] == sorted(bytes(x.key) for x in d.prev_kvs)
        assert e.get(b"\0", range_end=b"\0").count == 0
    finally:
        for cl in clients:
            cl.close()
        c.stop()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_default_layout_unchanged_and_split_fixed(tmp_path: Path) -> None:
    c = ProcessCluster(tmp_path / "one", 1)
    c.start()
    m = c.members[0]
    e = Etcd(m.endpoint)
    try:
        wait_for(lambda: e.put(b"k", b"v") is not None, 15, "a put")
    finally:
        e.close()
        c.stop()
    assert not (m.data_dir / "groups").exists() and not (m.data_dir / "shards.json").exists()
    assert (m.data_dir / "member.json").exists() and (m.data_dir / "wal").is_dir()
    m.argv = [*m.argv, "--shards", "3"]
    m.start()
    assert m.proc is not None
    m.proc.wait(timeout=20)
    assert m.proc.returncode != 0
    assert "fixed at cluster creation" in m.log_text()
    out = subprocess.run([sys.executable, "-m", "conclave", "shards", "--endpoints", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and "no endpoint answered" in out.stderr
    time.sleep(0)


def test_leader_balancing_evens_out(tmp_path: Path) -> None:
    """6 data groups on 3 members: balancing ends with every member leading its fair share (2) of
    the data groups (the meta group, which takes no user writes, is left where it is)."""
    c = ProcessCluster(tmp_path / "b", 3, extra_args=["--shards", "6"])
    c.start()
    try:
        ep = c.members[0].endpoint
        wait_for(lambda: _all_led(ep), 20, "a leader in every group")

        def even() -> bool:
            view = _view(ep)
            counts = Counter(r["leader"] for r in view["groups"] if r["group"] != 0)
            return sorted(counts.values()) == [2, 2, 2] and len(view["groups"]) == 7
        wait_for(even, 25, "two leaderships per member")
    finally:
        c.stop()
