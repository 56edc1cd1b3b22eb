"""Leader election among worker processes: exactly one does the work; another takes over when it dies.

Against `make run`'s cluster:

    python examples/leader_election.py worker-1        # in three terminals, with different names
    python examples/leader_election.py --demo          # starts 3 workers, kills the leader, shows failover

Each worker campaigns in the election "report-job". The winner does the job (prints a line each
second, tagged with its leadership revision, which is also a fencing token for anything it
writes) until it is stopped; its session lease then expires (or is revoked on Ctrl-C) and the
next candidate in line becomes leader.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from conclave import Client

ENDPOINTS = "127.0.0.1:2381,127.0.0.1:22381,127.0.0.1:32381"


def worker(name: str, endpoints: str, rounds: int) -> int:
    with Client(endpoints.split(",")) as client:
        election = client.election("report-job", ttl=2)
        print(f"{name}: campaigning", flush=True)
        revision = election.campaign(name)
        print(f"{name}: I am the leader (revision {revision})", flush=True)
        try:
            for i in range(rounds):
                print(f"{name}: doing the job, round {i}", flush=True)
                time.sleep(1)
        finally:
            election.resign()
            print(f"{name}: resigned", flush=True)
    return 0


def demo(endpoints: str) -> int:
    procs = {n: subprocess.Popen([sys.executable, __file__, n, "--endpoints", endpoints, "--rounds", "8"],
                                 stdout=subprocess.PIPE, text=True) for n in ("worker-1", "worker-2", "worker-3")}
    leaders = []
    deadline = time.monotonic() + 30
    with Client(endpoints.split(",")) as client:
        election = client.election("report-job")
        while len(leaders) < 2 and time.monotonic() < deadline:
            current = election.leader()
            name = current.value.decode() if current else None
            if name and (not leaders or leaders[-1] != name):
                leaders.append(name)
                print(f"demo: leader is {name}", flush=True)
                if len(leaders) == 1:
                    time.sleep(1.5)
                    print(f"demo: killing {name} (SIGKILL: no resign, the lease must expire)", flush=True)
                    procs[name].send_signal(signal.SIGKILL)
            time.sleep(0.1)
    for p in procs.values():
        p.kill()
        p.wait()
    ok = len(leaders) == 2 and leaders[0] != leaders[1]
    print("demo: failover " + ("worked" if ok else "did NOT happen"), flush=True)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", default="worker")
    p.add_argument("--endpoints", default=ENDPOINTS)
    p.add_argument("--rounds", type=int, default=1_000_000, help="job rounds before resigning")
    p.add_argument("--demo", action="store_true", help="run three workers and kill the leader")
    args = p.parse_args()
    try:
        return demo(args.endpoints) if args.demo else worker(args.name, args.endpoints, args.rounds)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
