"""zombie-leader: a leader cut off in term t keeps accepting writes it can never commit; the majority
elects a leader in term t+1; the zombie's writes never become visible and are never acknowledged."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import LINEARIZABLE, Lab, Outcome
from conclave.lab.raftlab import RaftCluster, client_read, client_write
from conclave.lab.scenario import Scenario, Variant

CUT, HEAL, END = 200, 550, 800


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("zombie-leader", variant, seed, base=2, jitter=3)
    cluster = RaftCluster(lab.loop, lab.net, lab.trace, seed, check_quorum=variant != "no-check-quorum")
    lab.at(1, lambda: cluster.campaign(1))
    zed, maj = lab.client("zombie-client", 150), lab.client("majority-client", 150)
    seen: dict[str, int] = {}

    def loop(client: Any, name: str, member: int, k: list[int]) -> None:
        if lab.loop.now > END - 150:
            return
        k[0] += 1
        m = cluster[member]
        if lab.loop.now > HEAL + 50:
            client.call("read", None, None, lambda d: client_read(lab.net, name, m, "x", "read-index", d))
        else:
            v = f"{name[0]}{k[0]}"
            client.call("write", v, None, lambda d: client_write(lab.net, name, m, "x", v, d))
        lab.loop.after(40, lambda: loop(client, name, member, k))

    def cut() -> None:
        old = cluster[1].node.term
        seen["term"], seen["commit"] = old, cluster[1].node.commit_index
        lab.net.partition(("n1", "zombie-client"), ("n2", "n3", "majority-client"), label="n1 | n2, n3")

    def heal() -> None:
        d = cluster[1].disk.entries
        seen["zombie"] = sum(1 for e in d if e.term == seen["term"] and e.index > seen["commit"] and e.data)
        lab.net.heal()

    lab.at(150, lambda: loop(zed, "zombie-client", 1, [0]))
    lab.at(160, lambda: loop(maj, "majority-client", 2, [0]))
    lab.at(CUT, cut)
    lab.at(HEAL, heal)
    lab.loop.run(END)
    zombie_acked = sum(1 for o in lab.rec.ops if o.process == "zombie-client" and o.f == "write" and o.status == "ok"
                       and CUT + 10 < o.call < HEAL)
    new_term = max(t for t, ids in cluster.leaders.items() if ids)
    appended = _n(seen.get("zombie", 0), "entry", "entries")
    story = (f"n1 led term {seen['term']} when it was cut off with its client at t={CUT}; it went on appending "
             f"the client's writes ({appended} in term {seen['term']}) but could never commit them without a "
             f"majority. n2 and n3 elected a leader in term {new_term} and kept committing; on healing n1 learned "
             f"the higher term, stepped down and its uncommitted entries were overwritten. No zombie write was "
             f"acknowledged ({zombie_acked}) or ever read: terms and quorums keep the history linearizable.")
    return lab.finish(story, "", cluster.names, counts={
        "zombie entries appended": seen.get("zombie", 0), "zombie writes acknowledged": zombie_acked,
        "old term": seen["term"], "new term": new_term, "election safety": cluster.election_safe()})


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


SCENARIO = Scenario(
    "zombie-leader",
    "a partitioned leader keeps accepting writes it cannot commit; the majority moves on",
    "Terms (epochs) and majority quorums: a deposed leader cannot commit or acknowledge",
    (Variant("check-quorum", LINEARIZABLE, "Conclave's default: the zombie steps down after an election timeout"),
     Variant("no-check-quorum", LINEARIZABLE, "the zombie stays leader of its term until it hears a higher one")),
    run,
)
