"""The cross-shard commands inside the replicated state machine: codec, apply, locks, image, auth."""

from __future__ import annotations

import msgpack
import pytest

from conclave.kv import auth as a
from conclave.kv import errors as kverr
from conclave.kv.command import Checked, Command, decode_command, encode_command
from conclave.kv.types import (
    Compare,
    CompareResult,
    CompareTarget,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from conclave.machine import StateMachine, entry
from conclave.machine import xshard as xs
from conclave.raft.types import Entry

A = 0xA
T = (7, 1)


def put(key: bytes, value: bytes, lease: int = 0) -> RequestOp:
    return RequestOp(request_put=PutRequest(key=key, value=value, lease=lease))


PART = xs.Part(
    compares=(Compare(CompareResult.EQUAL, CompareTarget.MOD, b"a", mod_revision=2),),
    success=(put(b"a", b"1"), RequestOp(request_range=RangeRequest(key=b"b", range_end=b"c"))),
    failure=(put(b"z", b"f"),),
)
COMMANDS: list[Command] = [
    xs.Prepare(T, 3, PART),
    xs.Resolve(T, True, False),
    xs.Begin(T, (1, 2, 3)),
    xs.Heartbeat(T, 4),
    xs.Decide(T, xs.Status.ABORTED, True, 5),
    xs.Decide(T, xs.Status.COMMITTED),
    xs.Forget(T),
    Checked(3, xs.Prepare(T, 1, xs.Part())),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_the_cross_shard_commands_round_trip_deterministically(cmd: Command) -> None:
    data = encode_command(cmd, 9)
    assert decode_command(data) == (9, cmd)
    assert encode_command(cmd, 9) == data  # deterministic bytes


@pytest.mark.parametrize("body", [
    [1, 1, 50, [7], 3, [], [], []],  # a txn id of one field
    [1, 1, 50, [7, -1], 3, [], [], []],  # negative seq
    [1, 1, 50, [7, 1], 3, [], []],  # Prepare short of a field
    [1, 1, 50, [7, 1], 3, [], [[40, 0, [1, b"k", b"v", 0, False, False, False], ""]], []],  # Checked as an op
    [1, 1, 51, [7, 1], 1, True],  # Resolve: commit not a bool
    [1, 1, 52, [7, 1], [1, "x"]],  # Begin: a group that is not a number
    [1, 1, 54, [7, 1], 9, True, None],  # Decide: no such status
    [1, 1, 54, [7, 1], 1, True, -3],  # Decide: negative epoch
    [1, 1, 55, "t"],  # Forget: not a txn id
    [1, 1, 56, [7, 1]],  # unknown tag
    [1, 1, 2, b"k", b"", False, 0],  # not even a delete
])
def test_malformed_cross_shard_commands_are_refused_clearly(body: list[object]) -> None:
    with pytest.raises(kverr.MalformedCommand):
        decode_command(msgpack.packb(body, use_bin_type=True))


def test_a_cross_shard_command_cannot_nest_inside_a_txn() -> None:
    txn = msgpack.packb([1, 1, 3, [], [[55, [7, 1]]], []], use_bin_type=True)
    with pytest.raises(kverr.MalformedCommand, match="outermost"):
        decode_command(txn)


class Log:
    def __init__(self, *machines: StateMachine) -> None:
        self.machines, self.index, self.seq = machines, machines[0].applied_index, entry.seq_base(1)

    def apply(self, *cmds: Command, seq: int | None = None) -> list[list[object]]:
        """One entry holding ``cmds`` on every machine: per machine, each result's response or error."""
        self.index += 1
        batch = []
        for c in cmds:
            self.seq += 1
            batch.append((self.seq if seq is None else seq, c))
        data = entry.encode_batch(A, batch)
        return [[r.error or r.response for r in sm.apply(Entry(1, self.index, data=data), 0).results]
                for sm in self.machines]


def test_prepare_locks_plain_commands_until_the_resolve_and_results_come_back() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(PutRequest(key=b"a", value=b"100"))
    rev = sm.store.revision
    part = xs.Part((Compare(CompareResult.EQUAL, CompareTarget.MOD, b"a", mod_revision=rev),), (put(b"a", b"90"),))
    [[begin, vote]] = log.apply(xs.Begin(T, (1,)), xs.Prepare(T, 1, part))
    assert isinstance(begin, xs.Record) and begin.status == xs.Status.PENDING
    assert isinstance(vote, xs.Vote) and vote.ok and vote.compares_ok
    h = sm.hash()
    [[locked, read, free]] = log.apply(PutRequest(key=b"a", value=b"x"), RangeRequest(key=b"a"),
                                       PutRequest(key=b"b", value=b"free"))
    assert isinstance(locked, xs.Locked) and locked.txn == T and isinstance(read, xs.Locked)
    assert free is not None and not isinstance(free, kverr.EtcdError)
    assert sm.store.range(RangeRequest(key=b"a")).kvs[0].value == b"100" and sm.hash() != h  # only b changed
    [[rec]] = log.apply(xs.Decide(T, xs.Status.COMMITTED, True))
    assert isinstance(rec, xs.Record) and rec.status == xs.Status.COMMITTED
    index = log.index + 1
    out = sm.apply(Entry(1, index, data=entry.encode_batch(A, [(log.seq + 1, xs.Resolve(T, True, True))])), 0)
    log.index, log.seq = index, log.seq + 1
    res = out.results[0].response
    assert isinstance(res, xs.Resolved) and res.applied and res.response is not None and res.response.succeeded
    assert [(e.kv.key, e.kv.value) for e in out.events] == [(b"a", b"90")]  # watchers see the commit
    assert out.results[0].events == tuple(out.events)
    [[ok]] = log.apply(PutRequest(key=b"a", value=b"after"))
    assert not isinstance(ok, kverr.EtcdError)


def test_a_lease_revoke_that_would_delete_a_locked_key_waits() -> None:
    sm = StateMachine()
    log = Log(sm)
    [[grant]] = log.apply(LeaseGrantRequest(ttl=60))
    assert isinstance(grant, LeaseGrantResponse)
    log.apply(PutRequest(key=b"a", value=b"1", lease=grant.id))
    log.apply(xs.Prepare(T, 1, xs.Part(success=(put(b"a", b"2"),))))
    [[err]] = log.apply(LeaseRevokeRequest(id=grant.id))
    assert isinstance(err, xs.Locked)
    assert sm.store.range(RangeRequest(key=b"a")).kvs
    log.apply(xs.Resolve(T, False))
    [[done]] = log.apply(LeaseRevokeRequest(id=grant.id))
    assert not isinstance(done, kverr.EtcdError) and not sm.store.range(RangeRequest(key=b"a")).kvs


def test_cross_shard_commands_apply_once_per_origin_and_seq() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(xs.Begin(T, (1,)), seq=5)
    [[hb]] = log.apply(xs.Heartbeat(T, 0), seq=6)
    assert isinstance(hb, xs.Record) and hb.epoch == 1
    assert log.apply(xs.Heartbeat(T, 1), seq=6) == [[]]  # the same (origin, seq) again: skipped
    assert sm.xshard.records[T].epoch == 1


def test_the_image_carries_the_cross_shard_state_and_old_images_have_none() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(xs.Begin(T, (1, 2)), xs.Prepare(T, 1, xs.Part(success=(put(b"a", b"1"),))), xs.Forget((7, 0)))
    back = StateMachine.restore(sm.snapshot())
    assert back.xshard.records == sm.xshard.records and set(back.xshard.intents) == {T}
    assert back.xshard.record_fenced((7, 0)) and back.xshard.snapshot() == sm.xshard.snapshot()
    with pytest.raises(xs.Locked):
        back.xshard.check_plain(PutRequest(key=b"a", value=b"x"))
    body = msgpack.unpackb(sm.snapshot(), raw=False)
    del body["xshard"]
    old = StateMachine.restore(msgpack.packb(body, use_bin_type=True))
    assert not old.xshard.records and not old.xshard.intents


def test_auth_never_refuses_an_internal_cross_shard_command_and_checks_a_checked_one() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(a.UserAddRequest("root", b"h"), a.RoleAddRequest("root"), a.UserGrantRoleRequest("root", "root"))
    log.apply(a.AuthEnableRequest())
    rev = sm.auth.revision
    [[begin, stale, fresh, plain]] = log.apply(
        xs.Begin(T, (1,)),  # unwrapped: internal, applies whatever the auth revision
        Checked(rev - 1, xs.Prepare((7, 2), 1, xs.Part(success=(put(b"a", b"1"),)))),
        Checked(rev, xs.Prepare((7, 3), 1, xs.Part(success=(put(b"b", b"1"),)))),
        PutRequest(key=b"c", value=b"1"),  # unwrapped client command: revision 0, refused
    )
    assert isinstance(begin, xs.Record)
    assert isinstance(stale, kverr.AuthOldRevision) and (7, 2) not in sm.xshard.intents
    assert isinstance(fresh, xs.Vote) and fresh.ok and (7, 3) in sm.xshard.intents
    assert isinstance(plain, kverr.AuthOldRevision)
    [[locked]] = log.apply(Checked(rev, PutRequest(key=b"b", value=b"2")))
    assert isinstance(locked, xs.Locked)  # locks hold on the auth path too


def test_replicas_agree_on_the_cross_shard_state() -> None:
    one, two = StateMachine(), StateMachine()
    log = Log(one, two)
    log.apply(xs.Begin(T, (1,)), xs.Prepare(T, 1, xs.Part(success=(put(b"a", b"1"),))))
    log.apply(xs.Decide(T, xs.Status.COMMITTED), xs.Resolve(T, True), xs.Forget(T))
    assert one.hash() == two.hash() and one.xshard.snapshot() == two.xshard.snapshot()
    assert not one.xshard.intents and one.xshard.record_fenced(T)


def test_txn_request_with_a_locked_compare_is_refused() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(xs.Prepare(T, 1, xs.Part(success=(put(b"a", b"1"),))))
    [[err]] = log.apply(TxnRequest(compare=(Compare(CompareResult.EQUAL, CompareTarget.VERSION, b"a", version=0),)))
    assert isinstance(err, xs.Locked)
