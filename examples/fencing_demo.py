"""Why a lease-based lock is not enough, and how fencing tokens fix it.

Run against `make run`'s cluster (or any Conclave/etcd endpoint):

    .venv/bin/python examples/fencing_demo.py [--endpoint 127.0.0.1:2379]

Two workers, A and B, share the lock "demo/fencing-lock" through the v3lock service, whose
recipe is etcd's own (the one `etcdctl lock` and the Python client's `client.lock()` run: the
holder's key `demo/fencing-lock/<lease id in hex>` is attached to its 2-second lease, so an
`etcdctl lock demo/fencing-lock` in another terminal waits for the same lock). A takes the
lock, then *pauses* (a GC pause, a VM migration, SIGSTOP...) long enough for its lease to
expire. The store deletes A's key, B takes the lock, and writes to a downstream storage
service. Then A wakes up, still believing it holds the lock, and writes too.

* Without fencing the downstream store accepts A's stale write: B's update is lost.
* With fencing each write carries the lock key's create revision (a number that only
  grows from one holder to the next), and the downstream store rejects any write whose
  token is lower than one it has already seen: A's write is refused.
"""

from __future__ import annotations

import argparse
import time

import grpc

from conclave.api import pb
from conclave.api.stubs import EtcdStub

LOCK_NAME = b"demo/fencing-lock"


class Storage:
    """The downstream service the lock protects (a file server, a database...)."""

    def __init__(self, check_tokens: bool) -> None:
        self.check_tokens = check_tokens
        self.data = ""
        self.highest_token = 0

    def write(self, who: str, value: str, token: int) -> bool:
        if self.check_tokens and token < self.highest_token:
            print(f"  storage: REJECTED {who}'s write {value!r}: token {token} < {self.highest_token}")
            return False
        self.highest_token = max(self.highest_token, token)
        self.data = value
        print(f"  storage: accepted {who}'s write {value!r} (token {token})")
        return True


class Worker:
    def __init__(self, name: str, endpoint: str) -> None:
        self.name = name
        ch = grpc.insecure_channel(endpoint)
        self.kv = EtcdStub(ch, "etcdserverpb.KV")
        self.lease = EtcdStub(ch, "etcdserverpb.Lease")
        self.lock = EtcdStub(ch, "v3lockpb.Lock")
        self.lease_id = 0
        self.key = b""

    def acquire(self, ttl: int, timeout_s: float = 30) -> int:
        """Take the lock; return its fencing token (the lock key's create revision)."""
        self.lease_id = self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl)).ID
        try:  # Lock waits (watching its predecessor's key) until every older holder's key is gone
            self.key = self.lock.Lock(pb.LockRequest(name=LOCK_NAME, lease=self.lease_id), timeout=timeout_s).key
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"{self.name} could not take the lock") from None
            raise
        return int(self.kv.Range(pb.RangeRequest(key=self.key)).kvs[0].create_revision)

    def release(self) -> None:
        self.lock.Unlock(pb.UnlockRequest(key=self.key))
        self.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=self.lease_id))


def scenario(endpoint: str, fencing: bool) -> str:
    print(f"\n=== downstream store {'WITH' if fencing else 'WITHOUT'} fencing tokens")
    storage = Storage(check_tokens=fencing)
    a, b = Worker("A", endpoint), Worker("B", endpoint)
    token_a = a.acquire(ttl=2)
    print(f"A holds the lock (token {token_a}) ... and pauses for 5 s without keeping its lease alive")
    time.sleep(5)  # A's lease expires; the store deletes its lock key
    token_b = b.acquire(ttl=10)
    print(f"B holds the lock (token {token_b})")
    storage.write("B", "written by B", token_b)
    print("A wakes up, still believing it holds the lock")
    storage.write("A", "written by A (stale)", token_a)
    b.release()
    print(f"final content: {storage.data!r}")
    return storage.data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default="127.0.0.1:2379")
    args = ap.parse_args()
    unsafe = scenario(args.endpoint, fencing=False)
    safe = scenario(args.endpoint, fencing=True)
    print(f"\nwithout fencing B's update was {'LOST' if unsafe != 'written by B' else 'kept'}; "
          f"with fencing it was {'kept' if safe == 'written by B' else 'LOST'}")


if __name__ == "__main__":
    main()
