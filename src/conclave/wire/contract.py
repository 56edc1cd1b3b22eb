"""The contract between the etcd v3 gRPC edge (``conclave.api``) and the node that serves it.

Theory of operation: the gRPC services in :mod:`conclave.api.grpc_server` translate protobuf messages
into ``conclave.kv.types`` values and call an :class:`EtcdBackend`; the backend (the server node, or a
fake in tests) does the work and raises ``conclave.kv.errors.EtcdError`` subclasses for anything a
client must see with etcd's exact wording. The edge fills every response header (cluster_id,
member_id and raft_term from the backend, revision from the domain response).

Watches: the edge owns watch IDs and streams; the backend owns the watchers. ``watch_create`` registers
a watcher for a key range from a start revision and returns a :class:`WatchSubscription`. Whenever that
watcher has something to deliver the backend calls ``notify()`` (synchronously, from the event loop
thread; it only sets a flag); the edge then calls ``take()`` until it returns None and sends each
:class:`WatchDelivery`. ``take()`` never blocks. A delivery with ``canceled`` (e.g. the start revision
was compacted: ``compact_revision`` set) ends the watcher. ``cancel()`` unregisters it; the edge calls
it when the client cancels or the stream ends. ``synced_revision`` is the revision up to which every
event has been taken (None while the watcher is catching up): it answers progress requests.

Auth: every request method takes ``auth``, an :class:`AuthInfo` saying who the caller claims to be
(the token from gRPC metadata ``token``/``authorization``, or the verified client certificate's CN;
``gateway`` marks requests relayed by the HTTP gateway, whose CN is ignored, as etcd ignores it).
The api layer builds it with ONE function (``conclave.api.grpc_server.auth_info``) for both gRPC
engines; the native protocol keeps the token per connection. The backend resolves it to a user and
checks the request (errors: ``UserEmpty``, ``InvalidAuthToken``, ``PermissionDenied``,
``AuthOldRevision``); ``NO_AUTH`` is what a caller without credentials passes. The Auth service's
calls (``authenticate``, ``auth_*``, ``user_*``, ``role_*``) take and return ``conclave.kv.auth``
values; ``auth_enabled()`` lets the api skip building an AuthInfo while auth is off.

This module holds only the contract: no business rules, no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from conclave.kv import auth as kvauth
from conclave.kv import errors as kverr
from conclave.kv import types as kv


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who a request says it comes from: a token, else (with client-cert auth) a certificate CN."""

    token: str = ""
    cert_cn: str = ""
    gateway: bool = False  # relayed by the grpc-gateway (metadata ``grpcgateway-accept``): CN ignored
    source: str = ""  # the client's address (rate limiting of Authenticate), "" when unknown


NO_AUTH = AuthInfo()


class AuthTokenAhead(kverr.InvalidAuthToken):
    """A simple token whose login (the Authenticate entry its suffix names) is committed but not yet
    applied on this member. Same code and text as InvalidAuthToken; an edge may take one read
    barrier (``read_barrier()``) and retry the call once, so a client that logged in on another
    member is not refused while this one catches up."""


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What Maintenance.Status reports about the member that answers."""

    version: str
    db_size: int
    db_size_in_use: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    is_learner: bool = False
    errors: tuple[str, ...] = ()
    db_size_quota: int = 0
    storage_version: str = ""
    revision: int = 0


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One cluster member as Cluster.MemberList describes it (client_urls must be dialable)."""

    id: int
    name: str
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False


@dataclass(frozen=True, slots=True)
class WatchDelivery:
    """What one ``take()`` hands the edge: whole revisions of events, or a cancellation."""

    events: tuple[kv.Event, ...] = ()
    revision: int = 0  # store revision for the response header (>= the last event's revision)
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


class WatchSubscription(Protocol):
    """One watcher registered with the backend (see the module docstring)."""

    @property
    def synced_revision(self) -> int | None: ...

    def take(self) -> WatchDelivery | None: ...

    def cancel(self) -> None: ...


