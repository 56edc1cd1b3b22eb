"""2pc-coordinator-crash: the coordinator crashes after every participant voted yes; they stay in doubt,
holding locks, until it recovers (--recover-after); with the decision committed through Raft any node
completes the transaction."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from conclave.lab.core import Lab, Outcome, Reply
from conclave.lab.raftlab import RaftCluster
from conclave.lab.scenario import Scenario, Variant

END = 1500


class TwoPC:
    """Two-phase commit: coordinator ``n1``, participants ``n2``, ``n3``; the lanes are ``tx@<node>``."""

    def __init__(self, lab: Lab, coord: str = "n1", parts: tuple[str, ...] = ("n2", "n3"),
                 vote_timeout: int = 150) -> None:
        self.lab, self.coord, self.parts, self.vote_timeout = lab, coord, parts, vote_timeout
        self.status: dict[str, str] = {p: "idle" for p in parts}
        self.since: dict[str, int] = {p: 0 for p in parts}
        self.doubt_ms: dict[str, int] = {p: 0 for p in parts}
        self.log: dict[str, str] = {}  # the coordinator's durable decisions
        self.after_votes: Callable[[str], bool] = lambda tx: True  # False: stop here (a crash)
        self.committed = 0
        self._doubt: dict[str, Any] = {}
        for p in (coord, *parts):
            self._show(p, "idle")

    def _show(self, node: str, text: str) -> None:
        self.lab.trace.state(f"tx@{node}", self.lab.loop.now, text)

    def begin(self, tx: str, done: Reply) -> None:
        net = self.lab.net
        votes: list[bool] = []
        decided = [False]

        def decide(outcome: str) -> None:
            if decided[0]:
                return
            decided[0] = True
            if outcome == "commit":
                self.log[tx] = "commit"
                if not self.after_votes(tx):
                    return
            self._show(self.coord, f"{tx}: {outcome}")
            self.send_decision(tx, outcome)
            done("ok" if outcome == "commit" else "fail", None)

        def vote(yes: bool) -> None:
            votes.append(yes)
            if not yes:
                decide("abort")
            elif len(votes) == len(self.parts):
                decide("commit")

        self._show(self.coord, f"{tx}: preparing")
        for p in self.parts:
            net.send(self.coord, p, partial(self._prepare, p, tx, vote))
        self.lab.loop.after(self.vote_timeout, lambda: decide("abort"))

    def _prepare(self, p: str, tx: str, vote: Callable[[bool], None]) -> None:
        ok = self.status[p] not in ("prepared",)
        if ok:
            self.status[p], self.since[p] = "prepared", self.lab.loop.now
            self._doubt[p] = self.lab.trace.band("doubt", f"{p} in doubt, holding the lock", self.lab.loop.now,
                                                 (f"tx@{p}",))
            self._show(p, f"{tx}: prepared, in doubt, holding the lock")
        self.lab.net.send(p, self.coord, lambda: vote(ok))

    def send_decision(self, tx: str, outcome: str, frm: str | None = None) -> None:
        for p in self.parts:
            self.lab.net.send(frm or self.coord, p, partial(self.learn, p, tx, outcome))

    def learn(self, p: str, tx: str, outcome: str) -> None:
        if self.status[p] != "prepared":
            return
        self.doubt_ms[p] += self.lab.loop.now - self.since[p]
        band = self._doubt.pop(p, None)
        if band is not None:
            band.end = self.lab.loop.now
        self.status[p] = "committed" if outcome == "commit" else "aborted"
        self.committed += outcome == "commit" and p == self.parts[0]
        self._show(p, f"{tx}: {self.status[p]}, lock released")

    def in_doubt(self) -> list[str]:
        return [p for p in self.parts if self.status[p] == "prepared"]

    def close(self) -> None:
        for p in self.in_doubt():
            self.doubt_ms[p] += self.lab.loop.now - self.since[p]


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("2pc-coordinator-crash", variant, seed, base=2, jitter=3)
    tpc = TwoPC(lab)
    recover_after = int(opts["recover_after"])
    app = lab.client("app", 400)
    cluster = RaftCluster(lab.loop, lab.net, lab.trace, seed) if variant == "replicated-decision" else None
    crashed_at = [0]

    def crash() -> None:
        crashed_at[0] = lab.loop.now
        if cluster is not None:
            cluster[1].crash()
        else:
            lab.net.crash("n1")
        lab.trace.note(lab.loop.now, "the coordinator crashes after the votes, before sending the decision")
        if variant == "recover":
            lab.loop.after(recover_after, recover)

    def recover() -> None:
        lab.net.recover("n1")
        lab.trace.note(lab.loop.now, f"the coordinator recovers and finds '{tpc.log['tx1']}' in its log")
        tpc.send_decision("tx1", tpc.log["tx1"])

    def after_votes(tx: str) -> bool:
        if cluster is None:
            crash()
            return False
        # replicated: commit the decision through Raft first, crash once it is committed
        cluster[1].propose({"op": "decide", "key": tx, "value": "commit"}, lambda s, o: crash())
        return False
    tpc.after_votes = after_votes

    def participant_asks(p: str, member: int) -> None:
        """A participant in doubt proposes 'abort'; the log answers with the first decision, which wins."""
        if cluster is None or tpc.status[p] != "prepared":
            return
        if lab.loop.now - tpc.since[p] >= 100:
            cluster[member].propose({"op": "decide", "key": "tx1", "value": "abort"},
                                    lambda s, o: tpc.learn(p, "tx1", o) if o in ("commit", "abort") else None)
        lab.loop.after(60, lambda: participant_asks(p, member))

    if cluster is not None:
        lab.at(1, lambda: cluster.campaign(1))
        lab.at(150, lambda: participant_asks("n2", 2))
        lab.at(150, lambda: participant_asks("n3", 3))
    lab.at(100, lambda: app.call("txn", "tx1", None, lambda d: tpc.begin("tx1", d)))
    lab.loop.run(END)
    tpc.close()
    doubt = tpc.in_doubt()
    if doubt:
        lab.trace.note(END, f"still in doubt: {', '.join(doubt)}")
    outcomes = {tpc.status[p] for p in tpc.parts}
    verdict = "blocked" if doubt else ("completed" if len(outcomes) == 1 else "inconsistent")
    counts: dict[str, Any] = {f"in doubt ms {p}": tpc.doubt_ms[p] for p in tpc.parts}
    counts["outcome"] = "/".join(sorted(outcomes))
    counts["locks held at end"] = len(doubt)
    lanes = ["tx@n1", "tx@n2", "tx@n3"] + (cluster.names if cluster is not None else [])
    if variant == "blocked":
        story = (f"Coordinator n1 asked n2 and n3 to prepare; both voted yes, locked the row and entered doubt. n1 "
                 f"crashed at t={crashed_at[0]} before sending its decision, and neither participant may decide "
                 f"alone: both are still in doubt, holding their locks, {END - crashed_at[0]} ms later (blocked).")
    elif variant == "recover":
        story = (f"Both participants voted yes and n1 crashed at t={crashed_at[0]} with 'commit' in its log. They "
                 f"waited in doubt, holding their locks, for {max(tpc.doubt_ms.values())} ms until n1 recovered "
                 f"after {recover_after} ms and resent the decision. 2PC is safe but blocks for as long as the "
                 f"coordinator is down.")
    else:
        story = (f"The decision 'commit' was committed through Conclave's Raft log (n1, n2, n3) before n1 crashed at "
                 f"t={crashed_at[0]}. n2 and n3 elected a new leader and, proposing 'abort' as the first decision "
                 f"for an undecided transaction, read back the one already committed: both completed the commit "
                 f"within {max(tpc.doubt_ms.values())} ms, no coordinator needed.")
    why = ("The verdict is 'blocked' while a participant is still prepared (in doubt, holding its lock) at the end "
           f"of the run (t={END}), 'completed' when every participant reached the same outcome, 'inconsistent' "
           f"if they differ. Participants: " + ", ".join(f"{p} {tpc.status[p]}" for p in tpc.parts) + ".")
    return lab.finish(story, "", lanes, model=None, verdict=verdict, counts=counts, explanation=why)


SCENARIO = Scenario(
    "2pc-coordinator-crash",
    "the 2PC coordinator crashes after the yes votes: participants block in doubt until it returns",
    "Two-phase commit blocks on its coordinator; a decision committed by consensus does not",
    (Variant("blocked", "blocked", "the coordinator does not come back"),
     Variant("recover", "completed", "the coordinator recovers after --recover-after ms (default 500)"),
     Variant("replicated-decision", "completed", "the decision is an entry in a Raft log; any member completes")),
    run,
    {"recover_after": 500},
)
