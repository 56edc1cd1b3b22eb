"""election-timeouts: network jitter swept against the election timeout on the real Raft core:
elections per minute, throughput and unavailable time; safety holds, availability collapses."""

from __future__ import annotations

from functools import partial
from typing import Any

from conclave.lab.core import Lab, Outcome, check_history
from conclave.lab.raftlab import RaftCluster, client_write
from conclave.lab.scenario import Scenario, Variant

ELECTION_MS = 100  # 10 ticks of 10 ms (randomized to 100-200 ms by the core)
SAFE = "safe"
CLIENTS = 4


def _point(seed: int, variant: str, jitter: int, duration: int) -> tuple[Lab, RaftCluster, dict[str, float]]:
    lab = Lab("election-timeouts", variant, seed, base=2, jitter=jitter)
    cluster = RaftCluster(lab.loop, lab.net, lab.trace, seed)
    samples = [0, 0]
    k = [0]

    def write(name: str) -> None:
        """One of CLIENTS writers: write to the leader it sees, then again 20 ms after the answer."""
        if lab.loop.now >= duration:
            return
        leader = cluster.leader()
        if leader is not None:
            k[0] += 1
            v = k[0]
            lab.client(name, 400).call(
                "write", v, None, lambda d: client_write(lab.net, name, leader, "x", v, d),
                then=lambda op: lab.loop.after(20, lambda: write(name)))
        else:
            lab.loop.after(20, lambda: write(name))

    def sample() -> None:
        if lab.loop.now >= duration:
            return
        samples[1] += 1
        leader = cluster.leader()
        if leader is not None:
            followers = sum(1 for m in cluster.members.values()
                            if m.node.leader_id == leader.id and m.node.term == leader.node.term)
            samples[0] += followers * 2 > len(cluster.ids)
        lab.loop.after(10, sample)

    for c in range(CLIENTS):
        lab.at(10 + 3 * c, partial(write, f"client-{c}"))
    lab.at(10, sample)
    lab.loop.run(duration + 200)
    acked = sum(1 for o in lab.rec.ops if o.status == "ok")
    terms = max(m.node.term for m in cluster.members.values())
    row = {"jitter ms": float(jitter), "elections/min": (cluster.elections - 1) * 60_000 / duration,
           "terms/min": (terms - 1) * 60_000 / duration,
           "writes/s": acked * 1000 / duration, "unavailable %": 100 * (1 - samples[0] / max(1, samples[1]))}
    return lab, cluster, row


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    jitters = [int(j) for j in str(opts["jitters"]).split(",")]
    duration = int(opts["duration"])
    rows: list[dict[str, float]] = []
    safe = True
    last: tuple[Lab, RaftCluster] | None = None
    repeats = int(opts["repeats"])
    for j in jitters:
        runs = [_point(seed * 1000 + r, variant, j, duration) for r in range(repeats)]
        for lab, cluster, _ in runs:
            verdict, _, _ = check_history(lab.rec.text(), "register")
            safe = safe and cluster.election_safe() and verdict == "linearizable"
        rows.append({k: sum(r[2][k] for r in runs) / repeats for k in runs[0][2]})
        last = (runs[0][0], runs[0][1])
    assert last is not None
    lab, cluster = last
    worst, best = rows[-1], rows[0]
    story = (f"Three Raft members (election timeout {ELECTION_MS}-{2 * ELECTION_MS} ms, heartbeat 20 ms) and "
             f"{CLIENTS} clients writing to the leader ran {repeats} times for {duration / 1000:g} s of virtual "
             f"time at each network jitter from {jitters[0]} to {jitters[-1]} ms. With no jitter there were "
             f"{best['elections/min']:.0f} elections per minute and {best['unavailable %']:.1f}% unavailable time; "
             f"at {jitters[-1]} ms, {worst['elections/min']:.0f} elections per minute ({worst['terms/min']:.0f} "
             f"terms begun), {worst['unavailable %']:.1f}% unavailable and {worst['writes/s']:.0f} writes/s "
             f"against {best['writes/s']:.0f}, averaged over the runs. Every term had at most one leader and "
             f"every history was linearizable: safety holds while availability collapses as the jitter "
             f"approaches the timeout.")
    why = (f"The verdict is 'safe' when, in all {len(rows) * repeats} runs, every term had at most one leader "
           f"(Raft's election safety) and the client history was linearizable (the checker's register model). "
           f"The drawing and the check below are of the first run at jitter {jitters[-1]} ms.")
    out = lab.finish(story, "", cluster.names, verdict=SAFE if safe else "unsafe", explanation=why,
                     counts={"points": len(rows), "election safety": cluster.election_safe(),
                             "drawn": f"the run at jitter {jitters[-1]} ms"})
    out.seed = seed
    out.sweep = rows
    out.sweep_axes = ("jitter ms", "elections/min,terms/min,unavailable %,writes/s",
                      f"Raft availability against network jitter (election timeout {ELECTION_MS} ms)")
    return out


SCENARIO = Scenario(
    "election-timeouts",
    "a sweep of network jitter against the election timeout: elections, throughput, unavailability",
    "Timeouts: Raft's safety never depends on timing, its liveness does",
    (Variant("sweep", SAFE, "jitter 0 to 300 ms, 3 runs of 3 s of virtual time at each"),),
    run,
    {"duration": 3_000, "jitters": "0,50,100,150,200,250,300", "repeats": 3},
)
