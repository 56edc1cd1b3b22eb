"""The cross-shard commit protocol on its replicated state (machine/xshard.py), groups as logs.

Each group is a linearizable log applying commands to its own Store + XShard, as a Raft group
does; the coordinator and recovery are scripted here step by step so a crash can be put between
any two steps, and prepares can be duplicated, delivered late, or raced by two recoveries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from conclave.kv.mvcc import Store
from conclave.kv.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    ResponseHeader,
    TxnRequest,
    TxnResponse,
)
from conclave.machine import xshard as xs


@dataclass
class Group:
    gid: int
    store: Store = field(default_factory=Store)
    x: xs.XShard = field(default_factory=xs.XShard)
    index: int = 0

    def apply(self, cmd: object) -> object:
        self.index += 1
        if isinstance(cmd, xs.Prepare | xs.Resolve | xs.Begin | xs.Heartbeat | xs.Decide | xs.Forget):
            return self.x.apply(cmd, self.store, self.index * 64)
        self.x.check_plain(cmd)
        return self.store.apply(cmd, self.index * 64)  # type: ignore[arg-type]


SHARDS = xs.ShardMap((b"g", b"p"), (1, 2, 3))


def cluster() -> dict[int, Group]:
    return {g: Group(g) for g in SHARDS.groups}


def get(groups: dict[int, Group], key: bytes) -> bytes | None:
    g = groups[SHARDS.group_of(key)]
    r = g.store.range(RangeRequest(key=key))
    return r.kvs[0].value if r.kvs else None


def put(key: bytes, value: bytes) -> RequestOp:
    return RequestOp(request_put=PutRequest(key=key, value=value))


class Coordinator:
    """The coordinator's steps for one txn; ``run(upto)`` stops (crashes) before step ``upto``."""

    def __init__(self, groups: dict[int, Group], txn: xs.TxnId, req: TxnRequest, rng: random.Random) -> None:
        self.groups, self.txn = groups, txn
        self.plan = xs.plan(req, SHARDS)
        self.votes: dict[int, xs.Vote] = {}
        self.steps: list[tuple[str, int]] = [("begin", self.plan.record_group)]
        self.steps += [("prepare", g) for g in self.plan.parts]
        rng.shuffle(self.steps)  # begin and the prepares go out in parallel: any order
        self.steps += [("decide", self.plan.record_group)]
        self.steps += [("resolve", g) for g in self.plan.parts] + [("forget", self.plan.record_group)]
        self.done = 0
        self.outcome: xs.Record | None = None
        self.answers: dict[int, TxnResponse] = {}

    def prepare(self, g: int) -> xs.Prepare:
        return xs.Prepare(self.txn, self.plan.record_group, self.plan.parts[g])

    def run(self, upto: int | None = None) -> None:
        end = len(self.steps) if upto is None else upto
        while self.done < end:
            kind, g = self.steps[self.done]
            group = self.groups[g]
            if kind == "begin":
                group.apply(xs.Begin(self.txn, tuple(self.plan.parts)))
            elif kind == "prepare":
                vote = group.apply(self.prepare(g))
                assert isinstance(vote, xs.Vote)
                self.votes[g] = vote
            elif kind == "decide":
                ok = all(v.ok for v in self.votes.values()) and len(self.votes) == len(self.plan.parts)
                success = all(v.compares_ok for v in self.votes.values())
                rec = group.apply(xs.Decide(self.txn, xs.Status.COMMITTED if ok else xs.Status.ABORTED, success))
                assert isinstance(rec, xs.Record)
                self.outcome = rec
            elif kind == "resolve":
                assert self.outcome is not None
                res = group.apply(xs.Resolve(self.txn, self.outcome.status == xs.Status.COMMITTED,
                                             self.outcome.success))
                assert isinstance(res, xs.Resolved)
                if res.response is not None:
                    self.answers[g] = res.response
            else:
                group.apply(xs.Forget(self.txn))
            self.done += 1


