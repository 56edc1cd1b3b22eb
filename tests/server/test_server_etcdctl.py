"""etcdctl 3.4 against a 3-member Conclave cluster, output compared with real etcd 3.4's.

Both clusters get the same command sequence; outputs must be byte-equal after the values
that differ by nature (cluster/member ids, raft term, timings) are masked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conclave.server.launcher import ProcessCluster

from .conftest import etcdctl_path, wait_for

ETCDCTL = etcdctl_path()
ETCD = shutil.which("etcd")
if ETCDCTL is None:
    pytest.skip("etcdctl is not installed", allow_module_level=True)

ENV = {**os.environ, "ETCDCTL_API": "3"}


def ctl(endpoints: list[str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    assert ETCDCTL is not None
    done = subprocess.run(
        [ETCDCTL, "--endpoints=" + ",".join(endpoints), "--dial-timeout=5s", "--command-timeout=10s", *args],
        input=stdin, capture_output=True, text=True, timeout=30, env=ENV,
    )
    return done.returncode, done.stdout + done.stderr


MASKS = [
    (re.compile(r'("cluster_id"|"member_id"|"raft_term"):\d+'), r"\1:N"),
    (re.compile(r'"(ClusterID|MemberID|RaftTerm)" : \d+'), r'"\1" : N'),
    (re.compile(r"took = [0-9.]+[µm]?s"), "took = T"),
    (re.compile(r'"ts":"[^"]*"'), '"ts":T'),
    (re.compile(r'"target":"[^"]*"'), '"target":T'),
]


def mask(text: str) -> str:
    for pat, rep in MASKS:
        text = pat.sub(rep, text)
    return text


SCRIPT: list[tuple[tuple[str, ...], str | None]] = [
    (("put", "foo", "bar"), None),
    (("put", "foo1", "bar1"), None),
    (("put", "foo2", "bar2"), None),
    (("put", "zoo", "z"), None),
    (("put", "foo", "bar-2", "--prev-kv"), None),
    (("get", "foo"), None),
    (("get", "--prefix", "foo"), None),
    (("get", "--from-key", "foo1"), None),
    (("get", "--prefix", "foo", "--limit", "2"), None),
    (("get", "--prefix", "foo", "--sort-by", "MODIFY", "--order", "DESCEND"), None),
    (("get", "--prefix", "foo", "--sort-by", "VALUE", "--order", "ASCEND"), None),
    (("get", "--prefix", "foo", "--sort-by", "CREATE", "--order", "DESCEND", "--limit", "1"), None),
    (("get", "foo", "--rev", "2"), None),
    (("get", "--prefix", "foo", "--keys-only"), None),
    (("get", "--prefix", "foo", "--print-value-only"), None),
    (("get", "foo", "-w", "json"), None),
    (("get", "--prefix", "foo", "--limit", "1", "-w", "json"), None),
    (("get", "foo", "-w", "fields"), None),
    (("get", "foo", "-w", "simple"), None),
    (("get", "nothing-here"), None),
    (("get", "--prefix", "foo", "--count-only", "-w", "json"), None),
    (("del", "--prev-kv", "foo2"), None),
    (("del", "nothing-here"), None),
    (("txn",), 'value("foo") = "bar-2"\n\nput foo bar-3\nget foo\n\nput foo never\n\n'),
    (("txn",), 'mod("zoo") > "100"\n\nput zoo yes\n\nget zoo\n\n'),
    (("txn", "-w", "json"), 'version("foo1") = "1"\n\nput foo1 v2\n\n\n'),
    (("txn", "-i"), 'create("zoo") > "0"\n\nput zoo zz\n\nput zoo never\n\n'),
    (("get", "--prefix", "", "-w", "json"), None),
    (("compaction", "4"), None),
    (("get", "foo", "--rev", "3"), None),
    (("get", "foo", "--rev", "1000"), None),
    (("del", "--prefix", "fo"), None),
    (("del", "--from-key", "a", "--prev-kv"), None),
    (("get", "--from-key", ""), None),
    (("put", "", "x"), None),
]


def run_script(endpoints: list[str]) -> list[str]:
    out = []
    for args, stdin in SCRIPT:
        rc, text = ctl(endpoints, *args, stdin=stdin)
        out.append(f"$ etcdctl {' '.join(args)}  [exit {rc}]\n{mask(text)}")
    return out


@pytest.fixture(scope="module")
def conclave(module_cluster: ProcessCluster) -> ProcessCluster:
    return module_cluster


def test_outputs_equal_real_etcd(conclave: ProcessCluster, tmp_path: Path) -> None:
    if ETCD is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("etcd is required in CI (make system-deps installs it)")
        pytest.skip("etcd is not installed")
    # A fresh Conclave cluster for the script so revisions line up with the fresh etcd.
    ours_cluster = ProcessCluster(tmp_path / "ours", 3)
    etcd = ProcessCluster(tmp_path / "etcd", 3, kind="etcd")
    ours_cluster.start()
    etcd.start()
    try:
        for c in (ours_cluster, etcd):
            wait_for(lambda c=c: ctl(c.endpoints, "endpoint", "health")[0] == 0, 30, "health")
        ours = run_script(ours_cluster.endpoints)
        theirs = run_script(etcd.endpoints)
    finally:
        ours_cluster.stop()
        etcd.stop()
    diffs = [f"--- etcd\n{t}\n--- conclave\n{o}" for o, t in zip(ours, theirs, strict=True) if o != t]
    assert not diffs, "\n\n".join(diffs)


def test_endpoint_status_health_and_member_list(conclave: ProcessCluster) -> None:
    eps = conclave.endpoints
    rc, out = ctl(eps, "endpoint", "health", "--cluster")
    assert rc == 0 and out.count("is healthy") == 3, out
    rc, out = ctl(eps[:1], "endpoint", "status", "--cluster", "-w", "json")
    assert rc == 0, out
    status = json.loads(out)
    assert len(status) == 3
    leaders = {s["Status"]["leader"] for s in status}
    assert len(leaders) == 1 and leaders != {0}
    assert sorted(s["Endpoint"] for s in status) == sorted(f"http://{e}" for e in eps)
    rc, out = ctl(eps, "endpoint", "status", "-w", "table")
    assert rc == 0 and "RAFT APPLIED INDEX" in out and out.count("127.0.0.1") == 3
    rc, out = ctl(eps, "member", "list", "-w", "json")
    members = json.loads(out)["members"]
    assert sorted(m["name"] for m in members) == ["m1", "m2", "m3"]
    assert sorted(m["clientURLs"][0] for m in members) == sorted(f"http://{e}" for e in eps)
    rc, out = ctl(eps, "member", "list")
    assert rc == 0 and out.count("started") == 3


def test_errors_use_etcds_words(conclave: ProcessCluster) -> None:
    eps = conclave.endpoints
    rc, out = ctl(eps, "put", "big", stdin="x" * (1700 * 1024))
    assert rc != 0 and "request is too large" in out, out
    ops = "".join(f"put k{i} v\n" for i in range(129))
    rc, out = ctl(eps, "txn", stdin=f"\n{ops}\n\n")
    assert rc != 0 and "too many operations in txn request" in out, out
    rc, out = ctl(eps, "txn", stdin="\nput dup 1\nput dup 2\n\n\n")
    assert rc != 0 and "duplicate key given in txn request" in out, out


def test_etcdctl_answers_found_different_from_etcd_34(conclave: ProcessCluster) -> None:
    """Each checked by hand against etcd 3.4.23 on 127.0.0.1 (its output is quoted in the comments)."""
    eps = conclave.endpoints
    # member list -w json: etcd's header has cluster_id, member_id and raft_term, no revision.
    rc, out = ctl(eps, "member", "list", "-w", "json")
    assert rc == 0 and sorted(json.loads(out)["header"]) == ["cluster_id", "member_id", "raft_term"], out
    # endpoint status: never "0 B" (etcd: 20 kB on a fresh member).
    rc, out = ctl(eps[:1], "endpoint", "status", "-w", "json")
    status = json.loads(out)[0]["Status"]
    assert status["dbSize"] >= 20480 and status["dbSizeInUse"] >= 16384, status
    # hashkv at the compact revision itself: "required revision has been compacted".
    for i in range(2):
        ctl(eps, "put", "hk", str(i))
    rev = json.loads(ctl(eps, "get", "hk", "-w", "json")[1])["header"]["revision"]
    assert ctl(eps, "compaction", str(rev))[0] == 0
    rc, out = ctl(eps[:1], "endpoint", "hashkv", f"--rev={rev}")
    assert rc != 0 and "required revision has been compacted" in out, out
    # move-leader to the current leader: "Leadership transferred from X to X", exit 0.
    leader = f"{status['leader']:x}"
    rc, out = ctl(eps, "move-leader", leader)
    assert rc == 0 and f"Leadership transferred from {leader} to {leader}" in out, out
