"""cap-partition: two sites, the link cut. cp (Raft): the minority refuses, the history is linearizable;
ap (local replicas): both sides serve, the history is not, and the sites diverge until they heal."""

from __future__ import annotations

from functools import partial
from typing import Any

from conclave.lab.core import LINEARIZABLE, NOT_LINEARIZABLE, Lab, Outcome, Reply, SkewedClock, availability
from conclave.lab.raftlab import RaftCluster, client_read, client_write
from conclave.lab.replication import Replica, push
from conclave.lab.scenario import Scenario, Variant

CUT, HEAL, END = 250, 600, 850
SITE_A, SITE_B = ("a1", "a2"), ("b1",)


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("cap-partition", variant, seed, base=2, jitter=3)
    clients = {name: lab.client(name, 150) for name in SITE_A + SITE_B}
    serve = _cp(lab) if variant == "cp" else _ap(lab)
    counter = [0]

    def loop(name: str) -> None:
        c = clients[name]
        if lab.loop.now > END - 200:
            return
        counter[0] += 1
        if counter[0] % 2:
            v = f"{name}.{counter[0]}"
            c.call("write", v, None, lambda d: serve(name, "write", v, d))
        else:
            c.call("read", None, None, lambda d: serve(name, "read", None, d))
        lab.loop.after(30 + lab.rng.randint(0, 20), lambda: loop(name))

    for k, name in enumerate(clients):
        lab.at(150 + 7 * k, partial(loop, name))
    lab.at(CUT, lambda: lab.net.partition(("n1", "n2", "siteA", *SITE_A), ("n3", "siteB", *SITE_B),
                                          label="site A | site B"))
    lab.at(HEAL, lab.net.heal)
    lab.loop.run(END)
    ops = lab.rec.ops
    avail_a = availability(ops, set(SITE_A), CUT, HEAL)
    avail_b = availability(ops, set(SITE_B), CUT, HEAL)
    counts: dict[str, Any] = {"availability site A (cut)": avail_a, "availability site B (cut)": avail_b}
    if variant == "cp":
        story = (f"Three Raft members, n1 and n2 at site A and n3 at site B, served clients on both sides; at "
                 f"t={CUT} the link between the sites was cut until t={HEAL}. The majority side kept electing, "
                 f"committing and answering ReadIndex reads (available {avail_a}), while n3 could reach no "
                 f"quorum and answered nothing it could not prove (available {avail_b}). Consistency was chosen "
                 f"over availability: the history is linearizable.")
        lanes = ["n1", "n2", "n3"]
    else:
        story = (f"Each site kept a local replica that served reads and writes at once and replicated to the other "
                 f"site; from t={CUT} to t={HEAL} the link was cut. Both sides stayed available (A {avail_a}, "
                 f"B {avail_b}) and each read its own writes, so the sites diverged ({_divergence(lab)}) until "
                 f"healing merged them by last-write-wins. Availability was chosen over consistency: the history "
                 f"is not linearizable.")
        lanes = ["siteA", "siteB"]
        counts["diverged at heal"] = _divergence(lab)
        counts["lost writes"] = _ap_lost(lab)
    return lab.finish(story, "", lanes, counts=counts)


def _cp(lab: Lab) -> Any:
    cluster = RaftCluster(lab.loop, lab.net, lab.trace, lab.seed)
    lab.at(1, lambda: cluster.campaign(1))
    home = {"a1": cluster[1], "a2": cluster[2], "b1": cluster[3]}

    def serve(name: str, f: str, value: Any, done: Reply) -> None:
        if f == "write":
            client_write(lab.net, name, home[name], "x", value, done)
        else:
            client_read(lab.net, name, home[name], "x", "read-index", done)
    return serve


_AP: dict[int, tuple[Replica, Replica, list[str]]] = {}


def _ap(lab: Lab) -> Any:
    a, b = Replica("siteA", lab.net, lab.trace), Replica("siteB", lab.net, lab.trace)
    clock = {"siteA": SkewedClock(lab.loop, 0), "siteB": SkewedClock(lab.loop, lab.rng.randint(-20, 20))}
    home = {"a1": a, "a2": a, "b1": b}
    divergence: list[str] = []
    _AP[id(lab)] = (a, b, divergence)

    def serve(name: str, f: str, value: Any, done: Reply) -> None:
        site = home[name]
        other = b if site is a else a

        def at_site() -> None:
            if f == "write":
                stamp = (clock[site.name].now(), site.name)
                site.store("x", stamp, value)
                push(lab.net, site, [other], "x", stamp, value)
                lab.net.send(site.name, name, lambda: done("ok", None))
            else:
                got = site.value("x")
                lab.net.send(site.name, name, lambda: done("ok", got))
        lab.net.send(name, site.name, at_site)

    def heal() -> None:
        divergence.append(f"site A x={a.value('x')}, site B x={b.value('x')}")
        lab.trace.note(lab.loop.now, "healed; before merging: " + divergence[0])
        for src, dst in ((a, b), (b, a)):  # anti-entropy: each side sends what it has
            stamp, value = src.get("x")
            push(lab.net, src, [dst], "x", stamp, value)
    lab.at(HEAL + 1, heal)
    return serve


def _divergence(lab: Lab) -> str:
    return _AP[id(lab)][2][0] if _AP.get(id(lab)) and _AP[id(lab)][2] else ""


def _ap_lost(lab: Lab) -> int:
    """Acknowledged writes made during the cut on the site whose value lost the merge."""
    a, _b, _ = _AP.pop(id(lab))
    loser = SITE_A if str(a.value("x")).startswith("b") else SITE_B
    return sum(1 for o in lab.rec.ops if o.f == "write" and o.status == "ok" and CUT <= o.call < HEAL
               and o.process in loser)


SCENARIO = Scenario(
    "cap-partition",
    "two sites, the link cut: Raft refuses on the minority (cp) or both serve and diverge (ap)",
    "CAP: under a partition a linearizable system must refuse on one side",
    (Variant("cp", LINEARIZABLE, "the real Raft core: majority continues, minority refuses"),
     Variant("ap", NOT_LINEARIZABLE, "local replicas on both sides, merged by last-write-wins after healing")),
    run,
)
