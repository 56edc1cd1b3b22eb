"""``CoreClient``: the asyncio Conclave client's primitives (``AsyncClient`` adds the recipes).

Theory of operation
-------------------
The client holds one transport to one member at a time (native protocol by default, etcd gRPC
with ``protocol="grpc"``) and an endpoint list. Every call runs under a deadline (the per-call
``timeout``, default ``Client(timeout=...)``). When the member cannot be reached, or answers "no
leader"/"not leader", the client moves to the next endpoint and tries again until the deadline:

* reads (range, status, member list, lease queries, keep-alives) are retried freely;
* writes are retried only when the request certainly was not applied (it never left, or the
  member refused it before proposing); if it left and the answer was lost (connection dropped,
  deadline passed, server-side timeout) the call raises ``OutcomeUnknown`` instead of guessing.

Security: with ``user``/``password`` every new connection authenticates before it is used
(a member with auth disabled answers "authentication is not enabled", and the connection then
goes on without a token, as etcd's clientv3 does). When a member answers ``invalid auth token``
(the token expired), ``revision of auth store is old`` (users or roles changed since) or ``user
name is empty`` (auth was enabled after the connection was made), the request was refused before
anything was applied: the client authenticates that connection again and retries the request
once. TLS (``ca_file``, ``cert_file``/``key_file``, ``insecure_skip_tls_verify``, or ``https://``
endpoints) applies to both protocols; see :mod:`conclave.client.tls`.

Watches resume after a reconnect from the revision after the last one delivered, so a consumer
sees every event once, in order (see :class:`Watch`). A :class:`Session` keeps a lease alive from
this process: when the process dies or stalls, the lease expires and its keys disappear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, Self

from conclave.client import errors as cerr
from conclave.client.errors import (
    REAUTH_KINDS,
    AuthError,
    ClientError,
    Compacted,
    DeadlineExceeded,
    LeaseNotFound,
    OutcomeUnknown,
    Unavailable,
)
from conclave.client.tls import TLSConfig
from conclave.client.transport import ConnectionLost, NativeTransport, Transport
from conclave.client.types import (
    KeyLike,
    LeaseInfo,
    Member,
    Status,
    prefix_end,
    to_bytes,
)
from conclave.kv import auth as kvauth
from conclave.kv import types as kv
from conclave.wire.contract import WatchDelivery

log = logging.getLogger("conclave.client")

DEFAULT_NATIVE_ENDPOINTS = ("127.0.0.1:2381", "127.0.0.1:22381", "127.0.0.1:32381")
DEFAULT_GRPC_ENDPOINTS = ("127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379")
RETRY_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.3)
WATCH_RECONNECT_S = 60.0

WATCH_PROBE_IDLE_S = 1.0  # an idle watch checks its member this often ...
WATCH_PROBE_TIMEOUT_S = 2.0  # ... and moves to another one when it does not answer in time
WATCH_LEADERLESS_PROBES_MAX = 2
WATCH_CREATE_ATTEMPT_S = 3.0  # ... or has known no leader this many probes in a row
_IDEMPOTENT = frozenset({
    "ping", "range", "lease_keep_alive", "lease_time_to_live", "lease_leases", "member_list", "status", "hash_kv",
    "auth_status", "user_get", "user_list", "role_get", "role_list",
})


class CoreClient:
    """The store's primitives (KV, transactions, watches, leases, sessions, cluster calls).

    Users construct :class:`~conclave.client.recipes.AsyncClient`, which is this class plus one
    factory per recipe; ``CoreClient`` knows nothing of recipes, so recipes import it, not the reverse.
    """

    def __init__(
        self,
        endpoints: Iterable[str] | str | None = None,
        protocol: str = "native",
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        discover: bool = True,
        *,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure_skip_tls_verify: bool = False,
        tls: bool | None = None,
    ) -> None:
        if protocol not in ("native", "grpc"):
            raise ValueError(f"protocol must be 'native' or 'grpc', not {protocol!r}")
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        default = DEFAULT_NATIVE_ENDPOINTS if protocol == "native" else DEFAULT_GRPC_ENDPOINTS
        raw = [e.strip() for e in (endpoints or default)]
        self.endpoints: list[str] = [e.split("://", 1)[-1] for e in raw]
        if not self.endpoints:
            raise ValueError("at least one endpoint is required")
        if password is not None and not user:
            raise ValueError("a password needs a user name")
        self.user = user or None
        self.credentials: tuple[str, str] | None = (user, password or "") if user else None
        # etcdctl's rule: TLS when an endpoint says https or any TLS option is given.
        if tls is None:
            tls = (any(e.lower().startswith("https://") for e in raw) or bool(ca_file or cert_file or key_file)
                   or insecure_skip_tls_verify)
        self.tls: TLSConfig | None = TLSConfig(ca_file, cert_file, key_file, insecure_skip_tls_verify) if tls else None
        self.protocol = protocol
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.discover = discover and protocol == "native"
        # One connection per member, opened on demand and kept: moving to another member (no
        # leader there, a slow read) must not cut the requests still in flight on this one.
        self._pool: dict[str, Transport] = {}
        self._transport: Transport | None = None  # the member new requests go to
        self._connect_lock = asyncio.Lock()
        self._next = 0
        self._connecting: asyncio.Future[Transport] | None = None
        self._closed = False
        self._discovered = False

    # ---------------------------------------------------------------- connection

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        self._transport = None
        pool, self._pool = self._pool, {}
        for t in pool.values():
            t.close()

    @property
    def endpoint(self) -> str | None:
        """The member currently connected to (None before the first call)."""
        return self._transport.endpoint if self._transport is not None else None

    async def _open(self, endpoint: str) -> Transport:
        """A new connection to ``endpoint``, over TLS and authenticated as configured."""
        if self.protocol == "native":
            ctx = self.tls.ssl_context() if self.tls is not None else None
            return await NativeTransport.connect(endpoint, self.connect_timeout, ctx, self.credentials)
        from conclave.client.grpc_transport import GrpcTransport

        return await GrpcTransport.connect(endpoint, self.connect_timeout, self.tls, self.credentials)

    async def _reauthenticate(self, transport: Transport, exc: BaseException) -> bool:
        """After a refusal that a new token cures, log ``transport`` in again; False if it does not apply."""
        if self.credentials is None or not isinstance(exc, AuthError) or exc.kind not in REAUTH_KINDS:
            return False
        log.debug("%s: %s; authenticating again", transport.endpoint, exc)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await transport.authenticate(*self.credentials)
        except cerr.AuthNotEnabled:
            return exc.kind != "UserEmpty"  # auth was switched off meanwhile: plain retry
        except TimeoutError:
            raise DeadlineExceeded(f"{transport.endpoint}: authenticate did not answer") from None
        return True

    async def _connect(self, deadline: float) -> Transport:
        """A live transport; tries each endpoint once per round until the deadline."""
        t = self._transport
        if t is not None and not t.closed:
            return t
        async with self._connect_lock:  # one connection attempt at a time, shared by every caller
            return await self._connect_locked(deadline)

    async def _connect_locked(self, deadline: float) -> Transport:
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        rounds = 0
        while True:
            t = self._transport
            if t is not None and not t.closed:
                return t
            if self._closed:
                raise Unavailable("the client is closed")
            for _ in range(len(self.endpoints)):
                endpoint = self.endpoints[self._next % len(self.endpoints)]
                if t is not None and t.closed and t.endpoint == endpoint and len(self.endpoints) > 1:
                    self._next += 1
                    continue
                pooled = self._pool.get(endpoint)
                if pooled is not None and not pooled.closed and pooled is not t:
                    self._transport = pooled
                    return pooled
                try:
                    transport = await self._open(endpoint)
                except ConnectionLost as exc:
                    last = exc
                    self._next += 1
                    if loop.time() >= deadline:
                        break
                    continue
                if self._closed:
                    transport.close()
                    raise Unavailable("the client is closed")
                stale = self._pool.get(endpoint)
                if stale is not None:
                    stale.close()
                self._pool[endpoint] = transport
                self._transport = transport
                if self.discover and not self._discovered:
                    self._discovered = await self.sync_endpoints(transport)
                return transport
            rounds += 1
            if loop.time() >= deadline:
                raise Unavailable(f"no member reachable at {', '.join(self.endpoints)}: {last}")
            await asyncio.sleep(min(RETRY_BACKOFF_S[min(rounds, len(RETRY_BACKOFF_S) - 1)],
                                    max(0.0, deadline - loop.time())))

    async def sync_endpoints(self, transport: Transport | None = None) -> bool:
        """Add the native addresses the cluster publishes (a client may start knowing one member).

        True when every member had published its addresses (members publish theirs shortly
        after they start, so the client asks again on later connects until then).
        """
        try:
            if transport is None:
                members = await self.members()
            else:
                members = await asyncio.wait_for(transport.request("member_list", None), self.connect_timeout)
        except (ClientError, TimeoutError):
            return False
        for m in members:
            for url in m.native_urls:
                ep = url.split("://", 1)[-1].rstrip("/")
                if ep not in self.endpoints:
                    self.endpoints.append(ep)
        return bool(members) and all(m.native_urls for m in members)

    def _drop(self, transport: Transport) -> None:
        """The connection is dead or its member silent: close it and move to the next member."""
        self._move_on(transport)
        if self._pool.get(transport.endpoint) is transport:
            del self._pool[transport.endpoint]
        transport.close()

    def _move_on(self, transport: Transport) -> None:
        """Send new requests to the next member; ``transport`` stays open for what is in flight."""
        if self._transport is transport:
            self._transport = None
            self._next += 1

    async def request(self, method: str, arg: Any = None, *, timeout: float | None = None,
                      idempotent: bool | None = None) -> Any:
        """Send one domain call with failover and safe retries (see the module docstring)."""
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        safe = method in _IDEMPOTENT if idempotent is None else idempotent
        attempt = 0
        reauthenticated = False
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"{method}: no answer within {budget:g}s (last error: {last})")
            transport = await self._connect(deadline)
            # A read gets a share of the budget per member, so a silent (paused, partitioned)
            # member costs a fraction of the deadline and the retry goes elsewhere.
            attempt_s = min(remaining, max(budget / 3, 1.0)) if safe else remaining
            try:
                async with asyncio.timeout(attempt_s):  # cheaper than wait_for: no extra task per call
                    return await transport.request(method, arg)
            except ConnectionLost as exc:
                self._drop(transport)
                last = exc
                if exc.sent and not safe:
                    raise OutcomeUnknown(f"{method}: {exc}; the write may or may not have been applied") from None
            except TimeoutError:
                if not safe:  # the request was written before the deadline passed
                    raise OutcomeUnknown(
                        f"{method}: no answer within {budget:g}s; the write may or may not have been applied"
                    ) from None
                last = DeadlineExceeded(f"{method}: {transport.endpoint} did not answer in {attempt_s:g}s")
                self._drop(transport)
                if deadline - loop.time() <= 0:
                    raise DeadlineExceeded(f"{method}: no answer within {budget:g}s") from None
                continue
            except cerr.ServerError as exc:
                # The member refused before applying (stale/expired token): one new token, one retry.
                if not reauthenticated and await self._reauthenticate(transport, exc):
                    reauthenticated = True
                    continue
                raise exc from None
            except cerr.ServerTimeout as exc:
                if not safe:
                    raise OutcomeUnknown(f"{method}: {exc}; the write may or may not have been applied") from None
                last = exc
                self._move_on(transport)
            except Unavailable as exc:  # no leader / not leader / stopped: refused before proposing
                last = exc
                self._move_on(transport)
            except ClientError as exc:
                raise exc from None
            except Exception as exc:
                # Server-side timeouts arrive as Unavailable subclasses above; this is for
                # transport errors the protocol layer did not classify.
                raise Unavailable(f"{method}: {exc}") from exc
            attempt += 1
            await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])

    # ---------------------------------------------------------------- KV

    async def range(
        self,
        key: KeyLike,
        range_end: KeyLike = b"",
        *,
        limit: int = 0,
        revision: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: kv.SortOrder = kv.SortOrder.NONE,
        sort_target: kv.SortTarget = kv.SortTarget.KEY,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        timeout: float | None = None,
    ) -> kv.RangeResponse:
        req = kv.RangeRequest(
            key=to_bytes(key), range_end=to_bytes(range_end), limit=limit, revision=revision,
            sort_order=sort_order, sort_target=sort_target, serializable=serializable, keys_only=keys_only,
            count_only=count_only, min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        resp: kv.RangeResponse = await self.request("range", req, timeout=timeout)
        return resp

    async def get(self, key: KeyLike, *, serializable: bool = False, revision: int = 0,
                  timeout: float | None = None) -> bytes | None:
        """The key's value, or None when it does not exist (linearizable unless ``serializable``)."""
        r = await self.range(key, serializable=serializable, revision=revision, timeout=timeout)
        return r.kvs[0].value if r.kvs else None

    async def get_kv(self, key: KeyLike, *, serializable: bool = False, revision: int = 0,
                     timeout: float | None = None) -> kv.KeyValue | None:
        """The whole key-value record (revisions, version, lease), or None."""
        r = await self.range(key, serializable=serializable, revision=revision, timeout=timeout)
        return r.kvs[0] if r.kvs else None

    async def get_prefix(self, prefix: KeyLike, *, limit: int = 0, keys_only: bool = False,
                         sort_order: kv.SortOrder = kv.SortOrder.ASCEND,
                         sort_target: kv.SortTarget = kv.SortTarget.KEY,
                         serializable: bool = False, timeout: float | None = None) -> list[kv.KeyValue]:
        p = to_bytes(prefix) or b"\0"  # the empty prefix means every key (etcd's convention)
        r = await self.range(p, prefix_end(p), limit=limit, keys_only=keys_only, sort_order=sort_order,
                             sort_target=sort_target, serializable=serializable, timeout=timeout)
        return list(r.kvs)

    async def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False,
                  timeout: float | None = None) -> kv.PutResponse:
        req = kv.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv)
        resp: kv.PutResponse = await self.request("put", req, timeout=timeout)
        return resp

    async def delete(self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike = b"",
                     prev_kv: bool = False, timeout: float | None = None) -> kv.DeleteRangeResponse:
        k = to_bytes(key)
        if prefix and not k:
            k = b"\0"
        end = prefix_end(k) if prefix else to_bytes(range_end)
        resp: kv.DeleteRangeResponse = await self.request(
            "delete_range", kv.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv), timeout=timeout)
        return resp

    async def delete_prefix(self, prefix: KeyLike, *, timeout: float | None = None) -> int:
        return (await self.delete(prefix, prefix=True, timeout=timeout)).deleted

    async def transaction(self, compare: Iterable[kv.Compare], success: Iterable[kv.RequestOp] = (),
                          failure: Iterable[kv.RequestOp] = (), *, timeout: float | None = None,
                          idempotent: bool = False) -> kv.TxnResponse:
        """If every compare holds run ``success``, else ``failure``; atomically, at one revision."""
        req = kv.TxnRequest(tuple(compare), tuple(success), tuple(failure))
        resp: kv.TxnResponse = await self.request("txn", req, timeout=timeout, idempotent=idempotent)
        return resp

    def txn(self) -> Txn:
        """A transaction builder: ``await client.txn().if_(...).then(...).else_(...).commit()``."""
        return Txn(self)

    async def compact(self, revision: int, *, physical: bool = False, timeout: float | None = None) -> None:
        await self.request("compact", kv.CompactionRequest(revision, physical), timeout=timeout)

    # ---------------------------------------------------------------- watch

    def watch(self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike = b"", start_revision: int = 0,
              prev_kv: bool = False, no_put: bool = False, no_delete: bool = False) -> Watch:
        """Events on a key (or prefix/range) from ``start_revision`` (0: from now), in order, no gaps."""
        k = to_bytes(key)
        if prefix and not k:
            k = b"\0"
        end = prefix_end(k) if prefix else to_bytes(range_end)
        filters = tuple(f for f, on in ((kv.WatchFilterType.NOPUT, no_put),
                                        (kv.WatchFilterType.NODELETE, no_delete)) if on)
        return Watch(self, kv.WatchCreateRequest(key=k, range_end=end, start_revision=start_revision,
                                                 prev_kv=prev_kv, filters=filters))

    def watch_prefix(self, prefix: KeyLike, **kw: Any) -> Watch:
        return self.watch(prefix, prefix=True, **kw)

    # ---------------------------------------------------------------- leases

    async def lease(self, ttl: int, *, lease_id: int = 0, timeout: float | None = None) -> Lease:
        """Grant a lease of ``ttl`` seconds (the server may raise it to its minimum)."""
        r: kv.LeaseGrantResponse = await self.request("lease_grant", kv.LeaseGrantRequest(ttl, lease_id),
                                                      timeout=timeout)
        return Lease(self, r.id, r.ttl)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        await self.request("lease_revoke", kv.LeaseRevokeRequest(lease_id), timeout=timeout, idempotent=True)

    async def lease_keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew once; returns the new TTL in seconds (raises LeaseNotFound when it is gone)."""
        ttl: int = await self.request("lease_keep_alive", lease_id, timeout=timeout)
        return ttl

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseInfo:
        r: kv.LeaseTimeToLiveResponse = await self.request(
            "lease_time_to_live", kv.LeaseTimeToLiveRequest(lease_id, keys), timeout=timeout)
        return LeaseInfo(r.id, r.ttl, r.granted_ttl, r.keys)

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        r: kv.LeaseLeasesResponse = await self.request("lease_leases", None, timeout=timeout)
        return [x.id for x in r.leases]

    async def session(self, ttl: int = 10) -> Session:
        """A started :class:`Session` (lease kept alive in the background until ``close()``)."""
        s = Session(self, ttl)
        await s.start()
        return s

    # ---------------------------------------------------------------- cluster

    async def members(self, *, timeout: float | None = None) -> list[Member]:
        result: list[Member] = await self.request("member_list", None, timeout=timeout)
        return result

    async def status(self, endpoint: str | None = None, *, timeout: float | None = None) -> Status:
        """Status of the current member, or of ``endpoint`` (asked directly, no failover)."""
        if endpoint is None:
            result: Status = await self.request("status", None, timeout=timeout)
            return result
        t = await self._open(endpoint.split("://", 1)[-1])
        try:
            direct: Status = await asyncio.wait_for(t.request("status", None), timeout or self.timeout)
            return direct
        except TimeoutError:
            raise DeadlineExceeded(f"status of {endpoint}: no answer") from None
        finally:
            t.close()

    async def hash_kv(self, revision: int = 0, *, timeout: float | None = None) -> kv.HashKVResponse:
        r: kv.HashKVResponse = await self.request("hash_kv", revision, timeout=timeout)
        return r

    # ---------------------------------------------------------------- auth (etcd's Auth service)

    async def authenticate(self, user: str, password: str, *, timeout: float | None = None) -> str:
        """Log in as ``user`` from now on (every later call runs as that user); returns the token.

        ``Client(user=..., password=...)`` does this for every connection by itself; this is for
        switching identity: the current connection logs in again, connections to other members
        are closed (their next one logs in as ``user``). Watches already open keep the identity
        they were created with.
        """
        loop = asyncio.get_running_loop()
        transport = await self._connect(loop.time() + (timeout or self.timeout))
        try:
            async with asyncio.timeout(timeout or self.timeout):
                token = await transport.authenticate(user, password)
        except TimeoutError:
            raise DeadlineExceeded("authenticate: no answer") from None
        self.credentials = (user, password)
        self.user = user
        # Connections to other members still speak for the previous identity: close them (the
        # next one to each member logs in with the new credentials).
        for endpoint, other in list(self._pool.items()):
            if other is not transport:
                del self._pool[endpoint]
                other.close()
        return token

    async def auth_enable(self, *, timeout: float | None = None) -> None:
        """Turn auth on (needs user ``root`` with role ``root``; see ``conclave auth enable``)."""
        await self.request("auth_enable", (), timeout=timeout)

    async def auth_disable(self, *, timeout: float | None = None) -> None:
        await self.request("auth_disable", (), timeout=timeout)

    async def auth_status(self, *, timeout: float | None = None) -> kvauth.AuthStatusResponse:
        r: kvauth.AuthStatusResponse = await self.request("auth_status", (), timeout=timeout)
        return r

    async def user_add(self, name: str, password: str = "", *, no_password: bool = False,
                       timeout: float | None = None) -> None:
        """Add a user; ``no_password`` makes one that only a client certificate (CN) can log in as."""
        await self.request("user_add", (name, password, no_password), timeout=timeout)

    async def user_get(self, name: str, *, timeout: float | None = None) -> tuple[str, ...]:
        """The user's roles."""
        r: kvauth.UserGetResponse = await self.request("user_get", (name,), timeout=timeout)
        return r.roles

    async def user_list(self, *, timeout: float | None = None) -> list[str]:
        r: kvauth.UserListResponse = await self.request("user_list", (), timeout=timeout)
        return list(r.users)

    async def user_delete(self, name: str, *, timeout: float | None = None) -> None:
        await self.request("user_delete", (name,), timeout=timeout)

    async def user_change_password(self, name: str, password: str, *, timeout: float | None = None) -> None:
        await self.request("user_change_password", (name, password), timeout=timeout)

    async def user_grant_role(self, user: str, role: str, *, timeout: float | None = None) -> None:
        await self.request("user_grant_role", (user, role), timeout=timeout)

    async def user_revoke_role(self, user: str, role: str, *, timeout: float | None = None) -> None:
        await self.request("user_revoke_role", (user, role), timeout=timeout)

    async def role_add(self, name: str, *, timeout: float | None = None) -> None:
        await self.request("role_add", (name,), timeout=timeout)

    async def role_get(self, name: str, *, timeout: float | None = None) -> list[kvauth.Permission]:
        """The role's key permissions (``range_end`` b"" one key, b"\\0" from the key on)."""
        r: kvauth.RoleGetResponse = await self.request("role_get", (name,), timeout=timeout)
        return list(r.perm)

    async def role_list(self, *, timeout: float | None = None) -> list[str]:
        r: kvauth.RoleListResponse = await self.request("role_list", (), timeout=timeout)
        return list(r.roles)

    async def role_delete(self, name: str, *, timeout: float | None = None) -> None:
        await self.request("role_delete", (name,), timeout=timeout)

    async def role_grant_permission(self, name: str, perm_type: kvauth.PermType | str, key: KeyLike,
                                    range_end: KeyLike = b"", *, prefix: bool = False, from_key: bool = False,
                                    timeout: float | None = None) -> None:
        """Grant READ, WRITE or READWRITE on a key, ``[key, range_end)``, a prefix or from the key on."""
        k, end = _perm_range(key, range_end, prefix, from_key)
        kind = kvauth.PermType[perm_type.upper()] if isinstance(perm_type, str) else kvauth.PermType(perm_type)
        await self.request("role_grant_permission", (name, kvauth.Permission(kind, k, end)), timeout=timeout)

    async def role_revoke_permission(self, name: str, key: KeyLike, range_end: KeyLike = b"", *,
                                     prefix: bool = False, from_key: bool = False,
                                     timeout: float | None = None) -> None:
        k, end = _perm_range(key, range_end, prefix, from_key)
        await self.request("role_revoke_permission", (name, k, end), timeout=timeout)


