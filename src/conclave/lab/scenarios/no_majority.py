"""no-majority: 3 Raft members, 2 crash: no progress, safety kept; 2PC with one participant down cannot
commit either. Raft needs a majority, 2PC needs everyone."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import LINEARIZABLE, Lab, Outcome
from conclave.lab.raftlab import RaftCluster, client_read, client_write
from conclave.lab.scenario import Scenario, Variant
from conclave.lab.scenarios.two_pc import TwoPC

CRASH, END = 250, 700


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("no-majority", variant, seed, base=2, jitter=3)
    if variant == "2pc":
        return _two_pc(lab)
    cluster = RaftCluster(lab.loop, lab.net, lab.trace, seed)
    lab.at(1, lambda: cluster.campaign(1))
    client = lab.client("client", 120)
    down = (2, 3) if variant == "raft-two-down" else (3,)
    k = [0]

    def loop() -> None:
        if lab.loop.now > END - 150:
            return
        k[0] += 1
        if k[0] % 3:
            v = k[0]
            client.call("write", v, None, lambda d: client_write(lab.net, "client", cluster[1], "x", v, d))
        else:
            client.call("read", None, None, lambda d: client_read(lab.net, "client", cluster[1], "x", "read-index", d))
        lab.loop.after(30, loop)

    lab.at(100, loop)
    for i in down:
        lab.at(CRASH, cluster[i].crash)
    lab.loop.run(END)
    after = sum(1 for o in lab.rec.ops if o.status == "ok" and o.call > CRASH + 10)
    if len(down) == 2:
        story = (f"Three Raft members; at t={CRASH} n2 and n3 crashed, leaving n1 alone. n1 could neither commit a "
                 f"write nor confirm a ReadIndex without a majority: {after} operations succeeded after the crash, "
                 f"the others timed out or were refused. Progress stopped, safety did not: no answer was wrong, "
                 f"the history is linearizable.")
    else:
        story = (f"Three Raft members; at t={CRASH} only n3 crashed. n1 and n2 are still a majority, so writes and "
                 f"ReadIndex reads kept succeeding ({after} after the crash). Raft tolerates the loss of any "
                 f"minority.")
    return lab.finish(story, "", cluster.names, counts={"ok after the crash": after,
                                                        "election safety": cluster.election_safe()})


def _two_pc(lab: Lab) -> Outcome:
    tpc = TwoPC(lab, vote_timeout=100)
    client = lab.client("client", 300)
    n = [0]
    results: list[tuple[int, str]] = []

    def loop() -> None:
        if lab.loop.now > END - 200:
            return
        n[0] += 1
        tx = f"tx{n[0]}"
        for p in tpc.parts:  # each transaction starts clean: the previous one released its locks
            if tpc.status[p] != "prepared":
                tpc.status[p] = "idle"
        client.call("txn", tx, None, lambda d: tpc.begin(tx, d),
                    then=lambda op: results.append((op.call, op.status)))
        lab.loop.after(150, loop)

    lab.at(100, loop)
    lab.at(CRASH, lambda: lab.net.crash("n3"))
    lab.loop.run(END)
    tpc.close()
    after = sum(1 for t, s in results if s == "ok" and t > CRASH)
    verdict = "stalled" if after == 0 else "progress"
    story = (f"Coordinator n1 ran a transaction every 150 ms over participants n2 and n3; at t={CRASH} n3 crashed. "
             f"Every transaction after that timed out waiting for n3's vote and aborted ({after} committed): 2PC "
             f"needs every participant, where Raft needs only a majority.")
    why = (f"The verdict is 'stalled' when no transaction called after the crash (t={CRASH}) committed, "
           f"'progress' otherwise. Transactions: {len(results)}; committed after the crash: {after}.")
    return lab.finish(story, "", ["tx@n1", "tx@n2", "tx@n3"], model=None, verdict=verdict, explanation=why,
                      counts={"committed after the crash": after, "transactions": len(results)})


SCENARIO = Scenario(
    "no-majority",
    "3 Raft members with 2 down make no progress but stay safe; 2PC stalls with 1 participant down",
    "Quorums: Raft needs a majority, two-phase commit needs everyone",
    (Variant("raft-two-down", LINEARIZABLE, "2 of 3 members crash: nothing commits, nothing wrong"),
     Variant("raft-one-down", LINEARIZABLE, "1 of 3 crashes: the majority carries on"),
     Variant("2pc", "stalled", "one 2PC participant crashes: no transaction can commit")),
    run,
)
