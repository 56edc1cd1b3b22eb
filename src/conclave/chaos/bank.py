"""The ``bank`` workload: transfers between accounts spread over shards, the total constant.

Theory of operation. ``setup`` writes ``accounts`` keys ``bank/acct/NNN`` (one per account, each
``balance``), before the clock of the run starts. With ``--shards K`` the members are started with
``--shard-split-keys`` from ``bank_split_keys`` (every K-th part of the account names), so the
accounts spread evenly over the K data groups and most transfers are cross-shard.

Each client loops (even clients on the etcd gRPC API, odd ones on the native protocol):

- a *transfer* (85 %): two distinct random accounts, each read with a Range (its value and
  ``mod_revision``), then ONE Txn: compares ``mod_revision(a) == ra`` and ``mod_revision(b) == rb``,
  puts ``a - x`` and ``b + x`` (x at most a's balance: no balance goes negative). Succeeded:
  ``ok``; a compare failed (``succeeded = false``), the coordinator's definite abort, or the
  cross-shard refusal: ``fail``; anything else (timeout, lost connection, outcome unknown):
  ``info``, and the client goes on under a new process number;
- a *validated read* (15 %): one Range over every account (merged across groups, each group read
  linearizably but not at one snapshot), then a Txn whose compares check every account's
  ``mod_revision`` against what the Range saw, and no ops. Only when that Txn succeeds is the
  read *validated*: no account changed between its read and the Txn's prepare in its group, so
  the balances were all current at one instant (mod revisions never repeat); every validated
  read's sum must equal ``accounts * balance``. Unvalidated reads are counted (and how many of
  them were off the total, which shows why the validation is needed), never judged.

An error on a validated read is a ``fail`` (reads and a Txn without ops change nothing). Clients
pause up to ``think_s`` (0.3 s) between operations: the validated read takes a shared lock on
every account in every group for the length of its commit, and transfers prepared in between
conflict with it (each side waits for the other up to the coordinator's lock wait); at full speed
almost no validated read gets through.

History: ``transfer`` (value ``[from, to, amount]``) and ``read`` (ok value ``{"sum", "n"}``;
``fail`` when not validated) on the key ``bank``, like the other workloads' events.

``finish`` (after the quiet period, clients stopped):

1. *no intent left*: every account is read one by one (linearizable, 2 s each) until one full
   pass has no error, within ``intent_bound`` seconds (default 25 s: the coordinator's sweeper
   bound with 3 participants, ``sweep 1 + heartbeat timeout 1.5 + 7 x call 2 = 16.5 s``, plus its
   decided-record grace of 5 s, rounded up); a pass that still meets a lock (an error naming a
   lock) or any error at the bound is a violation, with the keys;
2. one validated read of all accounts (retried up to 10 times), whose sum must be the total;
3. every member's *serializable* Range of all accounts (its own applied state) must equal the
   linearizable one and sum to the total (a lagging member gets 20 s to catch up).
"""

from __future__ import annotations

import asyncio
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conclave.chaos.workload import Findings, Workload
from conclave.client import AsyncClient, mod_revision, put_op

PREFIX = "bank/acct/"


def account_key(i: int, accounts: int) -> str:
    """Account ``i``'s key; zero-padded so the byte order is the numeric order."""
    return f"{PREFIX}{i:0{max(3, len(str(accounts - 1)))}d}"


