"""quorum-race: leaderless quorums (n=3, w=2, r=2) are not linearizable; read repair fixes it; LWW loses writes."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import (
    LINEARIZABLE,
    NOT_LINEARIZABLE,
    Client,
    Lab,
    Outcome,
    SkewedClock,
    lost_register_writes,
)
from conclave.lab.replication import Replica, quorum_read, quorum_write
from conclave.lab.scenario import Scenario, Variant

N, W, R = 3, 2, 2


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("quorum-race", variant, seed, base=1, jitter=2)
    net, rng = lab.net, lab.rng
    reps = [Replica(f"r{i}", net, lab.trace) for i in (1, 2, 3)]
    if variant == "lww":
        return _lww(lab, reps)
    writer, ra, rb = lab.client("writer", 600), lab.client("reader-a", 600), lab.client("reader-b", 600)
    slow = 150 + rng.randint(0, 50)
    net.set_link("writer", "r2", slow, 20)
    net.set_link("writer", "r3", slow, 20)
    lab.trace.band("delay", f"writer -> r2, r3 slow ({slow} ms)", 0).end = slow + 40
    repair = variant == "read-repair"
    a_at, b_at = 10 + rng.randint(0, 10), 40 + rng.randint(0, 10)
    def read(client: Client, quorum: list[Replica]) -> None:
        client.call("read", None, None, lambda d: quorum_read(net, client.name, quorum, "x", R, d, repair, W))

    lab.at(0, lambda: writer.call("write", 1, None,
                                  lambda d: quorum_write(net, "writer", reps, "x", (1, "writer"), 1, W, d)))
    lab.at(a_at, lambda: read(ra, reps[:2]))  # reader A's nearest replicas: r1, r2
    lab.at(b_at, lambda: read(rb, reps[1:]))  # reader B's: r2, r3
    lab.at(400, lambda: read(rb, reps[1:]))
    lab.loop.run(600)
    read_a = next(o for o in lab.rec.ops if o.process == "reader-a")
    if repair:
        story = (f"The writer's write of 1 reached r1 at once but r2 and r3 only after {slow} ms. Reader A's quorum "
                 f"(r1, r2) saw 1 and, before answering, wrote it back to a write quorum (read repair), so reader "
                 f"B's later quorum (r2, r3) also saw 1. Every read that follows another in real time sees at least "
                 f"as new a value: linearizable.")
    else:
        story = (f"The writer's write of 1 reached r1 at once but r2 and r3 only after {slow} ms, so it was not yet "
                 f"acknowledged. Reader A's quorum (r1, r2) saw {read_a.output} at t={read_a.ret}; reader B's quorum "
                 f"(r2, r3), asked after A had its answer, saw nothing. w + r > n makes quorums overlap, yet a later "
                 f"read went back in time: not linearizable.")
    return lab.finish(story, "", ["r1", "r2", "r3"],
                      counts={"w": W, "r": R, "n": N, "repairs": int(repair)})


def _lww(lab: Lab, reps: list[Replica]) -> Outcome:
    net, rng = lab.net, lab.rng
    skew = 40 + rng.randint(0, 40)
    c1, c2 = SkewedClock(lab.loop, skew), SkewedClock(lab.loop, 0)
    w1, w2, rd = lab.client("writer-1"), lab.client("writer-2"), lab.client("reader")
    t2 = 15 + rng.randint(0, 10)
    lab.trace.band("other", f"writer-1's clock is {skew} ms ahead", 0, ("writer-1",))
    def write(client: Client, clock: SkewedClock, value: int) -> None:
        client.call("write", value, None,
                    lambda d: quorum_write(net, client.name, reps, "x", (clock.now(), client.name), value, W, d))

    lab.at(0, lambda: write(w1, c1, 1))
    lab.at(t2, lambda: write(w2, c2, 2))
    lab.at(t2 + 40, lambda: rd.call("read", None, None, lambda d: quorum_read(net, "reader", reps, "x", R, d)))
    lab.loop.run(300)
    final = {None: reps[0].value("x")}
    lost = lost_register_writes(lab.rec.ops, final)
    story = (f"Writer 1 wrote 1 stamped with its clock, {skew} ms fast; writer 2 wrote 2 at t={t2}, after writer 1 "
             f"was acknowledged, stamped {t2}. Every replica kept the higher stamp, 1, and still acknowledged writer "
             f"2: last-write-wins on skewed clocks silently dropped an acknowledged write, and the reader saw the "
             f"older value: not linearizable.")
    return lab.finish(story, "", ["r1", "r2", "r3"], counts={"lost writes": lost, "clock skew ms": skew})


SCENARIO = Scenario(
    "quorum-race",
    "leaderless quorums (n=3, w=2, r=2): a later read misses a write an earlier read saw",
    "Quorum overlap (w + r > n) is not linearizability; ABD-style read repair and LWW clocks",
    (Variant("plain", NOT_LINEARIZABLE, "reads take the newest of r replies"),
     Variant("read-repair", LINEARIZABLE, "a read writes the newest value back to w replicas before answering"),
     Variant("lww", NOT_LINEARIZABLE, "quorum-lww: last-write-wins on skewed clocks loses an acknowledged write")),
    run,
)
