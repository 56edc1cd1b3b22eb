"""tob-and-registers: total order broadcast from a linearizable increment-and-get register (a gap waits),
and a linearizable register from total order broadcast: the two are equivalent (to consensus)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from conclave.lab.core import LINEARIZABLE, NOT_LINEARIZABLE, Lab, Outcome
from conclave.lab.scenario import Scenario, Variant

KEPT = "total order kept"
REPLICAS = ("r1", "r2", "r3")


class Tob:
    """Total order broadcast: number a message with the counter, send it everywhere, deliver in number order."""

    def __init__(self, lab: Lab, on_deliver: Callable[[str, int, Any], None]) -> None:
        self.lab = lab
        self.counter = 0
        self.next = {r: 1 for r in REPLICAS}
        self.held: dict[str, dict[int, Any]] = {r: {} for r in REPLICAS}
        self.delivered: dict[str, list[Any]] = {r: [] for r in REPLICAS}
        self.gap_waits = 0
        self.on_deliver = on_deliver
        lab.trace.state("counter", 0, "0")
        for r in REPLICAS:
            lab.trace.state(r, 0, "")

    def broadcast(self, sender: str, msg: Any) -> None:
        net = self.lab.net

        def at_counter() -> None:  # increment-and-get: one linearizable register
            self.counter += 1
            n = self.counter
            self.lab.trace.state("counter", self.lab.loop.now, str(n))
            net.send("counter", sender, lambda: self._send_all(sender, n, msg))
        net.send(sender, "counter", at_counter)

    def _send_all(self, sender: str, n: int, msg: Any) -> None:
        for r in REPLICAS:
            self.lab.net.send(sender, r, partial(self._arrive, r, n, msg), delay=0 if r == sender else None)

    def _arrive(self, r: str, n: int, msg: Any) -> None:
        self.held[r][n] = msg
        if n != self.next[r]:
            self.gap_waits += 1  # a gap: an earlier number has not arrived yet, so this one waits
        while self.next[r] in self.held[r]:
            m = self.held[r].pop(self.next[r])
            self.delivered[r].append(m)
            self.on_deliver(r, self.next[r], m)
            self.next[r] += 1


def run(seed: int, variant: str, opts: dict[str, Any]) -> Outcome:
    lab = Lab("tob-and-registers", variant, seed, base=2, jitter=30)
    net, rng = lab.net, lab.rng
    for r in REPLICAS:
        net.set_link(r, "counter", 1, 2)
    if variant == "tob-from-counter":
        tob = Tob(lab, lambda r, n, m: lab.trace.state(r, lab.loop.now, f"delivered #{n}"))
        for k in range(12):
            sender = REPLICAS[k % 3]
            lab.at(10 + rng.randint(0, 200), partial(tob.broadcast, sender, f"m{k}"))
        lab.loop.run(600)
        same = all(tob.delivered[r] == tob.delivered["r1"] for r in REPLICAS) and len(tob.delivered["r1"]) == 12
        story = (f"Three nodes broadcast 12 messages; each took the next number from a linearizable increment-and-get "
                 f"register and sent the message to all, over links that reorder (up to 30 ms of jitter). Each node "
                 f"delivered in number order, holding a message while an earlier number was missing "
                 f"({tob.gap_waits} gap waits): all delivered the same sequence. If a sender died between taking a "
                 f"number and sending, the gap would wait forever: that is why the register must itself be consensus.")
        why = ("The verdict is 'total order kept' when every node delivered all 12 messages in the same order: "
               + "; ".join(f"{r}: {' '.join(tob.delivered[r])}" for r in REPLICAS))
        return lab.finish(story, "", ["counter", *REPLICAS], model=None, verdict=KEPT if same else "order differs",
                          explanation=why,
                          counts={"messages": 12, "gap waits": tob.gap_waits})
    registers = {r: None for r in REPLICAS}
    waiting: dict[tuple[str, int], Callable[[str, Any], None]] = {}
    ids = [0]

    def deliver(r: str, n: int, m: Any) -> None:
        kind, value, origin, op_id = m
        if kind == "write":
            registers[r] = value
            lab.trace.state(r, lab.loop.now, f"x={value}")
        done = waiting.pop((r, op_id), None) if origin == r else None
        if done is not None:
            done("ok", None if kind == "write" else registers[r])
    tob = Tob(lab, deliver)
    for r in REPLICAS:
        net.set_link(r, "r3", 120, 10, both=False)
    local = variant == "local-read"

    def op(client: str, replica: str, f: str, value: Any) -> None:
        def start(done: Any) -> None:
            ids[0] += 1
            if f == "read" and local:
                def read_here() -> None:
                    value = registers[replica]
                    net.send(replica, client, lambda: done("ok", value))
                net.send(client, replica, read_here)
                return
            key = (replica, ids[0])
            waiting[key] = lambda s, o: net.send(replica, client, lambda: done(s, o))
            net.send(client, replica, lambda: tob.broadcast(replica, (f, value, replica, key[1])))
        lab.client(client, 500).call(f, value, None, start)

    clients = {"c1": "r1", "c2": "r2", "c3": "r3"}
    for c, r in clients.items():
        net.set_link(c, r, 1, 1)
    lab.at(10, lambda: op("c1", "r1", "write", 1))
    lab.at(80, lambda: op("c3", "r3", "read", None))
    t = 120
    for k in range(6):
        c = f"c{1 + rng.randint(0, 2)}"
        f = "write" if rng.random() < 0.5 else "read"
        lab.at(t, partial(op, c, clients[c], f, 10 + k if f == "write" else None))
        t += 60 + rng.randint(0, 40)
    lab.loop.run(t + 600)
    if local:
        story = ("Each node applied the writes it delivered from the counter-based total order broadcast, but "
                 "answered reads from its own copy at once. Client 1's write of 1 was acknowledged by r1 and then "
                 "client 3 read r3, which hears everything 120 ms late, and saw nothing. A register built from total "
                 "order broadcast is linearizable only if reads go through the broadcast too: not linearizable.")
    else:
        story = (f"A register on top of the counter-based total order broadcast: every write and every read is a "
                 f"broadcast message, and a node answers its client when it delivers that client's message. All "
                 f"nodes apply the same sequence, so every answer reflects a prefix of one total order, even at r3 "
                 f"which hears everything 120 ms late ({tob.gap_waits} gap waits). Linearizable: with the previous "
                 f"variant, this shows the register and the broadcast are equivalent.")
    return lab.finish(story, "", ["counter", *REPLICAS], counts={"gap waits": tob.gap_waits})


SCENARIO = Scenario(
    "tob-and-registers",
    "total order broadcast from an increment-and-get register, and a register from total order broadcast",
    "Total order broadcast and a linearizable register (with increment-and-get) are equivalent to consensus",
    (Variant("tob-from-counter", KEPT, "number messages with the register, deliver in order, gaps wait"),
     Variant("register-from-tob", LINEARIZABLE, "reads and writes are broadcast; answer on delivery"),
     Variant("local-read", NOT_LINEARIZABLE, "writes broadcast, reads answered from the local copy")),
    run,
)