def recover(groups: dict[int, Group], txn: xs.TxnId, record_group: int, *, expired: bool) -> xs.Record | None:
    """What a member does on meeting an intent of ``txn`` (or a PENDING record past its deadline)."""
    rg = groups[record_group]
    rec = rg.x.records.get(txn)
    if rec is None or (rec.status == xs.Status.PENDING and expired):
        out = rg.apply(xs.Decide(txn, xs.Status.ABORTED, expect_epoch=None if rec is None else rec.epoch))
        assert isinstance(out, xs.Record)
        rec = out
    if rec.status == xs.Status.PENDING:
        return rec  # a live coordinator: wait
    holders = [gid for gid, grp in groups.items() if txn in grp.x.intents]
    if rec.status == xs.Status.FORGOTTEN:
        # forgotten only after all of its participants were resolved, so an intent still here
        # cannot be part of a commit: it is a late prepare of an aborted txn
        for g in holders:
            groups[g].apply(xs.Resolve(txn, False))
        return rec
    for g in rec.participants or holders:
        groups[g].apply(xs.Resolve(txn, rec.status == xs.Status.COMMITTED, rec.success))
    rg.apply(xs.Forget(txn))
    return rec


def sweep(groups: dict[int, Group]) -> None:
    """After the faults heal, past every heartbeat deadline: every intent and PENDING record recovered."""
    for g in groups.values():
        for txn, record_group in list(g.x.locks()):
            recover(groups, txn, record_group, expired=True)
        for txn, rec in list(g.x.records.items()):
            if rec.status == xs.Status.PENDING:
                recover(groups, txn, g.gid, expired=True)


def in_doubt(groups: dict[int, Group]) -> list[object]:
    return [t for g in groups.values() for t in list(g.x.intents)] + [
        r for g in groups.values() for r in g.x.records.values() if r.status == xs.Status.PENDING]


# ---------------------------------------------------------------------- a crash at every step


def transfer(a: bytes, b: bytes, balances: dict[bytes, int], revs: dict[bytes, int], amount: int) -> TxnRequest:
    """A read-modify-write across shards: compares on the mod revisions the client read."""
    return TxnRequest(
        compare=(Compare(CompareResult.EQUAL, CompareTarget.MOD, a, mod_revision=revs[a]),
                 Compare(CompareResult.EQUAL, CompareTarget.MOD, b, mod_revision=revs[b])),
        success=(put(a, str(balances[a] - amount).encode()), put(b, str(balances[b] + amount).encode())),
    )


def read_account(groups: dict[int, Group], key: bytes) -> tuple[int, int]:
    g = groups[SHARDS.group_of(key)]
    g.x.check_plain(RangeRequest(key=key))  # a read never sees an intent
    kv = g.store.range(RangeRequest(key=key)).kvs[0]
    return int(kv.value), kv.mod_revision


ACCOUNTS = [b"a1", b"c2", b"h3", b"k4", b"q5", b"z6"]  # two per group


def bank() -> dict[int, Group]:
    groups = cluster()
    for k in ACCOUNTS:
        groups[SHARDS.group_of(k)].apply(PutRequest(key=k, value=b"100"))
    return groups


def total(groups: dict[int, Group]) -> int:
    return sum(read_account(groups, k)[0] for k in ACCOUNTS)


@pytest.mark.parametrize("seed", range(8))
def test_a_crash_of_the_coordinator_at_every_step_leaves_all_or_nothing(seed: int) -> None:
    rng = random.Random(seed)
    probe = Coordinator(bank(), (1, 1), transfer(b"a1", b"q5", {b"a1": 100, b"q5": 100},
                                                  {b"a1": 2, b"q5": 2}, 1), rng)
    for crash in range(len(probe.steps) + 1):
        groups = bank()
        bal, revs = {}, {}
        for k in (b"a1", b"q5"):
            bal[k], revs[k] = read_account(groups, k)
        c = Coordinator(groups, (1, 1), transfer(b"a1", b"q5", bal, revs, 7), random.Random(seed))
        c.run(crash)
        sweep(groups)
        assert not in_doubt(groups)
        a, q = read_account(groups, b"a1")[0], read_account(groups, b"q5")[0]
        assert (a, q) in ((100, 100), (93, 107)), (crash, a, q)
        decided = c.outcome is not None and c.outcome.status == xs.Status.COMMITTED
        if decided:  # a decision that was written is never undone by recovery
            assert (a, q) == (93, 107)
        assert total(groups) == 600