def _perm_range(key: KeyLike, range_end: KeyLike, prefix: bool, from_key: bool) -> tuple[bytes, bytes]:
    if prefix and from_key:
        raise ValueError("--from-key and --prefix flags are mutually exclusive")
    k = to_bytes(key)
    if prefix:
        return k, prefix_end(k) if k else b"\0"
    if from_key:
        return k, b"\0"
    return k, to_bytes(range_end)


class Txn:
    """Fluent transaction: ``.if_(compares...).then(ops...).else_(ops...)``, then ``await .commit()``."""

    _sync_wrap = True

    def __init__(self, client: CoreClient) -> None:
        self.client = client
        self.compares: list[kv.Compare] = []
        self.success: list[kv.RequestOp] = []
        self.failure: list[kv.RequestOp] = []

    def if_(self, *compares: kv.Compare) -> Txn:
        self.compares.extend(compares)
        return self

    when = if_

    def then(self, *ops: kv.RequestOp) -> Txn:
        self.success.extend(ops)
        return self

    def else_(self, *ops: kv.RequestOp) -> Txn:
        self.failure.extend(ops)
        return self

    otherwise = else_

    async def commit(self, *, timeout: float | None = None) -> kv.TxnResponse:
        return await self.client.transaction(self.compares, self.success, self.failure, timeout=timeout)


