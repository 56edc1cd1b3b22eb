"""Authentication on the native protocol, in process: the per-connection token, the Auth calls,
and the client's one re-authentication when a member refuses a token (a fake auth backend stands
in for the server's auth; what it checks is the contract of wire/contract.py, not etcd's rules)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from api.fake_backend import FakeBackend  # tests/ is on sys.path (rootdir-based import of test packages)
from conclave import AsyncClient
from conclave.api import native
from conclave.client import AuthFailed, InvalidAuthToken, PermissionDenied, UserEmpty
from conclave.client.errors import InvalidArgument, ServerError
from conclave.client.native import NativeChannel
from conclave.kv import auth as kvauth
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.wire.contract import NO_AUTH, AuthInfo


@dataclass
class Cfg:
    listen_native_urls: list[str]
    max_request_bytes: int = 1 << 20


class AuthBackend(FakeBackend):
    """FakeBackend with users and tokens: keys under /ok/ are alice's, everything else is denied."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.passwords = {"alice": "pw", "root": "rootpw"}
        self.tokens: dict[str, str] = {}
        self.issued = 0
        self.seen: list[AuthInfo] = []
        self.calls: list[tuple[Any, ...]] = []
        self.stale_after_issue = False  # every token is refused as soon as it is issued
        self.leaderless_logins = 0  # this many Authenticate calls answer "no leader" first

    def auth_enabled(self) -> bool:
        return self.enabled

    async def authenticate(self, name: str, password: str, *, auth: AuthInfo = NO_AUTH) -> tuple[str, int]:
        self.calls.append(("authenticate", name, auth.source))
        if self.leaderless_logins > 0:
            self.leaderless_logins -= 1
            raise kverr.NoLeader()
        if not self.enabled:
            raise kverr.AuthNotEnabled()
        if self.passwords.get(name) != password:
            raise kverr.AuthFailed()
        self.issued += 1
        token = f"tok{self.issued}.{self.issued}"
        if not self.stale_after_issue:
            self.tokens[token] = name
        return token, self.current_revision()

    def user(self, auth: AuthInfo) -> str:
        self.seen.append(auth)
        if not self.enabled:
            return ""
        if auth.token:
            user = self.tokens.get(auth.token)
            if user is None:
                raise kverr.InvalidAuthToken()
            return user
        if auth.cert_cn:
            return auth.cert_cn
        raise kverr.UserEmpty()

    def check(self, auth: AuthInfo, key: bytes) -> None:
        user = self.user(auth)
        if user and user != "root" and not key.startswith(b"/ok/"):
            raise kverr.PermissionDenied()

    async def range(self, req: kv.RangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.RangeResponse:
        self.check(auth, req.key)
        return await super().range(req)

    async def put(self, req: kv.PutRequest, *, auth: AuthInfo = NO_AUTH) -> kv.PutResponse:
        self.check(auth, req.key)
        return await super().put(req)

    async def lease_keep_alive(self, lease_id: int, *, auth: AuthInfo = NO_AUTH) -> int:
        self.user(auth)
        return await super().lease_keep_alive(lease_id)

    async def lease_grant(self, req: kv.LeaseGrantRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseGrantResponse:
        self.user(auth)
        return await super().lease_grant(req)

    def watch_create(self, req: kv.WatchCreateRequest, notify: Callable[[], None], *,
                     auth: AuthInfo = NO_AUTH) -> Any:
        self.check(auth, req.key)
        return super().watch_create(req, notify)

    # The Auth service: record the call, answer in the contract's shapes.
    async def user_add(self, name: str, password: str, no_password: bool, hashed_password: str = "", *,
                       auth: AuthInfo = NO_AUTH) -> int:
        self.calls.append(("user_add", name, password, no_password, self.user(auth)))
        return 7

    async def user_get(self, name: str, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]:
        self.calls.append(("user_get", name, self.user(auth)))
        return ("app", "ops"), 7

    async def role_get(self, role: str, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[kvauth.Permission, ...], int]:
        self.calls.append(("role_get", role, self.user(auth)))
        return (kvauth.Permission(kvauth.PermType.READWRITE, b"/ok/", b"/ok0"),), 7

    async def role_grant_permission(self, name: str, perm: kvauth.Permission, *, auth: AuthInfo = NO_AUTH) -> int:
        self.calls.append(("role_grant_permission", name, perm, self.user(auth)))
        return 8

    async def auth_status(self, *, auth: AuthInfo = NO_AUTH) -> tuple[bool, int, int]:
        self.calls.append(("auth_status", self.user(auth)))
        return self.enabled, 3, 7

    async def role_list(self, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]:
        self.calls.append(("role_list", self.user(auth)))
        return ("app", "root"), 7


def run(body: Callable[[str, AuthBackend], Awaitable[None]], backend: AuthBackend | None = None) -> None:
    async def main() -> None:
        b = backend or AuthBackend()
        server = await native.start_native_server(b, Cfg(["http://127.0.0.1:0"]))
        try:
            await asyncio.wait_for(body(f"127.0.0.1:{server.ports[0]}", b), 20)
        finally:
            server.close()

    asyncio.run(main())


def test_the_token_of_authenticate_holds_for_the_connection() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        ch = await NativeChannel.connect(ep, 2)
        try:
            req = kv.RangeRequest(key=b"/ok/a")
            with pytest.raises(UserEmpty, match=r"^etcdserver: user name is empty$"):
                await ch.call("range", [req])
            with pytest.raises(AuthFailed, match=r"^etcdserver: authentication failed, invalid user ID or password$"):
                await ch.call("authenticate", ["alice", "wrong"])
            token, _ = await ch.call("authenticate", ["alice", "pw"])
            assert token == "tok1.1"
            await ch.call("range", [req])
            # The source is the host alone (a new connection, a new port, must not reset the rate limit).
            assert b.seen[-1].token == "tok1.1" and b.seen[-1].source == "127.0.0.1"
            await ch.call("put", [kv.PutRequest(b"/ok/a", b"1")])
            assert (await ch.call("ping", []))[1] == b.current_revision() > 0
            with pytest.raises(PermissionDenied, match=r"^etcdserver: permission denied$"):
                await ch.call("range", [kv.RangeRequest(key=b"/secret")])
            # Another connection is not logged in.
            other = await NativeChannel.connect(ep, 2)
            with pytest.raises(UserEmpty):
                await other.call("range", [req])
            assert await other.call("ping", []) == [True, 0]  # no revision without credentials
            other.close()
            with pytest.raises(InvalidArgument):  # a malformed authenticate is refused, not a crash
                await ch.call("authenticate", ["alice"])
        finally:
            ch.close()

    run(body)


def test_the_client_authenticates_every_connection_and_once_more_when_the_token_expires() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        async with AsyncClient([ep], discover=False, user="alice", password="pw") as c:
            await c.put("/ok/k", "v1")
            b.tokens.clear()  # the member forgot every token (TTL passed)
            await c.put("/ok/k", "v2")  # refused with invalid auth token, re-authenticated, retried
            assert await c.get("/ok/k") == b"v2"
            assert [x[0] for x in b.calls].count("authenticate") == 2
            with pytest.raises(PermissionDenied):
                await c.put("/secret", "x")
            assert [x[0] for x in b.calls].count("authenticate") == 2  # a denial is not retried
        # A member that refuses even the fresh token: one retry, then the error (no loop).
        b.stale_after_issue = True
        async with AsyncClient([ep], discover=False, user="alice", password="pw") as c:
            with pytest.raises(InvalidAuthToken, match=r"^etcdserver: invalid auth token$"):
                await c.put("/ok/k", "v3")
        assert [x[0] for x in b.calls].count("authenticate") == 4

    run(body)


def test_credentials_errors_and_auth_turned_on_later() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        async with AsyncClient([ep], discover=False, user="alice", password="bad") as c:
            with pytest.raises(AuthFailed):
                await c.get("/ok/k")
        async with AsyncClient([ep], discover=False) as c:
            with pytest.raises(UserEmpty):
                await c.get("/ok/k")
        # Auth off at connect: "not enabled" is not an error; once it is enabled, "user name is
        # empty" makes the client log in and retry.
        b.enabled = False
        async with AsyncClient([ep], discover=False, user="alice", password="pw") as c:
            await c.put("/x", "1")
            b.enabled = True
            await c.put("/ok/y", "2")
            assert ("authenticate", "alice", "127.0.0.1") in b.calls

    run(body)


def test_auth_calls_and_watches_carry_the_identity() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        async with AsyncClient([ep], discover=False, user="root", password="rootpw") as c:
            await c.user_add("bob", "bobpw")
            assert await c.user_get("bob") == ("app", "ops")
            await c.role_grant_permission("app", "readwrite", "/ok/", prefix=True)
            perms = await c.role_get("app")
            assert perms == [kvauth.Permission(kvauth.PermType.READWRITE, b"/ok/", b"/ok0")]
            status = await c.auth_status()
            assert status.enabled and status.auth_revision == 3
            assert await c.role_list() == ["app", "root"]
        assert ("user_add", "bob", "bobpw", False, "root") in b.calls
        assert ("role_grant_permission", "app", kvauth.Permission(kvauth.PermType.READWRITE, b"/ok/", b"/ok0"),
                "root") in b.calls
        async with AsyncClient([ep], discover=False, user="alice", password="pw") as c:
            with pytest.raises(PermissionDenied):  # refused at creation, as the opening call's error
                await c.watch("/secret").start()
            w = c.watch("/ok/", prefix=True)
            await w.start()
            await c.put("/ok/z", "1")
            ev = await w.next(timeout=5)
            assert ev is not None and ev.kv.key == b"/ok/z"
            w.close()
            lease = await c.lease(30)
            assert await c.lease_keep_alive(lease.id) > 0
            assert b.seen[-1].token.startswith("tok")

    run(body)


def test_a_member_without_auth_support_answers_unknown_method() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        ch = await NativeChannel.connect(ep, 2)
        try:
            with pytest.raises(ServerError, match=r"unknown native method"):
                await ch.call("authenticate", ["alice", "pw"])
        finally:
            ch.close()

    async def main() -> None:
        server = await native.start_native_server(FakeBackend(), Cfg(["http://127.0.0.1:0"]))
        try:
            await asyncio.wait_for(body(f"127.0.0.1:{server.ports[0]}", AuthBackend()), 20)
        finally:
            server.close()

    asyncio.run(main())


def test_authenticate_switches_the_identity_of_the_client() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        async with AsyncClient([ep], discover=False, user="alice", password="pw") as c:
            with pytest.raises(PermissionDenied):
                await c.put("/secret", "x")
            token = await c.authenticate("root", "rootpw")
            assert b.tokens[token] == "root"
            await c.put("/secret", "x")  # now as root
            with pytest.raises(AuthFailed):
                await c.authenticate("root", "nope")
            await c.put("/secret", "y")  # a failed switch keeps the identity it had

    run(body)


def test_a_login_without_a_leader_is_tried_again_until_the_deadline() -> None:
    async def body(ep: str, b: AuthBackend) -> None:
        b.leaderless_logins = 2  # an election: the token cannot be committed yet
        async with AsyncClient([ep], discover=False, user="alice", password="pw", timeout=5) as c:
            await c.put("/ok/k", "v")
        assert [x[0] for x in b.calls].count("authenticate") == 3

    run(body)