@pytest.mark.parametrize("seed", range(20))
def test_bank_with_crashes_duplicates_late_prepares_and_racing_recoveries(seed: int) -> None:
    rng = random.Random(seed)
    groups = bank()
    coordinators: list[Coordinator] = []
    for n in range(40):
        a, b = rng.sample(ACCOUNTS, 2)
        try:
            (ba, ra), (bb, rb) = read_account(groups, a), read_account(groups, b)
        except xs.Locked as locked:  # a read meets an intent: recover it (expired or not), then retry later
            recover(groups, locked.txn, locked.record_group, expired=rng.random() < 0.5)
            continue
        c = Coordinator(groups, (1 + n % 3, n), transfer(a, b, {a: ba, b: bb}, {a: ra, b: rb}, rng.randrange(1, 20)),
                        rng)
        coordinators.append(c)
        c.run(rng.choice([len(c.steps), len(c.steps), rng.randrange(len(c.steps) + 1)]))
        # faults: a duplicated or late prepare of some earlier txn; a second recovery racing
        if rng.random() < 0.3:
            old = rng.choice(coordinators)
            g = rng.choice(list(old.plan.parts))
            vote = groups[g].apply(old.prepare(g))
            assert isinstance(vote, xs.Vote)
            if old.done == len(old.steps):
                assert not vote.ok and old.txn not in groups[g].x.intents  # fenced after resolution
        if rng.random() < 0.3:
            old = rng.choice(coordinators)
            recover(groups, old.txn, old.plan.record_group, expired=True)
            recover(groups, old.txn, old.plan.record_group, expired=True)
        if rng.random() < 0.2:  # a crashed coordinator restarts and goes on where it stopped
            old = rng.choice(coordinators)
            if old.done > 0:
                old.run()
        assert total(groups) == 600 if not in_doubt(groups) else True
    sweep(groups)
    assert not in_doubt(groups)
    assert total(groups) == 600
    committed = [c for c in coordinators if c.outcome is not None and c.outcome.status == xs.Status.COMMITTED]
    assert committed, "the run should commit some transfers"


def test_a_coordinator_paused_past_its_deadline_cannot_commit() -> None:
    groups = bank()
    c = Coordinator(groups, (9, 1), transfer(b"a1", b"z6", {b"a1": 100, b"z6": 100}, {b"a1": 2, b"z6": 3}, 5),
                    random.Random(0))
    c.run(c.steps.index(("decide", c.plan.record_group)))  # prepared everywhere, then paused
    recover(groups, c.txn, c.plan.record_group, expired=True)  # a reader aborts it after the deadline
    c.run()  # the coordinator wakes up and tries to commit
    # the record is gone (recovery forgot it): FORGOTTEN on a first decide means aborted
    assert c.outcome is not None and c.outcome.status in (xs.Status.ABORTED, xs.Status.FORGOTTEN)
    assert c.votes and all(v.ok and v.compares_ok for v in c.votes.values())  # it would have committed
    assert (get(groups, b"a1"), get(groups, b"z6")) == (b"100", b"100")
    assert not in_doubt(groups)


