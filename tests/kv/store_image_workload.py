"""Shared workload for the store image compatibility test (run by old and new code)."""
from conclave.kv.mvcc import Store
from conclave.kv.types import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RequestOp,
    TxnRequest,
)


def build() -> Store:
    s = Store()
    i = 0
    def ap(cmd):
        nonlocal i
        i += 1
        return s.apply(cmd, i)
    lease = ap(LeaseGrantRequest(ttl=30, id=7)).id
    ap(LeaseGrantRequest(ttl=60, id=8))
    for n in range(40):
        ap(PutRequest(key=b"k/%02d" % (n % 13), value=b"v%d" % n, lease=lease if n % 5 == 0 else 0))
        if n % 7 == 3:
            ap(DeleteRangeRequest(key=b"k/%02d" % ((n + 2) % 13)))
        if n % 9 == 4:
            ap(TxnRequest(success=(RequestOp(request_put=PutRequest(key=b"t/a", value=b"x%d" % n)),
                                   RequestOp(request_put=PutRequest(key=b"t/b", value=b"y%d" % n)),
                                   RequestOp(request_delete_range=DeleteRangeRequest(key=b"k/05")))))
        if n == 25:
            ap(CompactionRequest(revision=s.revision - 6))
    ap(LeaseRevokeRequest(id=7))
    ap(DeleteRangeRequest(key=b"k/1", range_end=b"k/2"))
    return s
