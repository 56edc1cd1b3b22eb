"""multi-leader: two sites accept writes to one key concurrently; last-write-wins drops one."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import NOT_LINEARIZABLE, Client, Lab, Outcome, Reply, SkewedClock
from conclave.lab.replication import Replica, push
from conclave.lab.scenario import Scenario, Variant


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("multi-leader", variant, seed, base=1, jitter=1)
    net, rng = lab.net, lab.rng
    east, west = Replica("east", net, lab.trace), Replica("west", net, lab.trace)
    wan = 80 + rng.randint(0, 40)
    net.set_link("east", "west", wan, 10)
    lab.trace.band("delay", f"east <-> west: {wan} ms", 0)
    clocks = {"east": SkewedClock(lab.loop, rng.randint(0, 30)), "west": SkewedClock(lab.loop, rng.randint(0, 30))}
    alice, bob = lab.client("alice"), lab.client("bob")

    def write(c: Client, site: Replica, other: Replica, value: str) -> None:
        def start(done: Reply) -> None:
            def at_site() -> None:  # accept locally, acknowledge, replicate to the other site
                stamp = (clocks[site.name].now(), site.name)
                site.store("x", stamp, value)
                push(net, site, [other], "x", stamp, value)
                net.send(site.name, c.name, lambda: done("ok", None))
            net.send(c.name, site.name, at_site)
        c.call("write", value, None, start)

    def read(c: Client, site: Replica) -> None:
        def start(done: Reply) -> None:
            def at_site() -> None:
                value = site.value("x")
                net.send(site.name, c.name, lambda: done("ok", value))
            net.send(c.name, site.name, at_site)
        c.call("read", None, None, start)

    t_b = 5 + rng.randint(0, 10)
    lab.at(10, lambda: write(alice, east, west, "a"))
    lab.at(10 + t_b, lambda: write(bob, west, east, "b"))
    lab.at(40, lambda: read(alice, east))
    lab.at(42, lambda: read(bob, west))
    lab.at(400, lambda: read(alice, east))
    lab.at(402, lambda: read(bob, west))
    lab.loop.run(500)
    winner = east.value("x")
    loser = "b" if winner == "a" else "a"
    story = (f"Alice wrote a at the east site and Bob wrote b at the west site {t_b} ms later; each site acknowledged "
             f"at once and replicated over a {wan} ms link. Right after, each read back its own value, so both "
             f"writes had visibly taken effect; once replication crossed, last-write-wins kept {winner} everywhere "
             f"and silently dropped the acknowledged {loser}: not linearizable.")
    converged = east.value("x") == west.value("x")
    return lab.finish(story, "", ["east", "west"], counts={"lost writes": int(converged), "final east": winner,
                                                           "final west": west.value("x")})


SCENARIO = Scenario(
    "multi-leader",
    "two sites accept concurrent writes to one key; last-write-wins drops one",
    "Multi-leader replication with LWW conflict resolution is not linearizable and loses writes",
    (Variant("lww", NOT_LINEARIZABLE, "each site accepts writes, conflicts resolved by the latest timestamp"),),
    run,
)
