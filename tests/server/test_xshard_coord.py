"""Unit tests of server/xshard_coord.py over in-memory groups (real StateMachines, no Raft)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable

import pytest

from conclave.kv import errors as kverr
from conclave.kv import types as kt
from conclave.machine import StateMachine, entry
from conclave.machine import xshard as xs
from conclave.raft.types import Entry, EntryType
from conclave.server import xshard_coord as xc

FAST = xc.Timeouts(call=0.2, prepare=1.0, lock_wait=0.6, lock_poll=0.01, heartbeat_interval=0.03,
                   heartbeat_timeout=0.15, decide=1.0, resolve_wait=0.5, resolve_bound=2.0, backoff=0.005,
                   sweep_interval=0.05, decided_grace=0.1, resolve_grace=0.05)
Hook = Callable[["FakeGroup", xs.Command], Awaitable[str]]


class FakeGroup:
    """A group as one StateMachine applying commands in order; ``hook`` decides each proposal's fate."""

    def __init__(self, gid: int) -> None:
        self.gid = gid
        self.sm = StateMachine()
        self.index = 0
        self.seqs = itertools.count(1)
        self.down = False
        self.hook: Hook | None = None

    def apply(self, cmd: object) -> object:
        self.index += 1
        data = entry.encode_kv(7, next(self.seqs), cmd)  # type: ignore[arg-type]
        res = self.sm.apply(Entry(1, self.index, EntryType.NORMAL, data), 0).results[0]
        if res.error is not None:
            raise res.error
        return res.response

    async def propose(self, cmd: xs.Command, timeout: float) -> xc.XResult:
        await asyncio.sleep(0)
        if self.down:
            raise kverr.NoLeader()
        fate = "apply" if self.hook is None else await self.hook(self, cmd)
        if fate == "drop":
            raise kverr.Timeout()
        res = self.apply(cmd)
        if fate == "lose":
            raise kverr.Timeout()
        if fate == "twice":
            self.apply(cmd)
        return res  # type: ignore[return-value]

    async def read_record(self, txn: xs.TxnId, timeout: float) -> tuple[xs.Record | None, bool]:
        await asyncio.sleep(0)
        if self.down:
            raise kverr.NoLeader()
        return self.sm.xshard.records.get(txn), self.sm.xshard.record_fenced(txn)

    def led_state(self) -> xs.XShard | None:
        return None if self.down else self.sm.xshard

    async def plain(self, cmd: object) -> object:
        await asyncio.sleep(0)
        return self.apply(cmd)


SHARDS = xs.ShardMap((b"b", b"c"), (1, 2, 3))
KEYS = (b"a1", b"b1", b"c1")


def _groups() -> dict[int, FakeGroup]:
    gs = {g: FakeGroup(g) for g in (1, 2, 3)}
    for k in KEYS:
        gs[SHARDS.group_of(k)].apply(kt.PutRequest(key=k, value=b"0"))
    return gs


def _transfer(value: bytes, *, compare_to: bytes = b"0") -> kt.TxnRequest:
    return kt.TxnRequest(
        compare=tuple(kt.Compare(kt.CompareResult.EQUAL, kt.CompareTarget.VALUE, k, value=compare_to) for k in KEYS),
        success=(*(kt.RequestOp(request_put=kt.PutRequest(key=k, value=value)) for k in KEYS),
                 kt.RequestOp(request_range=kt.RangeRequest(key=b"a", range_end=b"d"))),
        failure=(kt.RequestOp(request_range=kt.RangeRequest(key=b"a1")),),
    )


def _values(gs: dict[int, FakeGroup]) -> list[bytes]:
    return [gs[SHARDS.group_of(k)].sm.store.range(kt.RangeRequest(key=k)).kvs[0].value for k in KEYS]


def _clean(gs: dict[int, FakeGroup]) -> bool:
    return all(not g.sm.xshard.intents and not g.sm.xshard.records for g in gs.values())


