"""etcd3gw (OpenStack's client of the JSON gateway, from PyPI) against Conclave's gateway.

Like the other third-party client tests, the library runs in a subprocess: the script below
prints one JSON object that the test asserts on. It discovers the API path through
``GET /version`` itself (so a non-numeric or pre-3.4 version would send it elsewhere).
Fails if: put/get round trips lose bytes, a prefix read misses or reorders keys, the watch
misses, reorders or duplicates an event, a refreshed lease's TTL is not the granted one or its
key is not listed, a revoked lease leaves its key, or two holders get the same lock at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conclave.api.edge_server import available

from .gateway_support import Http, http_port, single_member

SCRIPT = r'''
import json, sys, threading, time
import etcd3gw

host, port = sys.argv[1], int(sys.argv[2])
c = etcd3gw.client(host=host, port=port, timeout=10)
out = {"api_path": c.api_path, "members": len(c.members()), "status_version": c.status()["version"]}

out["put"] = c.put("/gw/k", "v\u00e91")
out["get"] = [v.decode("latin-1") for v in c.get("/gw/k")]  # etcd3gw encodes str as latin-1
out["get_missing"] = c.get("/gw/missing")
for i in (2, 0, 1):
    c.put(f"/gw/p/{i}", f"x{i}")
out["prefix"] = [(m["key"].decode(), v.decode()) for v, m in c.get_prefix("/gw/p/", sort_order="ascend")]
out["create_new"] = c.create("/gw/c", "1")
out["create_again"] = c.create("/gw/c", "2")
out["replace"] = c.replace("/gw/c", "1", "3")
out["delete"] = c.delete("/gw/c")
out["delete_prefix"] = c.delete_prefix("/gw/p/")

events, cancel = c.watch_prefix("/gw/w/")
seen = []
def consume():
    for ev in events:
        seen.append((ev.get("type", "PUT"), ev["kv"]["key"].decode(), ev["kv"].get("value", b"").decode()))
        if len(seen) == 4:
            return
t = threading.Thread(target=consume, daemon=True)
t.start()
time.sleep(0.5)  # the watch is created before the writes
for i in range(3):
    c.put(f"/gw/w/{i}", f"w{i}")
c.delete("/gw/w/1")
t.join(10)
cancel()
out["watch"] = seen

lease = c.lease(ttl=3)
c.put("/gw/leased", "l", lease=lease)
refreshed = []
present = []
for _ in range(4):  # 4 s on a 3 s lease: only the refreshes keep the key
    time.sleep(1)
    refreshed.append(lease.refresh())
    present.append(bool(c.get("/gw/leased")))
out["lease_refresh"] = refreshed
out["lease_present"] = present
out["lease_keys"] = [k.decode() for k in lease.keys()]
out["lease_ttl"] = lease.ttl()
out["lease_revoke"] = lease.revoke()
out["after_revoke"] = c.get("/gw/leased")

a = c.lock("gwlock", ttl=10)
b = c.lock("gwlock", ttl=10)
out["lock_a"] = a.acquire()
out["lock_b_while_held"] = b.acquire()
out["a_is_acquired"] = a.is_acquired()
out["release_a"] = a.release()
out["lock_b_after"] = b.acquire()
out["b_is_acquired"] = b.is_acquired()
out["release_b"] = b.release()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def gateway_endpoint(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The client port of a default member (the compiled edge), else a python-engine member's HTTP port."""
    root = Path(tmp_path_factory.mktemp("etcd3gw"))
    if available():
        cluster = single_member(root, "conclave")
        endpoint = cluster.endpoints[0]
    else:
        port = http_port()
        cluster = single_member(root, "conclave", http_port=port, extra=("--grpc-engine", "python"))
        endpoint = f"127.0.0.1:{port}"
    try:
        client = Http(endpoint, timeout=2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.post("/v3/maintenance/status", {}).json.get("leader"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        yield endpoint
    finally:
        cluster.stop()


def test_etcd3gw_put_get_prefix_watch_lease_lock(gateway_endpoint: str) -> None:
    host, port = gateway_endpoint.rsplit(":", 1)
    env = {k: v for k, v in os.environ.items() if k != "ETCD3GW_API_PATH"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, host, port], capture_output=True, text=True,
                          timeout=90, env=env)  # fmt: skip
    assert proc.returncode == 0, f"etcd3gw script failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    r = json.loads(proc.stdout.strip().splitlines()[-1])

    assert r["api_path"] == "/v3/" and r["members"] == 1 and r["status_version"]
    assert r["put"] is True and r["get"] == ["v\u00e91"] and r["get_missing"] == []
    assert r["prefix"] == [["/gw/p/0", "x0"], ["/gw/p/1", "x1"], ["/gw/p/2", "x2"]]
    assert (r["create_new"], r["create_again"], r["replace"], r["delete"], r["delete_prefix"]) == (
        True, False, True, True, True)
    assert r["watch"] == [["PUT", "/gw/w/0", "w0"], ["PUT", "/gw/w/1", "w1"], ["PUT", "/gw/w/2", "w2"],
                          ["DELETE", "/gw/w/1", ""]]
    assert r["lease_refresh"] == [3, 3, 3, 3] and all(r["lease_present"])
    assert r["lease_keys"] == ["/gw/leased"] and 0 < r["lease_ttl"] <= 3
    assert r["lease_revoke"] is True and r["after_revoke"] == []
    assert (r["lock_a"], r["lock_b_while_held"], r["a_is_acquired"], r["release_a"]) == (True, False, True, True)
    assert (r["lock_b_after"], r["b_is_acquired"], r["release_b"]) == (True, True, True)