def test_a_heartbeat_keeps_a_live_coordinator_from_being_aborted() -> None:
    groups = bank()
    c = Coordinator(groups, (9, 2), transfer(b"a1", b"z6", {b"a1": 100, b"z6": 100}, {b"a1": 2, b"z6": 3}, 5),
                    random.Random(0))
    c.run(c.steps.index(("decide", c.plan.record_group)))
    rg = groups[c.plan.record_group]
    seen = rg.x.records[c.txn].epoch  # a recovery observes the epoch ...
    rg.apply(xs.Heartbeat(c.txn, seen))  # ... the coordinator heartbeats meanwhile ...
    rec = rg.apply(xs.Decide(c.txn, xs.Status.ABORTED, expect_epoch=seen))  # ... so the abort does nothing
    assert isinstance(rec, xs.Record) and rec.status == xs.Status.PENDING
    c.run()
    assert c.outcome is not None and c.outcome.status == xs.Status.COMMITTED
    assert (get(groups, b"a1"), get(groups, b"z6")) == (b"95", b"105")


@pytest.mark.parametrize("seed", range(6))
def test_a_recovery_racing_the_commit_never_undoes_it(seed: int) -> None:
    """A recovery reads the record PENDING past the deadline; before its abort lands, the
    coordinator commits (and maybe resolves); the abort must then change nothing."""
    rng = random.Random(seed)
    groups = bank()
    c = Coordinator(groups, (7, seed), transfer(b"c2", b"k4", {b"c2": 100, b"k4": 100}, {b"c2": 3, b"k4": 3}, 9), rng)
    decide_at = c.steps.index(("decide", c.plan.record_group))
    c.run(decide_at)
    rg = groups[c.plan.record_group]
    seen = rg.x.records[c.txn]
    assert seen.status == xs.Status.PENDING
    c.run(rng.randrange(decide_at + 1, len(c.steps) + 1))  # the commit lands first
    late = rg.apply(xs.Decide(c.txn, xs.Status.ABORTED, expect_epoch=seen.epoch))
    assert isinstance(late, xs.Record)
    assert late.status in (xs.Status.COMMITTED, xs.Status.FORGOTTEN)
    sweep(groups)
    c.run()
    assert (get(groups, b"c2"), get(groups, b"k4")) == (b"91", b"109")
    assert not in_doubt(groups)


def test_a_late_prepare_after_an_abort_is_fenced_and_a_begin_after_it_finds_aborted() -> None:
    groups = bank()
    txn = (5, 1)
    recover(groups, txn, 1, expired=True)  # someone decided ABORTED before the coordinator began
    assert groups[1].x.records.get(txn) is None  # forgotten ...
    again = groups[1].apply(xs.Decide(txn, xs.Status.COMMITTED))
    assert isinstance(again, xs.Record) and again.status == xs.Status.FORGOTTEN  # not a made-up outcome
    begin = groups[1].apply(xs.Begin(txn, (1, 3)))
    assert isinstance(begin, xs.Record) and begin.status == xs.Status.ABORTED  # ... and never PENDING again
    groups[3].apply(xs.Resolve(txn, False))  # the abort's resolution fences the participant
    vote = groups[3].apply(xs.Prepare(txn, 1, xs.Part(success=(put(b"q5", b"0"),))))
    assert isinstance(vote, xs.Vote) and not vote.ok and txn not in groups[3].x.intents