async def _sweep_until_clean(gs: dict[int, FakeGroup], bound: float = 3.0) -> None:
    rec = xc.Recovery(gs, FAST)  # a fresh member's: the crashed coordinator's tasks are gone
    sweeper = xc.Sweeper(gs, rec, FAST)
    sweeper.start()
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + bound
        while not _clean(gs):
            assert loop.time() < end, [(g.gid, g.sm.xshard.intents, g.sm.xshard.records) for g in gs.values()]
            await asyncio.sleep(0.02)
    finally:
        await sweeper.stop()
        await rec.close()


def _coord(gs: dict[int, FakeGroup], member: int = 5) -> xc.Coordinator:
    return xc.Coordinator(member, gs, SHARDS, timeouts=FAST)


def test_commit_merges_answers_and_cleans_up() -> None:
    async def main() -> None:
        gs = _groups()
        co = _coord(gs)
        resp = await co.txn(_transfer(b"7"))
        assert resp.succeeded
        rng = resp.responses[-1].response_range
        assert rng is not None and [kv.key for kv in rng.kvs] == list(KEYS) and rng.count == 3
        assert all(kv.value == b"7" for kv in rng.kvs)
        assert _values(gs) == [b"7"] * 3
        for _ in range(100):
            if _clean(gs):
                break
            await asyncio.sleep(0.01)
        assert _clean(gs)
        await co.close()

    asyncio.run(main())


def test_failed_compare_gives_succeeded_false_with_the_failure_branch() -> None:
    async def main() -> None:
        gs = _groups()
        co = _coord(gs)
        resp = await co.txn(_transfer(b"7", compare_to=b"9"))
        assert not resp.succeeded
        got = resp.responses[0].response_range
        assert got is not None and got.kvs[0].key == b"a1" and got.kvs[0].value == b"0"
        assert _values(gs) == [b"0"] * 3
        await co.close()

    asyncio.run(main())


def _steps() -> int:
    """The number of non-heartbeat proposals of one clean transaction."""
    async def main() -> int:
        gs = _groups()
        n = [0]

        async def count(g: FakeGroup, cmd: xs.Command) -> str:
            if not isinstance(cmd, xs.Heartbeat):
                n[0] += 1
            return "apply"

        for g in gs.values():
            g.hook = count
        co = _coord(gs)
        await co.txn(_transfer(b"7"))
        for _ in range(100):
            if _clean(gs):
                break
            await asyncio.sleep(0.01)
        await co.close()
        return n[0]

    return asyncio.run(main())


