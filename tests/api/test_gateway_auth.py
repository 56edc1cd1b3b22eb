"""Authentication through the JSON gateway: the token in the Authorization header, as Patroni sends it.

Fails if: the gateway does not pass the Authorization header on as the call's token (then every
call is "user name is empty"), a permission error does not have etcd 3.4's code and HTTP status
(the transcript in the facts: 400/3 no token, 403/7 denied, 401/16 bad token, 400/3 bad
password), or a denied watch is not etcd's created-and-canceled message with watch_id -1.
Auth is enabled through the gateway itself. Skipped on a build whose Auth service lacks the
user and role RPCs (the auth-server branch).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gateway_support import Http, b64, single_member


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    cluster = single_member(Path(tmp_path_factory.mktemp("gw-auth")), "conclave")
    try:
        c = Http(cluster.endpoints[0])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if c.post("/v3/maintenance/status", {}).json.get("leader"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        yield c
    finally:
        cluster.stop()


def _ok(c: Http, path: str, body: object, token: str = "") -> dict[str, object]:
    reply = c.post(path, body, headers={"Authorization": token} if token else None)
    assert reply.status == 200, (path, reply.status, reply.raw)
    doc: dict[str, object] = reply.json
    return doc


def _err(c: Http, path: str, body: object, token: str = "") -> tuple[int, int, str]:
    reply = c.post(path, body, headers={"Authorization": token} if token else None)
    doc = reply.json
    return reply.status, doc["code"], doc["message"]


def test_the_authorization_header_carries_the_token(client: Http) -> None:
    c = client
    if c.post("/v3/auth/user/list", {}).status == 501:
        pytest.skip("this build's Auth service has no user and role RPCs (the auth-server branch)")
    _ok(c, "/v3/auth/role/add", {"name": "root"})
    _ok(c, "/v3/auth/user/add", {"name": "root", "password": "rootpw"})
    _ok(c, "/v3/auth/user/grant", {"user": "root", "role": "root"})
    _ok(c, "/v3/auth/role/add", {"name": "app"})
    _ok(c, "/v3/auth/role/grant", {"name": "app", "perm": {
        "permType": "READWRITE", "key": b64("/service/"), "range_end": b64("/service0")}})
    _ok(c, "/v3/auth/user/add", {"name": "alice", "password": "pw"})
    _ok(c, "/v3/auth/user/grant", {"user": "alice", "role": "app"})
    _ok(c, "/v3/auth/enable", {})

    token = str(_ok(c, "/v3/auth/authenticate", {"name": "alice", "password": "pw"})["token"])
    assert token
    assert _err(c, "/v3/kv/range", {"key": b64("/service/x")}) == (400, 3, "etcdserver: user name is empty")
    _ok(c, "/v3/kv/put", {"key": b64("/service/x"), "value": b64("1")}, token)
    kvs = _ok(c, "/v3/kv/range", {"key": b64("/service/x")}, token)["kvs"]
    assert isinstance(kvs, list) and kvs[0]["value"] == b64("1")
    assert _err(c, "/v3/kv/put", {"key": b64("/other"), "value": b64("1")}, token) == (
        403, 7, "etcdserver: permission denied")
    assert _err(c, "/v3/kv/range", {"key": b64("/service/x")}, "abc.5") == (401, 16, "etcdserver: invalid auth token")
    assert _err(c, "/v3/auth/authenticate", {"name": "alice", "password": "bad"}) == (
        400, 3, "etcdserver: authentication failed, invalid user ID or password")

    status, _, objs = c.stream("/v3/watch", {"create_request": {"key": b64("/other")}}, 1,
                               headers={"Authorization": token})
    assert status == 200
    assert objs[0]["result"]["watch_id"] == "-1" and objs[0]["result"]["created"] is True
    assert objs[0]["result"]["canceled"] is True
    denied = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    assert objs[0]["result"]["cancel_reason"] == denied

    root = str(_ok(c, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"})["token"])
    _ok(c, "/v3/auth/disable", {}, root)
    assert _ok(c, "/v3/kv/range", {"key": b64("/service/x")})["count"] == "1"