class Watch:
    """An async iterator of :class:`~conclave.kv.types.Event`, resuming across reconnects.

    After each delivery the watch remembers the revision after the last event; when the
    connection drops it re-creates the watcher on another member from that revision, so nothing
    is missed and nothing is seen twice. A compacted start revision raises ``Compacted``.
    """

    _sync_wrap = True

    def __init__(self, client: CoreClient, req: kv.WatchCreateRequest) -> None:
        self.client = client
        self.req = req
        self.next_revision = req.start_revision
        self.pending: deque[kv.Event] = deque()
        self.queue: asyncio.Queue[tuple[int, WatchDelivery | None, BaseException | None]] | None = None
        self.generation = 0
        self.transport: Transport | None = None
        self.handle: Any = None
        self.closed = False
        self.created_revision = 0
        self.leaderless_probes = 0
        self.last_activity = 0.0

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def start(self) -> None:
        """Register the watcher now (iteration starts it otherwise)."""
        if self.queue is None:
            self.queue = asyncio.Queue()
            await self._open(asyncio.get_running_loop().time() + self.client.timeout)
            self.last_activity = asyncio.get_running_loop().time()

    async def _open(self, deadline: float) -> None:
        assert self.queue is not None
        queue = self.queue
        reauthenticated = False
        while True:
            if self.closed:
                return
            transport = await self.client._connect(deadline)
            self.generation += 1
            gen = self.generation

            def callback(item: WatchDelivery | None, exc: BaseException | None, gen: int = gen) -> None:
                queue.put_nowait((gen, item, exc))

            req = self.req
            if self.next_revision != req.start_revision:
                req = kv.WatchCreateRequest(req.key, req.range_end, self.next_revision, req.progress_notify,
                                            req.filters, req.prev_kv)
            try:
                # A bounded attempt: a paused member still accepts connections but never answers.
                attempt_s = min(WATCH_CREATE_ATTEMPT_S, max(0.01, deadline - asyncio.get_running_loop().time()))
                handle, revision = await asyncio.wait_for(transport.watch(req, callback), attempt_s)
            except (ConnectionLost, TimeoutError, cerr.Unavailable) as exc:
                self.client._drop(transport)
                if asyncio.get_running_loop().time() >= deadline:
                    raise Unavailable(f"watch: cannot re-create the watcher: {exc}") from None
                await asyncio.sleep(0.05)
                continue
            except AuthError as exc:
                if not reauthenticated and await self.client._reauthenticate(transport, exc):
                    reauthenticated = True
                    continue
                raise
            self.transport, self.handle = transport, handle
            if self.next_revision == 0:
                self.next_revision = revision + 1
            self.created_revision = self.created_revision or revision
            return

    async def __anext__(self) -> kv.Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float | None = None) -> kv.Event | None:
        """The next event; None when closed; raises TimeoutError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        while True:
            if self.pending:
                return self.pending.popleft()
            if self.closed:
                return None
            await self.start()
            assert self.queue is not None
            wait = None if until is None else until - loop.time()
            if wait is not None and wait <= 0:
                raise TimeoutError("no watch event in time")
            slice_s = WATCH_PROBE_IDLE_S if wait is None else min(wait, WATCH_PROBE_IDLE_S)
            try:
                gen, delivery, exc = await asyncio.wait_for(self.queue.get(), slice_s)
            except TimeoutError:
                if loop.time() - self.last_activity >= WATCH_PROBE_IDLE_S:
                    await self._probe()
                    self.last_activity = loop.time()
                continue
            self.last_activity = loop.time()
            if gen != self.generation:
                continue  # from a stream that was replaced
            if exc is not None:
                if isinstance(exc, (ConnectionLost, Unavailable)) and not self.closed:
                    if self.transport is not None:
                        self.client._drop(self.transport)
                    await self._open(loop.time() + WATCH_RECONNECT_S)
                    continue
                if self.closed:
                    return None
                raise exc
            assert delivery is not None
            for ev in delivery.events:
                if ev.kv.mod_revision >= self.next_revision:  # drop what an older stream already gave
                    self.pending.append(ev)
            if delivery.events:
                self.next_revision = max(self.next_revision, delivery.events[-1].kv.mod_revision + 1)
            if delivery.canceled:
                self.closed = True
                if delivery.compact_revision:
                    raise Compacted(compact_revision=delivery.compact_revision)
                if not self.pending:
                    raise Unavailable(f"watch canceled by the server: {delivery.cancel_reason or 'no reason'}")

    async def _probe(self) -> None:
        """While idle, make sure the member still answers and knows a leader; else move on.

        A paused or partitioned member keeps the connection open but delivers nothing; etcd's
        clients guard against this with keep-alive pings and "require leader" watches.
        """
        transport = self.transport
        if transport is None or self.closed:
            return
        try:
            async with asyncio.timeout(WATCH_PROBE_TIMEOUT_S):
                has_leader, _ = await transport.request("ping", None)
        except (ClientError, TimeoutError):
            has_leader = None
        if has_leader:
            self.leaderless_probes = 0
            return
        self.leaderless_probes += 1
        if has_leader is None or self.leaderless_probes >= WATCH_LEADERLESS_PROBES_MAX:
            log.info("watch: %s %s; resuming elsewhere from revision %d", transport.endpoint,
                     "does not answer" if has_leader is None else "has no leader", self.next_revision)
            self.leaderless_probes = 0
            if self.handle is not None:
                with contextlib.suppress(Exception):
                    transport.cancel_watch(self.handle)
            if has_leader is None:
                self.client._drop(transport)  # silent: nothing on it will be answered
            else:
                self.client._move_on(transport)  # alive: let its other requests finish there
            self.transport = None
            await self._open(asyncio.get_running_loop().time() + WATCH_RECONNECT_S)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and self.handle is not None:
            with contextlib.suppress(Exception):
                self.transport.cancel_watch(self.handle)
        if self.queue is not None:
            self.queue.put_nowait((self.generation, None, ConnectionLost("watch closed", sent=False)))

    cancel = close


class Lease:
    """A granted lease: ``id``, ``ttl`` (as granted); ``refresh()``, ``revoke()``, ``time_to_live()``."""

    _sync_wrap = True

    def __init__(self, client: CoreClient, lease_id: int, ttl: int) -> None:
        self.client = client
        self.id = lease_id
        self.ttl = ttl

    async def refresh(self) -> int:
        return await self.client.lease_keep_alive(self.id)

    async def revoke(self) -> None:
        await self.client.lease_revoke(self.id)

    async def time_to_live(self, keys: bool = False) -> LeaseInfo:
        return await self.client.lease_time_to_live(self.id, keys=keys)

    def __repr__(self) -> str:
        return f"Lease(id={self.id:#x}, ttl={self.ttl})"


class Session:
    """A lease this process keeps alive in the background (failure detection).

    Keys written with ``session.lease_id`` vanish when the session ends: ``close()`` revokes the
    lease; if the process dies or stalls, the lease expires after ``ttl`` seconds. ``expired`` is
    set (and ``alive`` turns False) when a keep-alive finds the lease gone.
    """

    _sync_wrap = True

    def __init__(self, client: CoreClient, ttl: int = 10) -> None:
        self.client = client
        self.ttl = ttl
        self.lease_id = 0
        self.expired = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Session:
        if self._task is None:
            lease = await self.client.lease(self.ttl)
            self.lease_id, self.ttl = lease.id, lease.ttl
            self._task = asyncio.get_running_loop().create_task(self._keep_alive())
        return self

    @property
    def alive(self) -> bool:
        return self._task is not None and not self.expired.is_set()

    async def _keep_alive(self) -> None:
        interval = max(self.ttl / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.client.lease_keep_alive(self.lease_id, timeout=max(interval, 1.0))
            except LeaseNotFound:
                log.warning("session lease %x expired", self.lease_id)
                self.expired.set()
                return
            except AuthError as exc:  # e.g. the user lost WRITE on the lease's keys: say so, loudly
                log.warning("session lease %x: keep-alive refused: %s", self.lease_id, exc)
            except ClientError as exc:  # unreachable for now: keep trying until the TTL runs out
                log.debug("session keep-alive failed: %s", exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.lease_id and not self.expired.is_set():
            with contextlib.suppress(ClientError):
                await self.client.lease_revoke(self.lease_id)
        self.expired.set()

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["CoreClient", "Lease", "Session", "Txn", "Watch"]