class EtcdBackend(Protocol):
    """Everything the etcd v3 services need from a member. All errors are ``EtcdError`` subclasses."""

    @property
    def cluster_id(self) -> int: ...  # a plain attribute satisfies these read-only members

    @property
    def member_id(self) -> int: ...

    def raft_term(self) -> int: ...

    def has_leader(self) -> bool: ...

    def current_revision(self) -> int: ...

    # KV
    async def range(self, req: kv.RangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.RangeResponse: ...

    async def put(self, req: kv.PutRequest, *, auth: AuthInfo = NO_AUTH) -> kv.PutResponse: ...

    async def delete_range(self, req: kv.DeleteRangeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.DeleteRangeResponse: ...

    async def txn(self, req: kv.TxnRequest, *, auth: AuthInfo = NO_AUTH) -> kv.TxnResponse: ...

    async def compact(self, req: kv.CompactionRequest, *, auth: AuthInfo = NO_AUTH) -> kv.CompactionResponse: ...

    # Lease
    async def lease_grant(self, req: kv.LeaseGrantRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseGrantResponse: ...

    async def lease_revoke(self, req: kv.LeaseRevokeRequest, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseRevokeResponse: ...

    async def lease_keep_alive(self, lease_id: int, *,
                               auth: AuthInfo = NO_AUTH) -> int: ...  # remaining TTL; LeaseNotFound

    async def lease_time_to_live(self, req: kv.LeaseTimeToLiveRequest, *,
                                 auth: AuthInfo = NO_AUTH) -> kv.LeaseTimeToLiveResponse: ...

    async def lease_leases(self, *, auth: AuthInfo = NO_AUTH) -> kv.LeaseLeasesResponse: ...

    # Watch (synchronous: registration must not interleave with an apply)
    def watch_create(self, req: kv.WatchCreateRequest, notify: Callable[[], None], *,
                     auth: AuthInfo = NO_AUTH) -> WatchSubscription: ...

    # Cluster
    async def member_list(self, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]: ...

    async def member_add(self, peer_urls: list[str], is_learner: bool, *,
                         auth: AuthInfo = NO_AUTH) -> tuple[MemberInfo, list[MemberInfo]]: ...

    async def member_remove(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]: ...

    async def member_update(self, member_id: int, peer_urls: list[str], *,
                            auth: AuthInfo = NO_AUTH) -> list[MemberInfo]: ...

    async def member_promote(self, member_id: int, *, auth: AuthInfo = NO_AUTH) -> list[MemberInfo]: ...

    # Maintenance
    async def status(self, *, auth: AuthInfo = NO_AUTH) -> StatusInfo: ...

    async def alarm(self, action: kv.AlarmAction, member_id: int, alarm: kv.AlarmType, *,
                    auth: AuthInfo = NO_AUTH) -> list[kv.AlarmMember]: ...

    async def hash_kv(self, revision: int, *, auth: AuthInfo = NO_AUTH) -> kv.HashKVResponse: ...

    def snapshot(self, *, auth: AuthInfo = NO_AUTH) -> AsyncIterator[bytes]: ...

    async def move_leader(self, target_id: int, *, auth: AuthInfo = NO_AUTH) -> None: ...

    async def defragment(self, *, auth: AuthInfo = NO_AUTH) -> None: ...

    # Auth (the Auth service)
    def auth_enabled(self) -> bool: ...

    async def authenticate(self, name: str, password: str, *, auth: AuthInfo = NO_AUTH) -> tuple[str, int]: ...

    async def auth_enable(self, *, auth: AuthInfo = NO_AUTH) -> int: ...  # these return the header revision

    async def auth_disable(self, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def auth_status(self, *, auth: AuthInfo = NO_AUTH) -> tuple[bool, int, int]: ...  # enabled, auth rev

    async def user_add(self, name: str, password: str, no_password: bool, hashed_password: str = "", *,
                       auth: AuthInfo = NO_AUTH) -> int: ...

    async def user_get(self, name: str, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]: ...

    async def user_list(self, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]: ...

    async def user_delete(self, name: str, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def user_change_password(self, name: str, password: str, hashed_password: str = "", *,
                                   auth: AuthInfo = NO_AUTH) -> int: ...

    async def user_grant_role(self, user: str, role: str, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def user_revoke_role(self, name: str, role: str, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def role_add(self, name: str, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def role_get(self, role: str, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[kvauth.Permission, ...], int]: ...

    async def role_list(self, *, auth: AuthInfo = NO_AUTH) -> tuple[tuple[str, ...], int]: ...

    async def role_delete(self, role: str, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def role_grant_permission(self, name: str, perm: kvauth.Permission, *, auth: AuthInfo = NO_AUTH) -> int: ...

    async def role_revoke_permission(self, role: str, key: bytes, range_end: bytes, *,
                                     auth: AuthInfo = NO_AUTH) -> int: ...
