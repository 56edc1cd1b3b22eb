"""sequence-numbers: per-node counters and skewed wall clocks order a reply before its question; Lamport
timestamps respect causality; but a uniqueness claim cannot be decided at request time with Lamport
timestamps alone, while total order broadcast (the Raft log) decides it at once."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import LINEARIZABLE, NOT_LINEARIZABLE, Lab, LamportClock, Outcome, SkewedClock
from conclave.lab.raftlab import RaftCluster, client_cas
from conclave.lab.scenario import Scenario, Variant

BROKEN, KEPT = "causality broken", "causal order kept"


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("sequence-numbers", variant, seed, base=5, jitter=10)
    if variant in ("lamport-unique", "tob"):
        return _unique(lab)
    rng, net, trace = lab.rng, lab.net, lab.trace
    busy = 5 + rng.randint(0, 10)  # events node A numbered before the question
    skew = -(90 + rng.randint(0, 40))  # node B's wall clock is behind
    counters = {"A": 1, "B": 2}  # odd numbers at A, even at B
    lamport = {"A": LamportClock(), "B": LamportClock()}
    clocks = {"A": SkewedClock(lab.loop, 0), "B": SkewedClock(lab.loop, skew)}
    stamps: dict[str, Any] = {}

    def stamp(node: str, seen: Any = None) -> Any:
        if variant == "counters":
            s = counters[node]
            counters[node] += 2
            return s
        if variant == "wall-clock":
            return clocks[node].now()
        clock = lamport[node]
        return clock.seen(seen) if seen is not None else clock.tick()

    for _ in range(busy):
        stamp("A")
    for node in ("A", "B"):
        trace.state(node, 0, "")
    alice, bob = lab.client("alice"), lab.client("bob")

    def ask(done: Any) -> None:
        def at_a() -> None:
            s = stamps["question"] = stamp("A")
            trace.state("A", lab.loop.now, f"question @{s}")
            net.send("A", "B", lambda: seen_at_b(s))  # replication to B
            net.send("A", "alice", lambda: done("ok", None))
        net.send("alice", "A", at_a)

    def seen_at_b(s: Any) -> None:
        stamps["seen"] = stamp("B", s) if variant == "lamport" else None
        trace.state("B", lab.loop.now, f"has question @{s}")

        def read(done: Any) -> None:
            net.send("bob", "B", lambda: net.send("B", "bob", lambda: done("ok", "question")))
        bob.call("read", None, None, read, then=lambda op: reply())

    def reply() -> None:
        def at_b(done: Any) -> None:
            s = stamps["reply"] = stamp("B")
            trace.state("B", lab.loop.now, f"reply @{s}")
            net.send("B", "bob", lambda: done("ok", None))
        bob.call("write", "reply", None, lambda d: net.send("bob", "B", lambda: at_b(d)))

    lab.at(10, lambda: alice.call("write", "question", None, ask))
    lab.loop.run(400)
    q, r = stamps["question"], stamps["reply"]
    verdict = BROKEN if r <= q else KEPT
    what = {"counters": f"node A had numbered {busy} other events, so its odd counter gave the question {q}, while "
                        f"idle node B's even counter gave the reply {r}",
            "wall-clock": f"node B's clock is {-skew} ms behind, so the question got timestamp {q} and the reply, "
                          f"written after it was read, got {r}",
            "lamport": f"node B had seen the question's timestamp {q} and moved its Lamport clock past it, so the "
                       f"reply got {r}"}[variant]
    story = (f"Alice posted a question at node A; Bob read it at node B and posted a reply, which causally "
             f"depends on it. {what[0].upper() + what[1:]}. Ordered by these numbers the reply comes "
             f"{'before' if r <= q else 'after'} its question: {verdict}.")
    why = (f"The reply causally follows the question (Bob read the question before replying), so any order "
           f"consistent with causality must put the question first. Question stamp {q}, reply stamp {r}: "
           f"{'the reply sorts first, causality broken' if r <= q else 'the question sorts first, causal order kept'}.")
    return lab.finish(story, "", ["A", "B"], model=None, verdict=verdict, explanation=why,
                      counts={"question stamp": q, "reply stamp": r})


def _unique(lab: Lab) -> Outcome:
    """Two users claim the name 'alice' at the same moment at two different nodes."""
    variant, net = lab.variant, lab.net
    u1, u2 = lab.client("user-1", 400), lab.client("user-2", 400)
    t2 = 10 + lab.rng.randint(0, 3)
    if variant == "tob":
        cluster = RaftCluster(lab.loop, net, lab.trace, lab.seed)
        lab.at(1, lambda: cluster.campaign(1))
        lab.at(200, lambda: u1.call("cas", [None, "user-1"], "alice",
                                    lambda d: client_cas(net, "user-1", cluster[2], "alice", None, "user-1", d)))
        lab.at(200 + t2 - 10, lambda: u2.call(
            "cas", [None, "user-2"], "alice",
            lambda d: client_cas(net, "user-2", cluster[3], "alice", None, "user-2", d)))
        lab.loop.run(700)
        winner = cluster[1].store.get("alice")
        story = (f"User 1 asked node n2 and user 2 asked node n3 for the name 'alice' {t2 - 10} ms apart. Both "
                 f"requests went through total order broadcast, Conclave's Raft log, and the first one delivered, "
                 f"{winner}'s, took the name; the other was told no at once. Uniqueness is decided at request time: "
                 f"linearizable.")
        return lab.finish(story, "", cluster.names, model="cas-register", counts={"owner": winner})
    nodes = {"A": LamportClock(), "B": LamportClock()}
    claims: dict[str, list[tuple[tuple[int, str], str]]] = {"A": [], "B": []}
    for n in nodes:
        lab.trace.state(n, 0, "alice free")

    def claim(node: str, user: str, done: Any) -> None:
        def at_node() -> None:
            stamp = (nodes[node].tick(), node)
            claims[node].append((stamp, user))
            lab.trace.state(node, lab.loop.now, f"alice -> {user} @{stamp[0]}")
            other = "B" if node == "A" else "A"
            def at_other() -> None:  # the claim reaches the other node: only now is the conflict visible
                nodes[other].seen(stamp[0])
                claims[other].append((stamp, user))
                shown = ", ".join(f"{u}@{s[0]}{s[1]}" for s, u in sorted(claims[other]))
                lab.trace.state(other, lab.loop.now, "conflict: " + shown)
            net.send(node, other, at_other)
            net.send(node, user, lambda: done("ok", None))  # nothing known contradicts it: accept
        net.send(user, node, at_node)

    lab.at(10, lambda: u1.call("cas", [None, "user-1"], "alice", lambda d: claim("A", "user-1", d)))
    lab.at(t2, lambda: u2.call("cas", [None, "user-2"], "alice", lambda d: claim("B", "user-2", d)))
    lab.loop.run(300)
    winner = min(claims["A"])[1]
    story = (f"User 1 claimed 'alice' at node A and user 2 at node B, {t2 - 10} ms apart; each node stamped the claim "
             f"with its Lamport clock and, knowing of no earlier claim, said yes. Only when the claims crossed could "
             f"the nodes see that {winner}'s stamp is lower, but both users had already been told the name was "
             f"theirs: Lamport timestamps order events after the fact, they cannot decide at request time. Not "
             f"linearizable.")
    return lab.finish(story, "", ["A", "B"], model="cas-register", counts={"owner by Lamport order": winner,
                                                                           "users told yes": 2})


SCENARIO = Scenario(
    "sequence-numbers",
    "counters and wall clocks order a reply before its question; Lamport does not; uniqueness needs the log",
    "Causality vs. ordering: Lamport timestamps are consistent with causality but decide nothing online",
    (Variant("counters", BROKEN, "per-node counters, odd at A, even at B"),
     Variant("wall-clock", BROKEN, "wall-clock timestamps, B's clock behind"),
     Variant("lamport", KEPT, "Lamport timestamps"),
     Variant("lamport-unique", NOT_LINEARIZABLE, "two users claim one name; each node decides with Lamport order"),
     Variant("tob", LINEARIZABLE, "the claims go through the Raft log: the first delivered wins at once")),
    run,
)