def bank_split_keys(accounts: int, shards: int) -> list[str]:
    """The K-1 split keys that give each of ``shards`` groups an equal run of the accounts."""
    if shards < 1 or accounts < shards:
        raise ValueError(f"cannot spread {accounts} accounts over {shards} shards (need at least one per shard)")
    return [account_key(k * accounts // shards, accounts) for k in range(1, shards)]


def prefix_end(p: str) -> str:
    return p[:-1] + chr(ord(p[-1]) + 1)


# the errors that say the transaction definitely did not commit (server wording, both protocols)
DEFINITE_NO = ("cross-shard transaction aborted", "cross-shard transactions are not enabled")


def outcome_of_error(exc: BaseException) -> str:
    """``fail`` when the error proves the transfer had no effect, else ``info``."""
    from conclave.client import OutcomeUnknown, ServerError
    if isinstance(exc, OutcomeUnknown) or not isinstance(exc, ServerError):
        return "info"
    text = str(exc).lower()
    return "fail" if any(w in text for w in DEFINITE_NO) else "info"


@dataclass
class BankWorkload(Workload):
    name: ClassVar[str] = "bank"
    model: ClassVar[str | None] = None
    op_timeout: float = 6.0
    accounts: int = 100
    balance: int = 100
    splits: list[str] = field(default_factory=list)  # the shard split keys the members were given
    read_share: float = 0.15
    think_s: float = 0.3  # a client's pause between operations: at most this (uniform), see below
    intent_bound: float = 25.0
    validated: list[tuple[int, int]] = field(default_factory=list)  # (sum, accounts seen) per validated read
    unvalidated: int = 0
    read_errors: int = 0
    unvalidated_off: int = 0
    transfers: dict[str, int] = field(default_factory=lambda: {"ok": 0, "fail": 0, "info": 0})
    cross_ok: int = 0
    setup_done: bool = False

    @property
    def total(self) -> int:
        return self.accounts * self.balance

    def account_keys(self) -> list[str]:
        return [account_key(i, self.accounts) for i in range(self.accounts)]

    def group_of(self, key: str) -> int:
        return bisect_right(self.splits, key)

    # ------------------------------------------------------------------ setup

    async def setup(self, budget_s: float = 60.0) -> None:
        """Every account at ``balance`` (single-key puts, retried: before any fault)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        async with AsyncClient(self.native_endpoints, timeout=5.0) as c:
            for k in self.account_keys():
                while True:
                    try:
                        await c.put(k, str(self.balance))
                        break
                    except Exception:
                        if loop.time() > deadline:
                            raise RuntimeError(f"bank setup: could not write {k} in {budget_s:g}s") from None
                        await asyncio.sleep(0.3)
        self.setup_done = True

    # ------------------------------------------------------------------ clients

    async def _client(self, w: int) -> None:
        rng = random.Random(f"bank/{self.seed}/{w}")
        process = self._process()
        keys = self.account_keys()
        async with self.client_for(w, rng) as c:
            while not self.stop.is_set():
                if rng.random() < self.read_share:
                    outcome = await self.validated_read(c, process)
                else:
                    a, b = rng.sample(keys, 2)
                    outcome = await self.transfer(c, process, a, b, rng)
                if outcome == "info":
                    process = self._process()
                await asyncio.sleep(rng.uniform(0.1, 0.3) if outcome == "skip" else rng.uniform(0.0, self.think_s))

    async def transfer(self, c: AsyncClient, process: int, a: str, b: str, rng: random.Random) -> str:
        rec = self.recorder
        try:
            ka, kb = await c.get_kv(a), await c.get_kv(b)
        except Exception:
            return "skip"  # a read that failed changed nothing and is not recorded
        if ka is None or kb is None:
            return "skip"
        va, vb = int(ka.value), int(kb.value)
        if va <= 0:
            return "skip"
        x = rng.randint(1, min(va, 10))
        rec.record(process, "invoke", "transfer", "bank", [a, b, x])
        try:
            resp = await c.txn().if_(mod_revision(a) == ka.mod_revision, mod_revision(b) == kb.mod_revision).then(
                put_op(a, str(va - x)), put_op(b, str(vb + x))).commit()
        except Exception as exc:
            status = outcome_of_error(exc)
            rec.record(process, status, "transfer", "bank", f"{type(exc).__name__}: {str(exc)[:120]}")
        else:
            status = "ok" if resp.succeeded else "fail"
            rec.record(process, status, "transfer", "bank", [a, b, x])
            if status == "ok" and self.group_of(a) != self.group_of(b):
                self.cross_ok += 1
        self.transfers[status] += 1
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        return status

    async def read_all(self, c: AsyncClient, *, serializable: bool = False,
                       timeout: float | None = None) -> dict[str, tuple[int, int]]:
        """key -> (balance, mod_revision), from one Range over every account."""
        r = await c.range(PREFIX, prefix_end(PREFIX), serializable=serializable, timeout=timeout)
        return {x.key.decode(): (int(x.value), x.mod_revision) for x in r.kvs}

    async def validate(self, c: AsyncClient, seen: dict[str, tuple[int, int]],
                       timeout: float | None = None) -> bool:
        compares = [mod_revision(k) == rev for k, (_v, rev) in sorted(seen.items())]
        resp = await c.txn().if_(*compares).commit(timeout=timeout)
        return bool(resp.succeeded)

    async def validated_read(self, c: AsyncClient, process: int) -> str:
        rec = self.recorder
        rec.record(process, "invoke", "read", "bank", None)
        try:
            seen = await self.read_all(c)
            ok = await self.validate(c, seen)
        except Exception as exc:  # a read (and a Txn without ops) has no effect: a failed one is a fail
            rec.record(process, "fail", "read", "bank", f"{type(exc).__name__}: {str(exc)[:120]}")
            self.read_errors += 1
            self.stats.fail += 1
            return "fail"
        s = sum(v for v, _ in seen.values())
        if ok:
            self.validated.append((s, len(seen)))
            rec.record(process, "ok", "read", "bank", {"sum": s, "n": len(seen)})
            self.stats.ok += 1
            return "ok"
        self.unvalidated += 1
        self.unvalidated_off += s != self.total
        rec.record(process, "fail", "read", "bank", {"sum": s, "n": len(seen), "validated": False})
        self.stats.fail += 1
        return "fail"

    # ------------------------------------------------------------------ the end

    async def finish(self) -> None:
        loop = asyncio.get_running_loop()
        self.final_errors: list[str] = []
        self.intents_clear_s: float | None = None
        self.final_validated: tuple[int, int] | None = None
        self.member_reads: dict[str, dict[str, int] | str] = {}
        self.linearizable: dict[str, int] = {}
        started = loop.time()
        last: dict[str, str] = {}
        async with AsyncClient(self.native_endpoints, timeout=3.0) as c:
            while loop.time() < started + self.intent_bound:
                last = {}
                for k in self.account_keys():
                    try:
                        await c.get_kv(k, timeout=2.0)
                    except Exception as exc:
                        last[k] = f"{type(exc).__name__}: {str(exc)[:120]}"
                if not last:
                    self.intents_clear_s = round(loop.time() - started, 3)
                    break
                await asyncio.sleep(0.5)
            if last:
                locked = [k for k, e in last.items() if "lock" in e.lower()]
                what = "still locked" if locked else "unreadable"
                keys = locked or sorted(last)
                self.final_errors.append(f"{len(keys)} accounts {what} {self.intent_bound:g}s after the clients "
                                         f"stopped: {', '.join(keys[:5])} ({last[keys[0]]})")
            for _ in range(10):
                try:
                    seen = await self.read_all(c, timeout=5.0)
                    if await self.validate(c, seen, timeout=10.0):
                        self.final_validated = (sum(v for v, _ in seen.values()), len(seen))
                        self.linearizable = {k: v for k, (v, _r) in seen.items()}
                        break
                except Exception as exc:
                    last["final validated read"] = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
        if self.final_validated is None:
            self.final_errors.append(f"no validated read of all accounts at the end "
                                     f"({last.get('final validated read', 'its compares kept failing')})")
        eps = self.current_endpoints() if self.current_endpoints is not None else self.endpoints
        deadline = loop.time() + 20.0
        for ep in eps:
            got: dict[str, int] | str = "<not read>"
            async with AsyncClient([ep], protocol="grpc", timeout=3.0) as c:
                while True:  # a member may lag behind for a moment after the quiet period
                    try:
                        got = {k: v for k, (v, _r) in (await self.read_all(c, serializable=True)).items()}
                    except Exception as exc:
                        got = f"<unreadable: {type(exc).__name__}: {str(exc)[:100]}>"
                    if got == self.linearizable or not self.linearizable or loop.time() > deadline:
                        break
                    await asyncio.sleep(0.3)
            self.member_reads[ep] = got

    def judge(self, ops: list[Any]) -> Findings:
        f = Findings()
        for s, n in self.validated:
            if s != self.total or n != self.accounts:
                f.violations.append(f"a validated read saw {n} accounts summing to {s}, not {self.accounts} "
                                    f"summing to {self.total}")
        f.violations.extend(getattr(self, "final_errors", []))
        fv = getattr(self, "final_validated", None)
        if fv is not None and fv != (self.total, self.accounts):
            f.violations.append(f"the final validated read saw {fv[1]} accounts summing to {fv[0]}")
        lin: dict[str, int] = getattr(self, "linearizable", {})
        negative = [k for k, v in lin.items() if v < 0]
        if negative:
            f.violations.append(f"negative balances at the end: {', '.join(negative[:5])}")
        reads: dict[str, dict[str, int] | str] = getattr(self, "member_reads", {})
        agree = 0
        for ep, got in reads.items():
            if isinstance(got, str):
                f.violations.append(f"{ep}: {got}")
            elif lin and got != lin:
                diff = sorted(k for k in set(got) | set(lin) if got.get(k) != lin.get(k))
                f.violations.append(f"{ep} disagrees on {len(diff)} accounts ({', '.join(diff[:5])}); its sum "
                                    f"{sum(got.values())}")
            elif sum(got.values()) != self.total:
                f.violations.append(f"{ep}: the accounts sum to {sum(got.values())}, not {self.total}")
            else:
                agree += 1
        sums = sorted({s for s, _ in self.validated})
        f.facts = {
            "accounts": self.accounts, "total": self.total, "shards": len(self.splits) + 1,
            "split_keys": self.splits,
            "transfers_ok": self.transfers["ok"], "transfers_fail": self.transfers["fail"],
            "transfers_info": self.transfers["info"], "cross_shard_transfers_ok": self.cross_ok,
            "validated_reads": len(self.validated), "validated_sums": sums[:10],
            "unvalidated_reads": self.unvalidated, "read_errors": self.read_errors,
            "unvalidated_reads_off_total": self.unvalidated_off,
            "final_validated_sum": fv[0] if fv is not None else None,
            "intents_clear_after_s": getattr(self, "intents_clear_s", None), "intent_bound_s": self.intent_bound,
            "members_agreeing": agree, "members_read": len(reads),
        }
        f.violations = f.violations[:50]
        return f


