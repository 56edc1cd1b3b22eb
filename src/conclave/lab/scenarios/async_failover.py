"""async-failover: an acknowledged write only on the crashed leader is gone after failover; --sync keeps it."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import LINEARIZABLE, NOT_LINEARIZABLE, Lab, Outcome, lost_register_writes
from conclave.lab.replication import Primary, Replica
from conclave.lab.scenario import Scenario, Variant

SHIP_MS = 100  # the asynchronous leader ships its log every 100 ms


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("async-failover", variant, seed, base=1, jitter=3)
    net, rng = lab.net, lab.rng
    leader, f1, f2 = (Replica(n, net, lab.trace) for n in ("leader", "f1", "f2"))
    sync = variant == "sync"
    prim = Primary(lab.loop, net, leader, [f1, f2], sync, SHIP_MS)
    client, reader = lab.client("client", 120), lab.client("reader", 120)
    crash_at = SHIP_MS + 40 + rng.randint(0, 40)
    failover_at = crash_at + 60
    values = iter(range(1, 100))

    def write_next() -> None:
        if lab.loop.now >= crash_at:
            return
        v = next(values)
        client.call("write", v, None, lambda d: prim.write("client", "x", v, d))
        lab.loop.after(20, write_next)

    def crash() -> None:
        net.crash("leader")
        lab.trace.note(lab.loop.now, "the leader crashes")

    def failover() -> None:
        prim.leader, prim.followers = f1, [f2]
        prim.version = max(f1.get("x")[0][0], 0) + 1000  # a new epoch: its versions outrank the old leader's
        lab.trace.note(lab.loop.now, "f1 is promoted to leader")
        reader.call("read", None, None, lambda d: prim.read("reader", "x", d))

    lab.at(10, write_next)
    lab.at(crash_at, crash)
    lab.at(failover_at, failover)
    lab.loop.run(failover_at + 200)
    acked = sum(o.f == "write" and o.status == "ok" for o in lab.rec.ops)
    lost = lost_register_writes(lab.rec.ops, {None: f1.value("x")})
    if sync:
        story = (f"The leader acknowledged each write only after both followers had it. It crashed at t={crash_at} "
                 f"and f1 was promoted; f1 held every acknowledged write ({acked} of them), and the read through it "
                 f"returned the last one: durable and linearizable, at the price of a round trip per write.")
    else:
        story = (f"The leader acknowledged each write at once and shipped its log to the followers every {SHIP_MS} ms. "
                 f"It crashed at t={crash_at}, {crash_at - SHIP_MS} ms after its last shipment, and f1 was promoted; "
                 f"{lost} acknowledged write(s) existed only on the dead leader, so the read through f1 returned "
                 f"{f1.value('x')}: durability and linearizability both broken.")
    return lab.finish(story, "", ["leader", "f1", "f2"], counts={"acknowledged writes": acked, "lost writes": lost})


SCENARIO = Scenario(
    "async-failover",
    "single leader, asynchronous followers: failover loses acknowledged writes",
    "Durability and linearizability need a write acknowledged only once a successor has it",
    (Variant("async", NOT_LINEARIZABLE, "acknowledge at once, replicate every 100 ms"),
     Variant("sync", LINEARIZABLE, "acknowledge after every follower has the write")),
    run,
)
