"""The nemesis: carries out a schedule's faults on a live cluster and heals each one.

Theory of operation. ``Nemesis.run`` is an asyncio task: for each ``Fault`` it sleeps until the
fault's start, resolves abstract targets (the leader is asked of the members at that moment),
injects the fault, sleeps its duration and heals it, recording a ``FaultRecord`` (what was done,
to whom, when it began and was healed, in run seconds). Blocking steps (signals, nft, process
waits) run in a thread. ``heal_all`` undoes whatever is still in force (the run's end, Ctrl-C, an
exception): every member resumed and restarted, the network opened. Cluster operations that the
native protocol does not carry (member add/remove/promote, defragment, move-leader) are done with
``etcdctl`` against the members' etcd API, as an operator would; without etcdctl they are
recorded as skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from conclave.chaos.cluster import ChaosCluster, Member
from conclave.chaos.schedule import Fault, groups_cuts, ring_cuts
from conclave.client import AsyncClient


@dataclass
class FaultRecord:
    kind: str
    start: float
    end: float | None
    detail: str
    skipped: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "detail": self.detail,
                "skipped": self.skipped}


def etcdctl(endpoints: list[str], *args: str, timeout: float = 10.0) -> str:
    exe = shutil.which("etcdctl")
    if exe is None:
        raise RuntimeError("etcdctl not found")
    r = subprocess.run([exe, f"--endpoints={','.join(endpoints)}", "--command-timeout=5s", *args],
                       capture_output=True, text=True, timeout=timeout, env={"ETCDCTL_API": "3", "PATH": "/usr/bin"})
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)}: {(r.stderr or r.stdout).strip()[:300]}")
    return r.stdout


@dataclass
class Nemesis:
    cluster: ChaosCluster
    schedule: list[Fault]
    t0: float
    say: Callable[[str], None]
    seed: int = 0
    records: list[FaultRecord] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # server misbehaviour seen by the nemesis itself
    _cuts: set[tuple[int, int]] = field(default_factory=set)
    _shaped: bool = False

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def leader(self) -> Member | None:
        """The member most members name as leader (only members that answer within 1 s count)."""
        async def ask(m: Member) -> int:
            try:
                async with AsyncClient([m.endpoint], protocol="grpc", timeout=1.0) as c:
                    return (await c.status(m.endpoint, timeout=1.0)).leader
            except Exception:
                return 0
        live = [m for m in self.cluster.live() if m.alive() and not m.paused]
        votes = await asyncio.gather(*(ask(m) for m in live))
        counts: dict[int, int] = {}
        for v in votes:
            if v:
                counts[v] = counts.get(v, 0) + 1
        if not counts:
            return None
        lid = max(counts, key=lambda k: counts[k])
        return next((m for m in self.cluster.live() if m.member_id == lid), None)

    async def run(self) -> None:
        rng = random.Random(f"conclave-chaos-nemesis/{self.seed}")
        for f in self.schedule:
            await asyncio.sleep(max(0.0, f.start - self.now()))
            rec = FaultRecord(f.kind, round(self.now(), 3), None, "")
            self.records.append(rec)
            try:
                heal = await self.inject(f, rec, rng)
            except Exception as exc:  # a fault that could not be made is reported, the run goes on
                rec.detail += f" (could not inject: {exc})"
                rec.skipped = True
                heal = None
            self.say(f"[{rec.start:6.1f}s] fault {f.kind}: {rec.detail}")
            await asyncio.sleep(max(0.0, f.end - self.now()))
            if heal is not None:
                with contextlib.suppress(Exception):
                    await heal()
            rec.end = round(self.now(), 3)
            self.say(f"[{rec.end:6.1f}s] healed {f.kind}")

    async def _thread(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.to_thread(fn, *args)

    async def inject(self, f: Fault, rec: FaultRecord, rng: random.Random) -> Callable[[], Awaitable[object]] | None:
        c = self.cluster
        members = c.live()
        idx = [m.index for m in members]

        def pick(targets: tuple[int, ...]) -> list[Member]:
            # schedule indices are positions among the live members (membership may have changed)
            return [members[t % len(members)] for t in targets]

        if f.kind in ("kill-one", "kill-leader", "kill-majority", "pause-one", "pause-leader"):
            if f.kind.endswith("leader"):
                lead = await self.leader()
                victims = [lead] if lead is not None else pick((0,))
            else:
                victims = pick(f.targets)
            names = ",".join(v.name for v in victims)
            if f.kind.startswith("kill"):
                for v in victims:
                    await self._thread(c.kill, v)
                rec.detail = f"SIGKILL {names}; restart after {f.duration:.1f}s"

                async def restart() -> None:
                    for v in victims:
                        await self._thread(c.restart, v)
                return restart
            for v in victims:
                await self._thread(c.pause, v)
            rec.detail = f"SIGSTOP {names} for {f.duration:.1f}s"

            async def cont() -> None:
                for v in victims:
                    await self._thread(c.resume, v)
            return cont
        if f.kind in ("isolate-leader", "halves", "ring", "one-way"):
            if f.kind == "isolate-leader":
                lead = await self.leader()
                li = lead.index if lead is not None else idx[0]
                cuts = groups_cuts(((li,), tuple(i for i in idx if i != li)))
                rec.detail = f"isolate n{li}"
            elif f.kind == "halves":
                groups = tuple(tuple(members[t % len(members)].index for t in g) for g in f.groups)
                cuts = groups_cuts(groups)
                rec.detail = " | ".join(",".join(f"n{i}" for i in g) for g in groups)
            elif f.kind == "ring":
                order = tuple(members[t % len(members)].index for t in f.targets) if f.targets else tuple(idx)
                cuts = ring_cuts(order)
                rec.detail = "ring " + "-".join(f"n{i}" for i in order)
            else:
                a, b = (members[t % len(members)].index for t in f.targets)
                cuts = {(a, b)}
                rec.detail = f"n{a} -> n{b} packets lost"
            self._cuts = cuts
            await self._thread(c.set_network, cuts)

            async def heal_net() -> None:
                self._cuts = set()
                await self._thread(c.set_network, set())
            return heal_net
        if f.kind in ("latency", "loss"):
            if f.kind == "latency" and not c.latency_supported:
                rec.detail = "skipped: this kernel has no netem (tc qdisc netem)"
                rec.skipped = True
                return None
            delay = ({i: (int(f.param("delay_ms")), int(f.param("jitter_ms"))) for i in idx}
                     if f.kind == "latency" else {})
            loss = {i: int(f.param("loss_pct")) for i in idx} if f.kind == "loss" else {}
            rec.detail = (f"+{delay[idx[0]][0]}ms ±{delay[idx[0]][1]}ms on every member" if delay
                          else f"{loss[idx[0]]}% packet loss on every member")
            self._shaped = True
            await self._thread(c.set_network, self._cuts, delay, loss)

            async def unshape() -> None:
                self._shaped = False
                await self._thread(c.set_network, self._cuts)
            return unshape
        if f.kind == "leader-transfer":
            lead = await self.leader()
            if lead is None:
                rec.detail, rec.skipped = "skipped: no leader", True
                return None
            others = [m for m in members if m is not lead and m.alive()]
            target = rng.choice(others)
            await self._thread(etcdctl, [lead.endpoint], "move-leader", f"{target.member_id:x}")
            rec.detail = f"leader {lead.name} -> {target.name}"
            return None
        if f.kind == "compact-defrag":
            async with AsyncClient(c.native_endpoints(), timeout=5.0) as cl:
                st = await cl.status()
                rev = max(1, st.revision - 50)
                await cl.compact(rev)
            for m in members:
                with contextlib.suppress(Exception):
                    await self._thread(etcdctl, [m.endpoint], "defrag")
            rec.detail = f"compact at revision {rev}, defragment every member"
            return None
        if f.kind == "member-replace":
            return await self._replace(rec, rng)
        if f.kind in ("disk-full", "wal-torn", "wal-corrupt"):
            return await self._disk(f, rec, rng, pick(f.targets)[0])
        rec.detail, rec.skipped = "unknown fault", True
        return None

    async def _disk(self, f: Fault, rec: FaultRecord, rng: random.Random,
                    m: Member) -> Callable[[], Awaitable[object]] | None:
        c = self.cluster
        if f.kind == "disk-full":
            if not c.mounts:
                rec.detail, rec.skipped = "skipped: data dirs are not on a tmpfs (needs the namespace mode)", True
                return None
            filler = m.data_dir / "chaos-filler"
            st = os.statvfs(m.data_dir)
            free = st.f_bavail * st.f_frsize
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                os.posix_fallocate(out.fileno(), 0, free)
            rec.detail = f"filled {m.name}'s data dir ({free >> 20} MiB)"

            async def unfill() -> None:
                filler.unlink(missing_ok=True)
                state = "still running" if m.alive() else "had exited: " + _last_line(m)
                rec.detail += f"; freed ({m.name} {state})"
                if not m.alive():
                    await self._thread(c.restart, m)
            return unfill
        await self._thread(c.kill, m)
        wals = sorted(m.data_dir.rglob("*.wal"))
        if not wals:
            rec.detail = f"SIGKILL {m.name}: no WAL file found to damage"
            return lambda: self._thread(c.restart, m)
        seg = wals[-1]
        size = seg.stat().st_size
        if f.kind == "wal-torn":
            cut = min(size, rng.randrange(1, 200))
            os.truncate(seg, size - cut)
            rec.detail = f"SIGKILL {m.name}, cut {cut} bytes off the end of {seg.name}"
        else:
            data = bytearray(seg.read_bytes())
            used = len(data.rstrip(b"\0"))
            at = rng.randrange(max(1, used // 2), max(2, used))
            data[at] ^= 0xFF
            seg.write_bytes(bytes(data))
            rec.detail = f"SIGKILL {m.name}, flipped byte {at} of {used} written in {seg.name}"

        async def restart_and_judge() -> None:
            await self._thread(c.restart, m)
            await asyncio.sleep(3.0)
            if m.alive():
                rec.detail += f"; restarted: {m.name} serves again"
                return
            words = _last_line(m)
            if "corrupt" in words.lower():
                rec.detail += f"; {m.name} refused to start as documented ({words[:160]}); rebuilding it"
                await self._replace(rec, rng, gone=m)
            else:
                rec.detail += f"; {m.name} exited without naming the corruption: {words[:200]}"
                self.findings.append(f"{f.kind} on {m.name}: exited without naming the corruption: {words[:300]}")
        return restart_and_judge

    async def _replace(self, rec: FaultRecord, rng: random.Random,
                       gone: Member | None = None) -> Callable[[], Awaitable[object]] | None:
        """Remove a follower (or ``gone``), add a fresh member as a learner (its data dir built from
        the others), promote it once it has caught up."""
        c = self.cluster
        if c.shards > 1:  # the caller (the member nemesis) is skipped by the run; a disk rebuild lands here
            why = "not replaced: membership changes are refused with --shards > 1"
            rec.detail += ("; " if rec.detail else "") + why
            rec.skipped = gone is None
            return None
        lead = await self.leader()
        followers = [m for m in c.live() if m is not lead and m.alive()]
        if lead is None or (not followers and gone is None):
            rec.detail, rec.skipped = rec.detail + " skipped: no leader", True
            return None
        gone = gone or rng.choice(followers)
        eps = [m.endpoint for m in c.live() if m is not gone]
        await self._thread(etcdctl, eps, "member", "remove", f"{gone.member_id:x}")
        gone.removed = True
        await self._thread(c.kill, gone)
        fresh = await self._thread(c.new_member)
        assert isinstance(fresh, Member)
        out = await self._thread(etcdctl, eps, "member", "add", fresh.name, f"--peer-urls={fresh.peer_url}",
                                 "--learner")
        assert isinstance(out, str)
        found = re.search(r"Member\s+([0-9a-f]+)\s+added", out)
        if found is None:
            raise RuntimeError(f"etcdctl member add said {out.strip()[:200]!r}")
        fresh.member_id = int(found.group(1), 16)
        await self._thread(c.start_joining, fresh)
        if c.proxy is not None:
            c.proxy.ids = {m.member_id: m.index for m in c.members if m.member_id}
        rec.detail += ("; " if rec.detail else "") + f"removed {gone.name}, added {fresh.name} as a learner"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await self._thread(etcdctl, eps, "member", "promote", f"{fresh.member_id:x}")
                rec.detail += ", promoted"
                break
            except Exception:
                await asyncio.sleep(1.0)
        else:
            rec.detail += ", not promoted within 30s"
        return None

    async def heal_all(self) -> None:
        """Undo every fault still in force: resume, restart, open the network."""
        c = self.cluster
        self._cuts = set()
        with contextlib.suppress(Exception):
            await self._thread(c.set_network, set())
        for m in c.live():
            with contextlib.suppress(Exception):
                await self._thread(c.resume, m)
                await self._thread(c.restart, m)
        for r in self.records:
            if r.end is None:
                r.end = round(self.now(), 3)


def _last_line(m: Member) -> str:
    try:
        lines = [ln for ln in m.log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
