"""multi-leader: two sites accept writes to one key concurrently; last-write-wins drops one."""

from __future__ import annotations

from typing import Any

from conclave.lab.core import NOT_LINEARIZABLE, Lab, Outcome, SkewedClock
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

    def write(client_name: str, site: Replica, other: Replica, value: str) -> None:
        def at_site() -> None:
            stamp = (clocks[site.name].now(), site.name)
            site.store("x", stamp, value)
            push(net, site, [other], "x", stamp, value)
            net.send(site.name, client_name, lambda: done("ok", None))
        c = alice if client_name == "alice" else bob
        done_ref: list[Any] = []
        op = c.call("write", value, None, lambda d: (done_ref.append(d), net.send(client_name, site.name, at_site)))
        del op

        def done(status: str, out: Any) -> None:
            done_ref[0](status, out)

    def read(client_name: str, site: Replica) -> None:
        c = alice if client_name == "alice" else bob
        c.call("read", None, None, lambda d: net.send(client_name, site.name,
                                                         lambda: net.send(site.name, client_name,
                                                                          lambda v=site.value("x"): d("ok", v))))

    t_b = 5 + rng.randint(0, 10)
    lab.at(10, lambda: write("alice", east, west, "a"))
    lab.at(10 + t_b, lambda: write("bob", west, east, "b"))
    lab.at(40, lambda: read("alice", east))
    lab.at(42, lambda: read("bob", west))
    lab.at(400, lambda: read("alice", east))
    lab.at(402, lambda: read("bob", west))
    lab.loop.run(500)
    winner = east.value("x")
    loser = "b" if winner == "a" else "a"
    story = (f"Alice wrote a at the east site and Bob wrote b at the west site {t_b} ms later; each site acknowledged "
             f"at once and replicated over a {wan} ms link. Right after, each read back its own value, so both "
             f"writes had visibly taken effect; once replication crossed, last-write-wins kept {winner} everywhere "
             f"and silently dropped the acknowledged {loser}: not linearizable.")
    return lab.finish(story, "", ["east", "west"], counts={"lost writes": 1 if east.value("x") == west.value("x") else 0,
                                                           "final east": winner, "final west": west.value("x")})


SCENARIO = Scenario(
    "multi-leader",
    "two sites accept concurrent writes to one key; last-write-wins drops one",
    "Multi-leader replication with LWW conflict resolution is not linearizable and loses writes",
    (Variant("lww", NOT_LINEARIZABLE, "each site accepts writes, conflicts resolved by the latest timestamp"),),
    run,
)
