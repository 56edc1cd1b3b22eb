"""split-brain-lock: a lease-lock holder pauses, its lease expires, a second client takes the lock and
the first wakes and writes: the storage is corrupted. --fencing: the storage rejects the stale token."""

from __future__ import annotations

from functools import partial
from typing import Any

from conclave.lab.core import Lab, Outcome
from conclave.lab.replication import Replica
from conclave.lab.scenario import Scenario, Variant

TTL = 100


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("split-brain-lock", variant, seed, base=1, jitter=2)
    net, rng, trace = lab.net, lab.rng, lab.trace
    fencing = variant == "fencing"
    lock: dict[str, Any] = {"holder": None, "until": 0, "token": 0}
    storage = Replica("storage", net, trace)
    lock_lane = "lock-service"
    highest = [0]
    trace.state(lock_lane, 0, "free")
    c1, c2 = lab.client("client-1", 400), lab.client("client-2", 400)

    def acquire(name: str, done: Any) -> None:
        def at_lock() -> None:
            now = lab.loop.now
            if lock["holder"] is None or lock["until"] <= now:
                lock.update(holder=name, until=now + TTL, token=lock["token"] + 1)
                trace.state(lock_lane, now, f"held by {name}, token {lock['token']}, lease to {now + TTL}")
                net.send(lock_lane, name, partial(done, "ok", lock["token"]))
            else:
                net.send(lock_lane, name, lambda: done("fail", None))
        net.send(name, lock_lane, at_lock)

    def write(name: str, token: int, value: str, done: Any) -> None:
        def at_storage() -> None:
            if fencing and token < highest[0]:
                trace.note(lab.loop.now, f"storage rejects {name}'s write: token {token} < {highest[0]}")
                net.send("storage", name, lambda: done("fail", None))
                return
            highest[0] = max(highest[0], token)
            storage.store("file", (lab.loop.now, name), value)
            net.send("storage", name, lambda: done("ok", None))
        net.send(name, "storage", at_storage)

    pause = 150 + rng.randint(0, 100)
    tokens: dict[str, int] = {}

    def c1_start() -> None:
        c1.call("acquire", None, None, lambda d: acquire("client-1", d),
                then=lambda op: tokens.__setitem__("client-1", op.output))

    def c1_gc() -> None:
        trace.note(lab.loop.now, "client-1 checks its lease (still valid) and starts a GC pause")
        net.pause("client-1", f"client-1 GC pause {pause} ms")
        lab.at(lab.loop.now + pause, c1_wake)

    def c1_wake() -> None:
        net.resume("client-1")
        c1.call("write", "client-1's data", None, lambda d: write("client-1", tokens["client-1"], "client-1's data", d))

    def c2_try() -> None:
        def then(op: Any) -> None:
            if op.status == "ok":
                tokens["client-2"] = op.output
                c2.call("write", "client-2's data", None,
                        lambda d: write("client-2", op.output, "client-2's data", d))
            else:
                lab.loop.after(20, c2_try)
        c2.call("acquire", None, None, lambda d: acquire("client-2", d), then=then)

    lab.at(0, c1_start)
    lab.at(20, c1_gc)
    lab.at(40 + rng.randint(0, 10), c2_try)
    lab.loop.run(600)
    band = trace.band("lease", f"client-1's lease (to {TTL} ms)", 1, ("client-1",))
    band.end = TTL
    final = storage.value("file")
    corrupted = final == "client-1's data"
    verdict = "corrupted" if corrupted else "safe"
    if fencing:
        story = (f"Client 1 took the lock (token 1) and paused for {pause} ms; its lease expired at t={TTL} and client "
                 f"2 took the lock with token 2 and wrote. When client 1 woke and wrote with token 1, the storage, "
                 f"which had seen token 2, rejected it: fencing tokens keep a stale holder out, safe.")
    else:
        story = (f"Client 1 took the lock (token 1) and paused for {pause} ms; its lease expired at t={TTL} and client "
                 f"2 took the lock and wrote. Client 1 woke believing it still held the lock and overwrote client 2's "
                 f"data: a lease alone cannot stop a paused holder, the storage is corrupted.")
    why = ("The verdict is 'corrupted' when the storage ends with a write from a client whose lease had expired "
           f"before the write arrived, 'safe' otherwise. Final contents: {final!r}; the storage rejected "
           f"{sum(o.f == 'write' and o.status == 'fail' for o in lab.rec.ops)} write(s).")
    return lab.finish(story, "", ["lock-service", "storage"], model=None, verdict=verdict, explanation=why,
                      counts={"lost writes": int(corrupted), "GC pause ms": pause, "final contents": final})


SCENARIO = Scenario(
    "split-brain-lock",
    "a paused lock holder wakes after its lease expired and corrupts the storage; fencing tokens stop it",
    "Leases need fencing: the protected resource must reject stale tokens",
    (Variant("lease-only", "corrupted", "the storage trusts whoever writes"),
     Variant("fencing", "safe", "the storage rejects a token lower than one it has seen")),
    run,
)
