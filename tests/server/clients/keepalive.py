"""Keep one lease alive against a list of members, as a real client would (subprocess for tests).

    keepalive.py LEASE_ID ENDPOINTS INTERVAL_S MAX_S

ENDPOINTS is comma separated; the first is used until a keep-alive fails (member dead, no leader),
then the next, round robin. Each keep-alive is one short LeaseKeepAlive stream with a deadline, so a
hung member costs at most one deadline. Prints "ready TTL" after the first answer, then one JSON
object when the lease is reported lost (TTL 0: "lost": true), on SIGTERM, or after MAX_S seconds.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import grpc

from conclave.api import pb
from conclave.api.stubs import EtcdStub

CALL_DEADLINE_S = 1.5


def keep_alive_once(stub: Any, lease_id: int) -> int:
    for resp in stub.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]), timeout=CALL_DEADLINE_S):
        return int(resp.TTL)
    raise RuntimeError("keep-alive stream ended without an answer")


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    lease_id, endpoints, interval_s, max_s = int(argv[0]), argv[1].split(","), float(argv[2]), float(argv[3])
    channels = [grpc.insecure_channel(ep) for ep in endpoints]
    stubs = [EtcdStub(ch, "etcdserverpb.Lease") for ch in channels]
    index, answers, failures, lost, ready = 0, 0, 0, False, False
    switches: list[str] = []
    max_gap_s, last_ok = 0.0, time.monotonic()
    stop_at = time.monotonic() + max_s
    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    while time.monotonic() < stop_at and not terminated:
        try:
            ttl = keep_alive_once(stubs[index], lease_id)
        except (grpc.RpcError, RuntimeError):
            failures += 1
            index = (index + 1) % len(stubs)
            switches.append(endpoints[index])
            time.sleep(0.1)
            continue
        now = time.monotonic()
        max_gap_s, last_ok = max(max_gap_s, now - last_ok), now
        if ttl <= 0:
            lost = True
            break
        answers += 1
        if not ready:
            print(f"ready {ttl}", flush=True)
            ready = True
        time.sleep(interval_s)
    for ch in channels:
        ch.close()
    print(json.dumps({"lost": lost, "answers": answers, "failures": failures, "switches": switches,
                      "max_gap_s": round(max_gap_s, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