@pytest.mark.parametrize("after", [False, True], ids=["before_apply", "after_apply"])
def test_coordinator_crash_at_every_step_is_recovered_atomically(after: bool) -> None:
    steps = _steps()
    assert steps == 3 + 1 + 1 + 3 + 1  # Begin, 3 Prepares, Decide, 3 Resolves, Forget

    async def one(k: int) -> None:
        gs = _groups()
        n = [0]
        crashed = asyncio.Event()

        async def hook(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Heartbeat):
                return "apply"
            n[0] += 1
            if n[0] == k:
                if after:
                    g.apply(cmd)
                crashed.set()
                await asyncio.Event().wait()  # the process is gone
            return "apply"

        for g in gs.values():
            g.hook = hook
        co = _coord(gs)
        task = asyncio.ensure_future(co.txn(_transfer(b"7")))
        await asyncio.wait([task, asyncio.ensure_future(crashed.wait())], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        await co.close()
        for g in gs.values():
            g.hook = None
        await _sweep_until_clean(gs)
        values = _values(gs)
        assert values in ([b"0"] * 3, [b"7"] * 3), (k, values)
        if k > 5 or (k == 5 and after):  # the decision was applied: it committed
            assert values == [b"7"] * 3, k

    async def main() -> None:
        for k in range(1, steps + 1):
            await one(k)

    asyncio.run(main())


def test_lost_duplicated_and_late_prepares() -> None:
    async def main() -> None:
        gs = _groups()
        late: list[tuple[FakeGroup, xs.Command]] = []
        fates = {1: "lose", 2: "twice", 3: "drop"}

        async def hook(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Prepare):
                late.append((g, cmd))
                return fates.pop(g.gid, "apply")
            return "apply"

        for g in gs.values():
            g.hook = hook
        co = _coord(gs)
        resp = await co.txn(_transfer(b"7"))
        assert resp.succeeded and _values(gs) == [b"7"] * 3
        for _ in range(100):
            if _clean(gs):
                break
            await asyncio.sleep(0.01)
        for g, cmd in late:  # every prepare arrives again long after the resolution
            vote = g.apply(cmd)
            assert isinstance(vote, xs.Vote) and not vote.ok
        assert _clean(gs) and _values(gs) == [b"7"] * 3
        await co.close()

    asyncio.run(main())


def test_paused_coordinator_past_its_deadline_cannot_commit_and_recoveries_race() -> None:
    async def main() -> None:
        gs = _groups()
        paused = asyncio.Event()
        resume = asyncio.Event()

        async def hook(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Heartbeat) and paused.is_set() and not resume.is_set():
                return "drop"
            if isinstance(cmd, xs.Decide) and cmd.expect_epoch is None:
                paused.set()
                await resume.wait()
            return "apply"

        for g in gs.values():
            g.hook = hook
        co = _coord(gs)
        task = asyncio.ensure_future(co.txn(_transfer(b"7")))
        await paused.wait()
        r1, r2 = xc.Recovery(gs, FAST), xc.Recovery(gs, FAST)
        outcomes = await asyncio.gather(r1.resolve_intent((5, 1), 1, 2), r2.resolve_intent((5, 1), 1, 3))
        assert set(outcomes) <= {xs.Status.ABORTED, xs.Status.FORGOTTEN} and xs.Status.ABORTED in outcomes
        resume.set()
        with pytest.raises(xc.TxnAborted):
            await task
        await _sweep_until_clean(gs)
        assert _values(gs) == [b"0"] * 3
        await co.close()

    asyncio.run(main())


def test_a_recovery_racing_a_live_coordinator_leaves_it_alone() -> None:
    async def main() -> None:
        gs = _groups()
        slow = asyncio.Event()

        async def hook(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Decide) and cmd.expect_epoch is None:
                slow.set()
                await asyncio.sleep(3 * FAST.heartbeat_timeout)  # slow, but heartbeating
            return "apply"

        gs[1].hook = hook
        co = _coord(gs)
        task = asyncio.ensure_future(co.txn(_transfer(b"7")))
        await slow.wait()
        # The coordinator heartbeats while its decision is slow... until it proposes the decision:
        # heartbeats stop then, so the recovery may abort; either way the outcome is one.
        rec = xc.Recovery(gs, FAST)
        got = await rec.resolve_intent((5, 1), 1, 2)
        try:
            resp = await task
            assert resp.succeeded and got in (None, xs.Status.COMMITTED)
        except xc.TxnAborted:
            assert got == xs.Status.ABORTED
        await _sweep_until_clean(gs)
        assert _values(gs) in ([b"0"] * 3, [b"7"] * 3)
        await co.close()
        await rec.close()

    asyncio.run(main())


def test_lock_wait_recovers_an_abandoned_lock_and_times_out_on_a_live_one() -> None:
    async def main() -> None:
        gs = _groups()
        hold = asyncio.Event()

        async def hook(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Decide) and cmd.expect_epoch is None:
                hold.set()
                await asyncio.Event().wait()
            return "apply"

        gs[1].hook = hook
        co = _coord(gs)
        task = asyncio.ensure_future(co.txn(_transfer(b"7")))
        await hold.wait()
        # The coordinator stopped heartbeating (it proposed its decision): its lock is recovered.
        rec = xc.Recovery(gs, FAST)
        resp = await rec.run_with_lock_wait(lambda: gs[2].plain(kt.RangeRequest(key=b"b1")), 2.0, where=2)
        assert isinstance(resp, kt.RangeResponse) and resp.kvs[0].value == b"0"
        task.cancel()
        await co.close()
        await _sweep_until_clean(gs)

        # A live transaction (heartbeating while it waits for a slow prepare) holds its lock.
        gs2 = _groups()
        block = asyncio.Event()

        async def slow_prepare(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Prepare) and g.gid == 3:
                await block.wait()
            return "apply"

        gs2[3].hook = slow_prepare
        patient = dataclasses.replace(FAST, heartbeat_timeout=0.6)  # no false abort on a loaded machine
        co2 = xc.Coordinator(5, gs2, SHARDS, timeouts=patient)
        task2 = asyncio.ensure_future(co2.txn(_transfer(b"7")))
        for _ in range(100):
            if gs2[2].sm.xshard.intents:
                break
            await asyncio.sleep(0.01)
        rec2 = xc.Recovery(gs2, patient)
        with pytest.raises(xc.LockWaitTimeout):
            await rec2.run_with_lock_wait(lambda: gs2[2].plain(kt.PutRequest(key=b"b1", value=b"x")), 0.3, where=2)
        block.set()
        resp2 = await task2
        assert resp2.succeeded and _values(gs2) == [b"7"] * 3
        await co2.close()
        await rec.close()
        await rec2.close()

    asyncio.run(main())


def test_clear_errors_for_too_large_and_unavailable() -> None:
    async def main() -> None:
        splits = tuple(bytes([ord("a") + i]) for i in range(1, 20))
        wide = xs.ShardMap(splits, tuple(range(1, 21)))
        gs20 = {g: FakeGroup(g) for g in range(1, 21)}
        co = xc.Coordinator(5, gs20, wide, timeouts=FAST)
        req = kt.TxnRequest(success=tuple(kt.RequestOp(request_put=kt.PutRequest(key=bytes([ord("a") + i]) + b"k"))
                                          for i in range(20)))
        with pytest.raises(xc.TxnTooLarge, match="20 groups"):
            await co.txn(req)
        many = kt.TxnRequest(success=tuple(kt.RequestOp(request_put=kt.PutRequest(key=b"a%d" % i))
                                           for i in range(xc.MAX_TXN_KEYS + 1)))
        with pytest.raises(xc.TxnTooLarge, match="compares and ops"):
            await co.txn(many)
        await co.close()

        gs = _groups()
        gs[3].down = True
        co = _coord(gs)
        with pytest.raises(xc.GroupsUnavailable):
            await co.txn(_transfer(b"7"))
        gs[3].down = False
        await _sweep_until_clean(gs)
        assert _values(gs) == [b"0"] * 3
        await co.close()

        # The record group goes away right after the prepares: the decision's fate is unknown.
        gs = _groups()

        async def fail_decide(g: FakeGroup, cmd: xs.Command) -> str:
            return "drop" if isinstance(cmd, xs.Decide) else "apply"

        gs[1].hook = fail_decide
        co = _coord(gs)
        with pytest.raises(xc.OutcomeUnknown):
            await co.txn(_transfer(b"7"))
        gs[1].hook = None
        await co.close()
        await _sweep_until_clean(gs)
        assert _values(gs) == [b"0"] * 3

    asyncio.run(main())


def test_txn_seq_base_grows_across_starts(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    a, b = xc.txn_seq_base(d), xc.txn_seq_base(d)
    assert b > a + xs.FENCE_WINDOW


def test_a_prepare_refused_outright_aborts_with_that_error() -> None:
    async def main() -> None:
        gs = _groups()

        async def refuse(g: FakeGroup, cmd: xs.Command) -> str:
            if isinstance(cmd, xs.Prepare):
                raise kverr.RequestTooLarge()
            return "apply"

        gs[2].hook = refuse
        co = _coord(gs)
        with pytest.raises(kverr.RequestTooLarge):
            await co.txn(_transfer(b"7"))
        gs[2].hook = None
        await _sweep_until_clean(gs)
        assert _values(gs) == [b"0"] * 3
        await co.close()

    asyncio.run(main())
