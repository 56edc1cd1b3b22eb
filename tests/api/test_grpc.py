"""The etcd v3 gRPC edge over a fake backend, driven by a gRPC client using the private-pool classes."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc
import pytest

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.kv import types as kv

from .conftest import ServedBackend
from .fake_backend import CLUSTER_ID, MEMBER_ID

TIMEOUT_S = 5


def kv_stub(s: ServedBackend) -> EtcdStub:
    return s.stub("etcdserverpb.KV")


def assert_header(h: Any, revision: int) -> None:
    assert (h.cluster_id, h.member_id, h.raft_term, h.revision) == (CLUSTER_ID, MEMBER_ID, 2, revision)


def rpc_error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=TIMEOUT_S, **kwargs)
    return info.value


@pytest.mark.both_engines
def test_put_range_delete_with_full_headers(served: ServedBackend) -> None:
    stub = kv_stub(served)
    put = stub.Put(pb.PutRequest(key=b"a/1", value=b"one"), timeout=TIMEOUT_S)
    assert_header(put.header, 2)
    stub.Put(pb.PutRequest(key=b"a/2", value=b"two"), timeout=TIMEOUT_S)
    again = stub.Put(pb.PutRequest(key=b"a/1", value=b"uno", prev_kv=True), timeout=TIMEOUT_S)
    assert again.prev_kv.value == b"one" and again.prev_kv.version == 1

    got = stub.Range(pb.RangeRequest(key=b"a/1"), timeout=TIMEOUT_S)
    assert_header(got.header, 4)
    (item,) = got.kvs
    assert (item.key, item.value, item.create_revision, item.mod_revision, item.version) == (b"a/1", b"uno", 2, 4, 2)

    ranged = stub.Range(
        pb.RangeRequest(key=b"a/", range_end=b"a0", limit=1, sort_order=pb.RangeRequest.DESCEND), timeout=TIMEOUT_S
    )
    assert [x.key for x in ranged.kvs] == [b"a/2"] and ranged.more and ranged.count == 2

    deleted = stub.DeleteRange(pb.DeleteRangeRequest(key=b"a/", range_end=b"a0", prev_kv=True), timeout=TIMEOUT_S)
    assert deleted.deleted == 2 and sorted(x.key for x in deleted.prev_kvs) == [b"a/1", b"a/2"]
    assert_header(deleted.header, 5)


@pytest.mark.both_engines
def test_txn_maps_compares_and_nested_responses(served: ServedBackend) -> None:
    stub = kv_stub(served)
    stub.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=TIMEOUT_S)
    txn = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"v")],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"k", value=b"w")),
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k")),
            pb.RequestOp(
                request_txn=pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"x"))])
            ),
        ],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))],
    )
    r = stub.Txn(txn, timeout=TIMEOUT_S)
    assert r.succeeded and len(r.responses) == 3
    assert r.responses[0].WhichOneof("response") == "response_put"
    assert r.responses[1].response_range.kvs[0].value == b"w"
    assert r.responses[2].response_txn.responses[0].response_delete_range.deleted == 0
    assert_header(r.header, 3)
    again = stub.Txn(txn, timeout=TIMEOUT_S)  # value is now "w": the failure branch runs
    assert not again.succeeded and again.responses[0].response_range.kvs[0].value == b"w"


@pytest.mark.both_engines
def test_etcd_errors_keep_exact_codes_and_messages(served: ServedBackend) -> None:
    stub = kv_stub(served)
    err = rpc_error(stub.Range, pb.RangeRequest(key=b""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details() == "etcdserver: key is not provided"
    err = rpc_error(stub.Put, pb.PutRequest(key=b"k", lease=99))
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "etcdserver: requested lease not found"
    stub.Put(pb.PutRequest(key=b"k", value=b"1"), timeout=TIMEOUT_S)
    stub.Compact(pb.CompactionRequest(revision=2), timeout=TIMEOUT_S)
    err = rpc_error(stub.Compact, pb.CompactionRequest(revision=2))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.details() == "etcdserver: mvcc: required revision has been compacted"
    err = rpc_error(stub.Range, pb.RangeRequest(key=b"k", revision=1000))
    assert err.details() == "etcdserver: mvcc: required revision is a future revision"


@pytest.mark.both_engines
def test_bad_enum_is_invalid_argument_and_crash_is_internal(served: ServedBackend) -> None:
    stub = kv_stub(served)
    bad = pb.RangeRequest(key=b"k")
    bad.sort_order = 7  # open enums let any number through the wire
    err = rpc_error(stub.Range, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "etcdserver" in (err.details() or "")

    async def explode(req: kv.RangeRequest, **kw: object) -> kv.RangeResponse:
        raise ZeroDivisionError("boom")

    served.backend.range = explode  # type: ignore[method-assign]
    err = rpc_error(stub.Range, pb.RangeRequest(key=b"k"))
    assert err.code() == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in (err.details() or "")


def test_unimplemented_and_auth_disabled(served: ServedBackend) -> None:
    auth = served.stub("etcdserverpb.Auth")
    err = rpc_error(auth.UserAdd, pb.AuthUserAddRequest(name="u", password="p"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    err = rpc_error(served.stub("etcdserverpb.Maintenance").Downgrade, pb.DowngradeRequest())
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not auth.AuthStatus(pb.AuthStatusRequest(), timeout=TIMEOUT_S).enabled
    err = rpc_error(auth.Authenticate, pb.AuthenticateRequest(name="root", password="x"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "etcdserver: authentication is not enabled"


def test_hasleader_metadata_is_honoured(served: ServedBackend) -> None:
    stub = kv_stub(served)
    served.backend.leader = False
    err = rpc_error(stub.Range, pb.RangeRequest(key=b"k"), metadata=(("hasleader", "true"),))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "etcdserver: no leader"
    assert stub.Range(pb.RangeRequest(key=b"k"), timeout=TIMEOUT_S).count == 0  # no metadata: served
    watch = served.stub("etcdserverpb.Watch").Watch
    stream = watch(
        iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))]),
        metadata=(("hasleader", "true"),),
        timeout=TIMEOUT_S,
    )
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


class WatchSession:
    """A bidi Watch stream driven from the test thread through a request queue."""

    def __init__(self, s: ServedBackend) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        self.call = s.stub("etcdserverpb.Watch").Watch(iter(self.requests.get, None), timeout=30)

    def send(self, req: Any) -> None:
        self.requests.put(req)

    def recv(self) -> Any:
        return next(self.call)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


@pytest.mark.both_engines
def test_watch_create_events_cancel_progress(served: ServedBackend) -> None:
    stub = kv_stub(served)
    stub.Put(pb.PutRequest(key=b"w/old", value=b"0"), timeout=TIMEOUT_S)  # revision 2
    w = WatchSession(served)
    try:
        w.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w/", range_end=b"w0", prev_kv=True)))
        created = w.recv()
        assert created.created and created.watch_id == 0
        stub.Put(pb.PutRequest(key=b"w/a", value=b"1"), timeout=TIMEOUT_S)
        stub.Put(pb.PutRequest(key=b"other", value=b"x"), timeout=TIMEOUT_S)
        stub.DeleteRange(pb.DeleteRangeRequest(key=b"w/old"), timeout=TIMEOUT_S)
        seen: list[tuple[int, bytes, int]] = []
        while len(seen) < 2:
            resp = w.recv()
            assert resp.watch_id == 0 and resp.header.cluster_id == CLUSTER_ID
            seen += [(e.type, e.kv.key, e.kv.mod_revision) for e in resp.events]
        assert seen == [(pb.Event.PUT, b"w/a", 3), (pb.Event.DELETE, b"w/old", 5)]

        # A second watcher replays history from a start revision, with a filter.
        w.send(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=b"w/", range_end=b"w0", start_revision=1, filters=[pb.WatchCreateRequest.NODELETE]
                )
            )
        )
        assert w.recv().created
        replay = w.recv()
        assert replay.watch_id == 1 and [e.kv.key for e in replay.events] == [b"w/old", b"w/a"]

        w.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        progress = w.recv()
        assert progress.watch_id == -1 and progress.header.revision == 5 and not progress.events

        w.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=0)))
        canceled = w.recv()
        assert canceled.canceled and canceled.watch_id == 0
    finally:
        w.close()
    deadline = time.monotonic() + TIMEOUT_S  # stream end cancels the remaining watcher (asynchronously)
    while served.call_in_loop(served.backend.watcher_count) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.call_in_loop(served.backend.watcher_count) == 0


def test_watch_from_compacted_revision_is_canceled(served: ServedBackend) -> None:
    stub = kv_stub(served)
    for i in range(3):
        stub.Put(pb.PutRequest(key=b"c", value=str(i).encode()), timeout=TIMEOUT_S)
    stub.Compact(pb.CompactionRequest(revision=3), timeout=TIMEOUT_S)
    w = WatchSession(served)
    try:
        w.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"c", start_revision=2)))
        assert w.recv().created
        resp = w.recv()
        assert resp.canceled and resp.compact_revision == 3
    finally:
        w.close()


@pytest.mark.both_engines
def test_leases(served: ServedBackend) -> None:
    lease = served.stub("etcdserverpb.Lease")
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S)
    assert granted.ID and granted.TTL == 30
    kv_stub(served).Put(pb.PutRequest(key=b"l", value=b"v", lease=granted.ID), timeout=TIMEOUT_S)
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True), timeout=TIMEOUT_S)
    assert ttl.keys == [b"l"] and ttl.grantedTTL == 30
    assert [x.ID for x in lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=TIMEOUT_S).leases] == [granted.ID]
    answers = list(
        lease.LeaseKeepAlive(
            iter([pb.LeaseKeepAliveRequest(ID=granted.ID), pb.LeaseKeepAliveRequest(ID=12345)]), timeout=TIMEOUT_S
        )
    )
    assert [(a.ID, a.TTL) for a in answers] == [(granted.ID, 30), (12345, 0)]
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID), timeout=TIMEOUT_S)
    assert kv_stub(served).Range(pb.RangeRequest(key=b"l"), timeout=TIMEOUT_S).count == 0
    err = rpc_error(lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=granted.ID))
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "etcdserver: requested lease not found"


def test_cluster_and_maintenance(served: ServedBackend) -> None:
    cluster = served.stub("etcdserverpb.Cluster")
    members = cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT_S)
    assert [(m.ID, list(m.clientURLs)) for m in members.members] == [(MEMBER_ID, [f"http://{served.endpoint}"])]
    added = cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["http://10.0.0.9:2380"], isLearner=True), timeout=5)
    assert added.member.isLearner and len(added.members) == 2
    err = rpc_error(cluster.MemberPromote, pb.MemberPromoteRequest(ID=MEMBER_ID))
    assert err.details() == "etcdserver: can only promote a learner member"

    m = served.stub("etcdserverpb.Maintenance")
    kv_stub(served).Put(pb.PutRequest(key=b"first", value=b"1"), timeout=TIMEOUT_S)
    status = m.Status(pb.StatusRequest(), timeout=TIMEOUT_S)
    assert status.version == "3.6.0" and status.leader == MEMBER_ID and status.dbSize > 0
    alarms = m.Alarm(
        pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=MEMBER_ID, alarm=pb.ALARM_NOSPACE), timeout=TIMEOUT_S
    )
    assert [(a.memberID, a.alarm) for a in alarms.alarms] == [(MEMBER_ID, pb.ALARM_NOSPACE)]
    err = rpc_error(kv_stub(served).Put, pb.PutRequest(key=b"full", value=b"1"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "etcdserver: mvcc: database space exceeded"
    m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=MEMBER_ID, alarm=pb.ALARM_NOSPACE), timeout=5)
    assert not m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), timeout=TIMEOUT_S).alarms
    assert m.HashKV(pb.HashKVRequest(), timeout=TIMEOUT_S).hash_revision == 2
    kv_stub(served).Put(pb.PutRequest(key=b"s", value=b"x" * 70_000), timeout=TIMEOUT_S)
    chunks = list(m.Snapshot(pb.SnapshotRequest(), timeout=TIMEOUT_S))
    blob = b"".join(c.blob for c in chunks)
    assert len(chunks) == -(-len(blob) // (32 * 1024)) and chunks[-1].remaining_bytes == 0
    assert [c.remaining_bytes for c in chunks] == [len(blob) - 32 * 1024 * (i + 1) for i in range(len(chunks) - 1)] + [
        0
    ]
    assert blob == served.call_in_loop(served.backend.store.snapshot)
    err = rpc_error(m.MoveLeader, pb.MoveLeaderRequest(targetID=5))
    assert err.details() == "etcdserver: bad leader transferee"


def test_oversized_request_is_refused_by_grpc() -> None:
    s = ServedBackend(max_request_bytes=64 * 1024)
    try:
        err = rpc_error(kv_stub(s).Put, pb.PutRequest(key=b"big", value=b"x" * (700 * 1024)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert kv_stub(s).Put(pb.PutRequest(key=b"ok", value=b"x" * (500 * 1024)), timeout=TIMEOUT_S)
    finally:
        s.close()


@pytest.mark.both_engines
def test_lock_is_mutual_exclusion_in_fifo_order(served: ServedBackend) -> None:
    lease = served.stub("etcdserverpb.Lease")
    lock = served.stub("v3lockpb.Lock")
    a = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S).ID
    b = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S).ID
    held_a = lock.Lock(pb.LockRequest(name=b"mtx", lease=a), timeout=TIMEOUT_S)
    assert held_a.key == b"mtx/" + f"{a:x}".encode()
    again = lock.Lock(pb.LockRequest(name=b"mtx", lease=a), timeout=TIMEOUT_S)  # same lease: same acquisition
    assert again.key == held_a.key
    waiting = lock.Lock.future(pb.LockRequest(name=b"mtx", lease=b), timeout=TIMEOUT_S)
    done = threading.Event()
    waiting.add_done_callback(lambda _f: done.set())
    assert not done.wait(0.3), "B acquired the lock while A held it"
    lock.Unlock(pb.UnlockRequest(key=held_a.key), timeout=TIMEOUT_S)
    held_b = waiting.result(timeout=TIMEOUT_S)
    assert held_b.key == b"mtx/" + f"{b:x}".encode() and held_b.header.revision > held_a.header.revision


def test_election_campaign_proclaim_observe_resign(served: ServedBackend) -> None:
    lease = served.stub("etcdserverpb.Lease")
    election = served.stub("v3electionpb.Election")
    a = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S).ID
    b = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S).ID
    err = rpc_error(election.Leader, pb.LeaderRequest(name=b"e"))
    assert err.details() == "election: no leader"
    leader_a = election.Campaign(pb.CampaignRequest(name=b"e", lease=a, value=b"A"), timeout=TIMEOUT_S).leader
    assert leader_a.rev > 0 and leader_a.lease == a
    observe = election.Observe(pb.LeaderRequest(name=b"e"), timeout=10)
    assert next(observe).kv.value == b"A"
    campaign_b = election.Campaign.future(pb.CampaignRequest(name=b"e", lease=b, value=b"B"), timeout=TIMEOUT_S)
    election.Proclaim(pb.ProclaimRequest(leader=leader_a, value=b"A2"), timeout=TIMEOUT_S)
    assert next(observe).kv.value == b"A2"
    assert election.Leader(pb.LeaderRequest(name=b"e"), timeout=TIMEOUT_S).kv.value == b"A2"
    assert not campaign_b.done()
    election.Resign(pb.ResignRequest(leader=leader_a), timeout=TIMEOUT_S)
    leader_b = campaign_b.result(timeout=TIMEOUT_S).leader
    assert leader_b.key == b"e/" + f"{b:x}".encode()
    assert next(observe).kv.value == b"B"
    observe.cancel()
    err = rpc_error(election.Proclaim, pb.ProclaimRequest(leader=leader_a, value=b"stale"))
    assert err.details() == "election: not leader"


def test_refused_watches_answer_with_invalid_id(served: ServedBackend) -> None:
    w = WatchSession(served)
    try:
        w.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"b", range_end=b"a")))
        refused = w.recv()
        assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
        assert refused.cancel_reason == "mvcc: watcher range is empty"
        w.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a", watch_id=7)))
        assert w.recv().watch_id == 7
        w.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a", watch_id=7)))
        dup = w.recv()
        assert dup.watch_id == -1 and dup.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
        bad = pb.WatchCreateRequest(key=b"a")
        bad.filters.append(9)
        w.send(pb.WatchRequest(create_request=bad))
        accepted = w.recv()  # etcd 3.4 ignores filter values it does not know
        assert accepted.created and not accepted.canceled and accepted.watch_id not in (-1, 7)
    finally:
        w.close()


def test_require_leader_watch_ends_when_the_leader_is_lost(
    served: ServedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conclave.api import grpc_server

    monkeypatch.setattr(grpc_server, "LEADER_CHECK_S", 0.05)
    requests: queue.Queue[Any] = queue.Queue()
    call = served.stub("etcdserverpb.Watch").Watch(
        iter(requests.get, None), metadata=(("hasleader", "true"),), timeout=TIMEOUT_S
    )
    try:
        requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"x")))
        assert next(call).created
        served.backend.leader = False
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and info.value.details() == "etcdserver: no leader"
    finally:
        requests.put(None)
        call.cancel()


def test_abandoned_lock_wait_removes_its_key(served: ServedBackend) -> None:
    lease = served.stub("etcdserverpb.Lease")
    lock = served.stub("v3lockpb.Lock")
    a = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S).ID
    b = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT_S).ID
    held = lock.Lock(pb.LockRequest(name=b"gone", lease=a), timeout=TIMEOUT_S)
    waiting = lock.Lock.future(pb.LockRequest(name=b"gone", lease=b), timeout=TIMEOUT_S)
    waiter_key = b"gone/" + f"{b:x}".encode()
    deadline = time.monotonic() + TIMEOUT_S
    while waiter_key not in served.call_in_loop(served.backend.keys) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiter_key in served.call_in_loop(served.backend.keys)
    waiting.cancel()
    while waiter_key in served.call_in_loop(served.backend.keys) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.call_in_loop(served.backend.keys) == [held.key]
    assert served.call_in_loop(served.backend.watcher_count) == 0
    err = rpc_error(lock.Lock, pb.LockRequest(name=b"gone", lease=424242))
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "etcdserver: requested lease not found"


def test_progress_notify_watchers_get_periodic_empty_responses(
    served: ServedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conclave.api import grpc_server

    monkeypatch.setattr(grpc_server, "PROGRESS_NOTIFY_S", 0.05)
    kv_stub(served).Put(pb.PutRequest(key=b"p", value=b"1"), timeout=TIMEOUT_S)
    w = WatchSession(served)
    try:
        w.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"p", progress_notify=True)))
        created = w.recv()
        assert created.created
        for _ in range(2):
            tick = w.recv()
            assert tick.watch_id == created.watch_id and not tick.events and not tick.canceled
            assert tick.header.revision == 2
    finally:
        w.close()


def _raw(served: ServedBackend, method: str, streaming: bool = False) -> Any:
    """A call on ``method`` that sends raw bytes (so a test can send what no client would)."""
    ident = lambda b: b  # noqa: E731
    if streaming:
        return served.channel.stream_stream(method, request_serializer=ident, response_deserializer=ident)
    return served.channel.unary_unary(method, request_serializer=ident, response_deserializer=ident)


@pytest.mark.both_engines
def test_undecodable_requests_answer_internal_as_etcd_does(served: ServedBackend) -> None:
    # etcd (grpc-go) answers INTERNAL "grpc: error unmarshalling request: ..."; grpc-python alone says UNKNOWN.
    for method in ("/etcdserverpb.KV/Range", "/etcdserverpb.Cluster/MemberList", "/v3lockpb.Lock/Lock"):
        err = rpc_error(_raw(served, method), b"\xff\xff\xff")
        assert err.code() == grpc.StatusCode.INTERNAL, (method, err)
        assert (err.details() or "").startswith("grpc: error unmarshalling request: "), err.details()
    for method in ("/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive"):
        call = _raw(served, method, streaming=True)(iter([b"\xff\xff\xff"]), timeout=TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.INTERNAL, (method, info.value)
    # The member still serves.
    assert kv_stub(served).Put(pb.PutRequest(key=b"after", value=b"1"), timeout=TIMEOUT_S).header.revision == 2


def _one_shot_watch(served: ServedBackend, create: Any) -> tuple[Any, queue.Queue[Any]]:
    """A watch stream whose client half-closes right after its create request (one-shot watchers do)."""
    call = served.stub("etcdserverpb.Watch").Watch(iter([pb.WatchRequest(create_request=create)]), timeout=10)
    got: queue.Queue[Any] = queue.Queue()

    def reader() -> None:
        try:
            for resp in call:
                got.put(resp)
        except grpc.RpcError as exc:
            got.put(exc)
        else:
            got.put("ended with OK")

    threading.Thread(target=reader, daemon=True).start()
    return call, got


@pytest.mark.both_engines
def test_half_closed_watch_stream_keeps_its_watch_and_delivers(served: ServedBackend) -> None:
    call, got = _one_shot_watch(served, pb.WatchCreateRequest(key=b"hc"))
    try:
        first = got.get(timeout=TIMEOUT_S)
        assert not isinstance(first, (str, grpc.RpcError)) and first.created, first
        time.sleep(0.2)  # the client's half-close has reached the server
        kv_stub(served).Put(pb.PutRequest(key=b"hc", value=b"v1"), timeout=TIMEOUT_S)
        resp = got.get(timeout=TIMEOUT_S)
        assert not isinstance(resp, (str, grpc.RpcError)), f"the stream ended instead of delivering: {resp}"
        assert [(e.kv.key, e.kv.value) for e in resp.events] == [(b"hc", b"v1")]
    finally:
        call.cancel()


def test_unknown_watch_filter_values_are_ignored_as_in_etcd(served: ServedBackend) -> None:
    call, got = _one_shot_watch(served, pb.WatchCreateRequest(key=b"f", filters=[7, pb.WatchCreateRequest.NODELETE]))
    try:
        first = got.get(timeout=TIMEOUT_S)
        assert not isinstance(first, (str, grpc.RpcError)) and first.created and not first.canceled, first
        stub = kv_stub(served)
        stub.Put(pb.PutRequest(key=b"f", value=b"1"), timeout=TIMEOUT_S)
        stub.DeleteRange(pb.DeleteRangeRequest(key=b"f"), timeout=TIMEOUT_S)  # filtered out: NODELETE still applies
        stub.Put(pb.PutRequest(key=b"f", value=b"2"), timeout=TIMEOUT_S)
        values = []
        while len(values) < 2:
            resp = got.get(timeout=TIMEOUT_S)
            assert not isinstance(resp, (str, grpc.RpcError)), resp
            values += [(e.type, e.kv.value) for e in resp.events]
        assert values == [(pb.Event.PUT, b"1"), (pb.Event.PUT, b"2")]
    finally:
        call.cancel()


def test_cluster_responses_carry_no_revision_as_in_etcd(served: ServedBackend) -> None:
    kv_stub(served).Put(pb.PutRequest(key=b"r", value=b"1"), timeout=TIMEOUT_S)
    cluster = served.stub("etcdserverpb.Cluster")
    listed = cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT_S)
    assert (listed.header.cluster_id, listed.header.member_id, listed.header.raft_term) == (CLUSTER_ID, MEMBER_ID, 2)
    assert listed.header.revision == 0  # etcd's ClusterServer fills ids and term only
    added = cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["http://10.0.0.9:2380"], isLearner=True), timeout=5)
    assert added.header.revision == 0
    # KV and Maintenance keep the revision.
    assert served.stub("etcdserverpb.Maintenance").Status(pb.StatusRequest(), timeout=5).header.revision == 2
