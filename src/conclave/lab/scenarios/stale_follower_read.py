"""stale-follower-read: writes through the Raft log, reads from a lagging member: stale; ReadIndex or a
read through the log makes them linearizable. Total order broadcast orders writes, not reads."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import LINEARIZABLE, NOT_LINEARIZABLE, Lab, Outcome
from conclave.lab.raftlab import RaftCluster, client_read, client_write
from conclave.lab.scenario import Scenario, Variant

HOW = {"local": "local", "read-index": "read-index", "log-read": "log"}


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("stale-follower-read", variant, seed, base=2, jitter=2)
    lag = 50 + lab.rng.randint(0, 20)
    lab.net.set_link("n1", "n3", lag, 5, both=False)
    lab.trace.band("delay", f"n1 -> n3 lags {lag} ms", 0, ("n3",))
    cluster = RaftCluster(lab.loop, lab.net, lab.trace, seed)
    lab.at(1, lambda: cluster.campaign(1))
    writer, reader = lab.client("writer", 300), lab.client("reader", 300)
    how = HOW[variant]
    values = iter(range(1, 1000))

    def write() -> None:
        if lab.loop.now < 450:
            v = next(values)
            writer.call("write", v, None, lambda d: client_write(lab.net, "writer", cluster[1], "x", v, d),
                        then=lambda op: lab.loop.after(5 + lab.rng.randint(0, 3), read))
            lab.loop.after(40, write)

    def read() -> None:
        reader.call("read", None, None, lambda d: client_read(lab.net, "reader", cluster[3], "x", how, d))

    lab.at(150, write)
    lab.loop.run(600)
    reads = [o for o in lab.rec.ops if o.f == "read" and o.status == "ok"]
    stale = 0
    for r in reads:
        done = [w.value for w in lab.rec.ops if w.f == "write" and w.status == "ok" and w.ret is not None
                and w.ret < r.call]
        stale += bool(done) and (r.output is None or r.output < max(done))
    if variant == "local":
        story = (f"Every write went through n1's Raft log and was acknowledged once n1 and n2 had it; n3 heard from "
                 f"the leader {lag} ms late. The reader asked n3 right after each acknowledgement and n3 answered "
                 f"from what it had applied: {stale} of {len(reads)} reads were stale. Total order broadcast made "
                 f"the writes linearizable, not the reads: not linearizable.")
    else:
        what = ("a ReadIndex (the leader confirms its leadership with a quorum heartbeat, n3 waits until it has "
                "applied that far)" if how == "read-index" else "a read entry through the log, answered when n3 "
                "applies it")
        story = (f"The same writes through n1's log, the same reader asking the lagging n3 ({lag} ms behind). Each "
                 f"read now went through {what}. No read was stale ({stale} of {len(reads)}), at the price of a "
                 f"round trip to the leader: linearizable.")
    return lab.finish(story, "", cluster.names, counts={"stale reads": stale, "reads": len(reads),
                                                        "election safety": cluster.election_safe()})


SCENARIO = Scenario(
    "stale-follower-read",
    "writes through the Raft log, reads from a lagging follower: stale unless ReadIndex",
    "Total order broadcast gives linearizable writes, not reads; ReadIndex makes reads linearizable",
    (Variant("local", NOT_LINEARIZABLE, "the follower answers from its applied state (serializable)"),
     Variant("read-index", LINEARIZABLE, "Raft's ReadIndex: confirm leadership, wait to apply, read"),
     Variant("log-read", LINEARIZABLE, "the read is an entry in the log")),
    run,
)