def test_locks_block_plain_writes_and_reads_until_resolution() -> None:
    groups = bank()
    c = Coordinator(groups, (2, 1), TxnRequest(success=(put(b"a1", b"1"), put(b"q5", b"2"))), random.Random(1))
    c.run(c.steps.index(("decide", c.plan.record_group)))
    with pytest.raises(xs.Locked) as info:
        groups[1].apply(PutRequest(key=b"a1", value=b"other"))
    assert info.value.txn == c.txn and info.value.record_group == c.plan.record_group
    with pytest.raises(xs.Locked):
        groups[3].apply(TxnRequest(compare=(Compare(CompareResult.EQUAL, CompareTarget.VERSION, b"q5", version=1),)))
    with pytest.raises(xs.Locked):
        groups[1].apply(DeleteRangeRequest(key=b"a", range_end=b"b"))
    groups[1].apply(PutRequest(key=b"c2", value=b"free"))  # an unlocked key of the same group is not blocked
    # another cross-shard txn on a locked key votes no, naming the holder
    other = groups[3].apply(xs.Prepare((3, 1), 3, xs.Part(success=(put(b"q5", b"x"),))))
    assert isinstance(other, xs.Vote) and not other.ok and other.conflict == c.txn
    dup = groups[3].apply(c.prepare(3))  # a duplicate of the holder's own prepare: the same vote
    assert isinstance(dup, xs.Vote) and dup.ok
    c.run()
    assert get(groups, b"a1") == b"1" and get(groups, b"q5") == b"2"
    groups[1].apply(PutRequest(key=b"a1", value=b"other"))
    header = ResponseHeader(revision=1)
    merged = xs.merge(c.plan, True, c.answers, header)
    assert merged.succeeded and len(merged.responses) == 2


def test_failed_compares_take_the_failure_branch_in_every_group() -> None:
    groups = bank()
    req = TxnRequest(
        compare=(Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"a1", value=b"100"),
                 Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"q5", value=b"nope")),
        success=(put(b"a1", b"s"), put(b"q5", b"s")),
        failure=(put(b"a1", b"f"), put(b"h3", b"f"), RequestOp(request_range=RangeRequest(key=b"a", range_end=b"z"))),
    )
    c = Coordinator(groups, (4, 1), req, random.Random(2))
    c.run()
    assert [get(groups, k) for k in (b"a1", b"h3", b"q5")] == [b"f", b"f", b"100"]
    merged = xs.merge(c.plan, c.outcome.success if c.outcome else True, c.answers, ResponseHeader())
    assert not merged.succeeded
    ranged = merged.responses[2].response_range
    assert ranged is not None
    assert [kv.key for kv in ranged.kvs] == [b"a1", b"c2", b"h3", b"k4", b"q5"]  # merged in key order


def test_plan_refuses_what_it_cannot_split_faithfully() -> None:
    with pytest.raises(xs.TooBroad, match="compare"):
        xs.plan(TxnRequest(compare=(Compare(key=b"a", range_end=b"z"),)), SHARDS)
    with pytest.raises(xs.TooBroad, match="sorted or limited"):
        xs.plan(TxnRequest(success=(RequestOp(request_range=RangeRequest(key=b"a", range_end=b"z", limit=2)),)),
                SHARDS)
    nested = TxnRequest(success=(put(b"a", b"1"), put(b"z", b"1")))
    with pytest.raises(xs.TooBroad, match="nested"):
        xs.plan(TxnRequest(success=(RequestOp(request_txn=nested),)), SHARDS)
    p = xs.plan(TxnRequest(success=(RequestOp(request_delete_range=DeleteRangeRequest(b"", b"\0")),)), SHARDS)
    assert sorted(p.parts) == [1, 2, 3] and len(p.success_map[0]) == 3
    assert SHARDS.clip((b"f", b"q")) == [(1, (b"f", b"g")), (2, (b"g", b"p")), (3, (b"p", b"q"))]


def test_the_cross_shard_state_survives_a_snapshot_mid_transaction() -> None:
    groups = bank()
    c = Coordinator(groups, (6, 1), TxnRequest(success=(put(b"a1", b"1"), put(b"q5", b"2"))), random.Random(3))
    c.run(c.steps.index(("decide", c.plan.record_group)))
    for g in groups.values():
        g.x = xs.XShard.restore(g.x.snapshot())
    with pytest.raises(xs.Locked):
        groups[1].apply(PutRequest(key=b"a1", value=b"x"))
    c.run()
    assert get(groups, b"a1") == b"1" and not in_doubt(groups)
    for g in groups.values():
        g.x = xs.XShard.restore(g.x.snapshot())
    vote = groups[3].apply(c.prepare(3))  # the fence survived the snapshot too
    assert isinstance(vote, xs.Vote) and not vote.ok
