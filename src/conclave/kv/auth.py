"""etcd v3's auth store (users, roles, key permissions) as replicated, deterministic state.

Theory of operation
-------------------
What lives here: the users, the roles and their key permissions, the ``enabled`` flag and the
auth ``revision``; the auth commands that change them (``AuthEnableRequest`` ...
``RoleRevokePermissionRequest``, applied in log order by ``AuthStore.apply`` on every member);
the read side (``user_get``, ``role_list``, ``status`` ...) and the permission rules
(``permitted``, ``check``, ``check_admin`` ...). No I/O, no clocks, no randomness: the password
is hashed (bcrypt) by the proposing server, the log and the image only ever hold the hash, and
the random part of a simple token is drawn by the proposer too.

Who checks what, where
~~~~~~~~~~~~~~~~~~~~~~
etcd checks a request's permissions while applying it, against the auth store at that log
position. Conclave splits the same check in two halves:

1. before proposing, the server resolves the caller (token or certificate CN) to a user, reads
   the store's ``revision`` R and runs ``check(user, command, lease_keys)`` against the store as
   it is at R (reads are served right after this check and never enter the log);
2. it proposes ``Checked(R, command, user)``; the state machine applies it only if the
   store's revision is still R (else ``AuthOldRevision``: the client re-authenticates and
   retries, as with etcd's token revision).

Why that is as safe as checking at apply time: ``revision`` is bumped by every command that
changes anything a check reads (users, their roles, role permissions, ``enabled``; enabling
bumps it too, unlike etcd, so a command checked while auth was off cannot slip in after an
enable). Equal revisions therefore mean an identical auth store, so the check made at R gives
the verdict an apply-time check would give, on any member, however far behind it is (the
state at revision R is the same on every member: all apply the same log). The only other input
is ``lease_keys``, the keys attached to a lease (Put with a lease, LeaseRevoke): that is kv
state, which can change between check and apply (a key attached to the lease meanwhile would be
deleted by a revoke checked without it). So the machine repeats that part at apply time
(``check_lease_keys``, against the replicated lease table) when the Checked names its user; a
Checked without a user skips it. An unwrapped client command counts as checked at revision 0,
so clusters that never touched auth keep their hot path unwrapped, and a command checked by no
one can never apply once auth is on (the revision is >= 1 by then). Internal commands (the
leader's lease expiry, seq 0; ``Noop``) are never checked.

Server recipe: once ``revision > 0``, wrap every proposed command, the server's own too (the
leader's NOSPACE alarm: ``Checked(revision, cmd)``, retried on AuthOldRevision). Authenticate:
check the password (bcrypt) against the user's hash at revision R, propose
``Checked(R, AuthenticateRequest(name, random 16 letters))``; AuthOldRevision means the
password may have changed meanwhile: check again and retry (etcd's Authenticate loop).

Revision numbering: 0 for a store that never changed, +1 for every successful change (a no-op
such as granting a role the user already has, or enabling an enabled store, changes nothing).
etcd starts at 1 and does not bump on enable; tokens and ``AuthStatus`` carry our number.

Permissions
~~~~~~~~~~~
A ``Permission`` grants READ, WRITE or READWRITE on ``[key, range_end)``: ``range_end`` b"" is
the single key, b"\\x00" everything from ``key`` on. A user's permission for a request is the
union of its roles' permissions, merged into disjoint intervals (a range spanning two granted
ranges that touch is permitted, as etcd's interval merge does), one list for READ and one for
WRITE (READWRITE lands in both), cached per user until the revision changes. A user with the
``root`` role bypasses every key check and is the only admin.

Responses
~~~~~~~~~
Auth commands return: ``AuthenticateResponse`` (Authenticate), ``AuthChangeResponse`` (every
other auth command: the store's revision after it). The read side returns
``AuthStatusResponse``, ``UserGetResponse``, ``UserListResponse``, ``RoleGetResponse``,
``RoleListResponse``. Headers (kv revision, member, term) are the server's to add.

Rules for this module: no I/O, no clocks, no randomness; errors are ``conclave.kv.errors``
classes with etcd's text; ``apply`` either changes the store and bumps the revision, or raises
and changes nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import msgpack

from conclave.kv import errors
from conclave.kv.types import (
    AlarmAction,
    AlarmRequest,
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    TxnRequest,
)

if TYPE_CHECKING:
    from conclave.kv.command import Command

ROOT_USER = "root"
ROOT_ROLE = "root"
FROM_KEY = b"\x00"
"""``range_end`` meaning "every key from ``key`` on"."""


class PermType(IntEnum):
    """authpb.Permission.Type."""

    READ = 0
    WRITE = 1
    READWRITE = 2


@dataclass(frozen=True, slots=True)
class Permission:
    perm_type: PermType = PermType.READ
    key: bytes = b""
    range_end: bytes = b""  # b"" = the single key, b"\x00" = from key, else [key, range_end)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: bytes = b""
    roles: tuple[str, ...] = ()  # sorted, as etcd keeps them
    no_password: bool = False


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    permissions: tuple[Permission, ...] = ()  # sorted by (key, range_end)


# ---------------------------------------------------------------------- requests (replicated)


@dataclass(frozen=True, slots=True)
class AuthEnableRequest:
    pass


@dataclass(frozen=True, slots=True)
class AuthDisableRequest:
    pass


@dataclass(frozen=True, slots=True)
class AuthenticateRequest:
    """A password (checked by the proposer) turned into a token known to every member.

    ``token`` is the proposer's random part of a simple token (etcd: 16 letters); the applied
    token is ``f"{token}.{raft index}"``, etcd's simple-token format. ``token == ""`` (JWT: the
    server signs after apply) gives an empty token in the response.
    """

    name: str = ""
    token: str = ""


@dataclass(frozen=True, slots=True)
class UserAddRequest:
    name: str = ""
    password_hash: bytes = b""  # bcrypt hash; b"" with no_password
    no_password: bool = False


@dataclass(frozen=True, slots=True)
class UserDeleteRequest:
    name: str = ""


@dataclass(frozen=True, slots=True)
class UserChangePasswordRequest:
    name: str = ""
    password_hash: bytes = b""


@dataclass(frozen=True, slots=True)
class UserGrantRoleRequest:
    user: str = ""
    role: str = ""


@dataclass(frozen=True, slots=True)
class UserRevokeRoleRequest:
    name: str = ""
    role: str = ""


@dataclass(frozen=True, slots=True)
class RoleAddRequest:
    name: str = ""


@dataclass(frozen=True, slots=True)
class RoleDeleteRequest:
    role: str = ""


@dataclass(frozen=True, slots=True)
class RoleGrantPermissionRequest:
    name: str = ""
    perm: Permission | None = None  # None (proto field unset) -> PermissionNotGiven


@dataclass(frozen=True, slots=True)
class RoleRevokePermissionRequest:
    role: str = ""
    key: bytes = b""
    range_end: bytes = b""


AuthRequest = (
    AuthEnableRequest
    | AuthDisableRequest
    | AuthenticateRequest
    | UserAddRequest
    | UserDeleteRequest
    | UserChangePasswordRequest
    | UserGrantRoleRequest
    | UserRevokeRoleRequest
    | RoleAddRequest
    | RoleDeleteRequest
    | RoleGrantPermissionRequest
    | RoleRevokePermissionRequest
)
AUTH_REQUEST_TYPES: tuple[type, ...] = (
    AuthEnableRequest,
    AuthDisableRequest,
    AuthenticateRequest,
    UserAddRequest,
    UserDeleteRequest,
    UserChangePasswordRequest,
    UserGrantRoleRequest,
    UserRevokeRoleRequest,
    RoleAddRequest,
    RoleDeleteRequest,
    RoleGrantPermissionRequest,
    RoleRevokePermissionRequest,
)


# ---------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class AuthChangeResponse:
    """Every auth command but Authenticate: the store's revision after it."""

    auth_revision: int = 0


@dataclass(frozen=True, slots=True)
class AuthenticateResponse:
    token: str = ""
    name: str = ""
    auth_revision: int = 0  # the revision the token carries (JWT claim ``revision``)


@dataclass(frozen=True, slots=True)
class AuthStatusResponse:
    enabled: bool = False
    auth_revision: int = 0


@dataclass(frozen=True, slots=True)
class UserGetResponse:
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserListResponse:
    users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoleGetResponse:
    perm: tuple[Permission, ...] = ()


@dataclass(frozen=True, slots=True)
class RoleListResponse:
    roles: tuple[str, ...] = ()


AuthResponse = AuthChangeResponse | AuthenticateResponse


# ---------------------------------------------------------------------- the store


LeaseKeys = Callable[[int], Iterable[bytes]]
"""The keys attached to a lease id (may raise LeaseNotFound: then there are none)."""

AUTH_IMAGE_FORMAT = 1

_Intervals = tuple[list[bytes], list[bytes | None]]
"""Disjoint, non-touching ``[start, end)`` intervals sorted by start; end None = no end."""


def _interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """The key interval a (key, range_end) pair names, etcd's conventions."""
    if range_end == FROM_KEY:
        return key, None
    if range_end == b"" or range_end <= key:
        # A single key; an inverted range (which selects nothing) is held to its start key.
        return key, key + b"\x00"
    return key, range_end


def _merge(intervals: Iterable[tuple[bytes, bytes | None]]) -> _Intervals:
    starts: list[bytes] = []
    ends: list[bytes | None] = []
    for start, end in sorted(intervals, key=lambda iv: iv[0]):
        if starts:
            last = ends[-1]
            if last is None or start <= last:  # overlaps or touches the previous one
                if last is not None and (end is None or end > last):
                    ends[-1] = end
                continue
        starts.append(start)
        ends.append(end)
    return starts, ends


def _covered(ivs: _Intervals, start: bytes, end: bytes | None) -> bool:
    starts, ends = ivs
    i = bisect_right(starts, start) - 1
    if i < 0:
        return False
    last = ends[i]
    return last is None or (end is not None and end <= last)


class AuthStore:
    """Users, roles, permissions, ``enabled`` and ``revision`` (see the module docstring)."""

    __slots__ = ("_cache", "_cache_revision", "enabled", "revision", "roles", "users")

    def __init__(self) -> None:
        self.enabled = False
        self.revision = 0
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {}
        # user -> (READ intervals, WRITE intervals), valid while revision == _cache_revision
        self._cache: dict[str, tuple[_Intervals, _Intervals]] = {}
        self._cache_revision = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthStore):
            return NotImplemented
        return (self.enabled, self.revision, self.users, self.roles) == (
            other.enabled, other.revision, other.users, other.roles)

    __hash__ = None  # type: ignore[assignment]  # mutable

    # ------------------------------------------------------------------ apply

    def apply(self, cmd: AuthRequest, index: int = 0) -> AuthResponse:
        """Apply one auth command (``index``: its raft index, for simple tokens).

        Raises the EtcdError etcd gives and leaves the store unchanged, or changes it and bumps
        ``revision`` (a change that changes nothing, e.g. a repeated grant, bumps nothing).
        """
        if isinstance(cmd, AuthenticateRequest):
            return self._authenticate(cmd, index)
        handler = _HANDLERS.get(type(cmd))
        if handler is None:
            raise TypeError(f"not an auth command: {type(cmd).__name__}")
        if handler(self, cmd):
            self.revision += 1
        return AuthChangeResponse(self.revision)

    def _authenticate(self, cmd: AuthenticateRequest, index: int) -> AuthenticateResponse:
        if not self.enabled:
            raise errors.AuthNotEnabled()
        user = self.users.get(cmd.name)
        if user is None or user.no_password:
            raise errors.AuthFailed()
        token = f"{cmd.token}.{index}" if cmd.token else ""
        return AuthenticateResponse(token, cmd.name, self.revision)

    def _enable(self, _cmd: AuthEnableRequest) -> bool:
        if self.enabled:
            return False
        root = self.users.get(ROOT_USER)
        if root is None:
            raise errors.RootUserNotExist()
        if ROOT_ROLE not in root.roles:
            raise errors.RootRoleNotExist()
        self.enabled = True
        return True

    def _disable(self, _cmd: AuthDisableRequest) -> bool:
        if not self.enabled:
            return False
        self.enabled = False
        return True

    def _user_add(self, cmd: UserAddRequest) -> bool:
        if not cmd.name:
            raise errors.UserEmpty()
        if cmd.name in self.users:
            raise errors.UserAlreadyExist()
        password = b"" if cmd.no_password else cmd.password_hash
        self.users[cmd.name] = User(cmd.name, password, (), cmd.no_password)
        return True

    def _user_delete(self, cmd: UserDeleteRequest) -> bool:
        if self.enabled and cmd.name == ROOT_USER:
            raise errors.InvalidAuthMgmt()
        if self.users.pop(cmd.name, None) is None:
            raise errors.UserNotFound()
        return True

    def _user_change_password(self, cmd: UserChangePasswordRequest) -> bool:
        user = self._user(cmd.name)
        password = b"" if user.no_password else cmd.password_hash
        self.users[cmd.name] = User(user.name, password, user.roles, user.no_password)
        return True

    def _user_grant_role(self, cmd: UserGrantRoleRequest) -> bool:
        user = self._user(cmd.user)
        # etcd lets the root role be granted before it exists (etcdctl's enable loop adds it).
        if cmd.role != ROOT_ROLE and cmd.role not in self.roles:
            raise errors.RoleNotFound()
        if cmd.role in user.roles:
            return False
        roles = tuple(sorted((*user.roles, cmd.role)))
        self.users[cmd.user] = User(user.name, user.password_hash, roles, user.no_password)
        return True

    def _user_revoke_role(self, cmd: UserRevokeRoleRequest) -> bool:
        if self.enabled and cmd.name == ROOT_USER and cmd.role == ROOT_ROLE:
            raise errors.InvalidAuthMgmt()
        user = self._user(cmd.name)
        if cmd.role not in user.roles:
            raise errors.RoleNotGranted()
        roles = tuple(r for r in user.roles if r != cmd.role)
        self.users[cmd.name] = User(user.name, user.password_hash, roles, user.no_password)
        return True

    def _role_add(self, cmd: RoleAddRequest) -> bool:
        if not cmd.name:
            raise errors.RoleEmpty()
        if cmd.name in self.roles:
            raise errors.RoleAlreadyExist()
        self.roles[cmd.name] = Role(cmd.name)
        return True

    def _role_delete(self, cmd: RoleDeleteRequest) -> bool:
        if self.enabled and cmd.role == ROOT_ROLE:
            raise errors.InvalidAuthMgmt()
        if self.roles.pop(cmd.role, None) is None:
            raise errors.RoleNotFound()
        for name, user in self.users.items():
            if cmd.role in user.roles:
                roles = tuple(r for r in user.roles if r != cmd.role)
                self.users[name] = User(user.name, user.password_hash, roles, user.no_password)
        return True

    def _role_grant_permission(self, cmd: RoleGrantPermissionRequest) -> bool:
        perm = cmd.perm
        if perm is None:
            raise errors.PermissionNotGiven()
        check_permission_range(perm.key, perm.range_end)
        role = self._role(cmd.name)
        kept = [p for p in role.permissions if (p.key, p.range_end) != (perm.key, perm.range_end)]
        kept.append(Permission(PermType(perm.perm_type), perm.key, perm.range_end))
        kept.sort(key=lambda p: (p.key, p.range_end))
        self.roles[cmd.name] = Role(role.name, tuple(kept))
        return True

    def _role_revoke_permission(self, cmd: RoleRevokePermissionRequest) -> bool:
        role = self._role(cmd.role)
        kept = tuple(p for p in role.permissions if (p.key, p.range_end) != (cmd.key, cmd.range_end))
        if len(kept) == len(role.permissions):
            raise errors.PermissionNotGranted()
        self.roles[cmd.role] = Role(role.name, kept)
        return True

    def _user(self, name: str) -> User:
        user = self.users.get(name)
        if user is None:
            raise errors.UserNotFound()
        return user

    def _role(self, name: str) -> Role:
        role = self.roles.get(name)
        if role is None:
            raise errors.RoleNotFound()
        return role

    # ------------------------------------------------------------------ read side

    def status(self) -> AuthStatusResponse:
        return AuthStatusResponse(self.enabled, self.revision)

    def user_get(self, name: str) -> UserGetResponse:
        """The user's roles, sorted (etcd keeps them sorted); raises UserNotFound."""
        return UserGetResponse(self._user(name).roles)

    def user_list(self) -> UserListResponse:
        """Every user name in byte order (etcd's bucket order)."""
        return UserListResponse(tuple(sorted(self.users, key=str.encode)))

    def role_get(self, name: str) -> RoleGetResponse:
        """The role's permissions sorted by key; the root role shows READWRITE on every key."""
        role = self._role(name)
        if name == ROOT_ROLE:
            return RoleGetResponse((ROOT_PERMISSION,))
        return RoleGetResponse(role.permissions)

    def role_list(self) -> RoleListResponse:
        return RoleListResponse(tuple(sorted(self.roles, key=str.encode)))

    # ------------------------------------------------------------------ permission rules

    def is_admin(self, user: str) -> bool:
        """``user`` exists and has the root role (auth on or off)."""
        u = self.users.get(user)
        return u is not None and ROOT_ROLE in u.roles

    def permitted(self, user: str, key: bytes, range_end: bytes, need: PermType) -> bool:
        """The union of ``user``'s roles' permissions covers the range for ``need``.

        READWRITE needs both. Root bypasses; an unknown user has no permission. This is the
        bare rule: it does not look at ``enabled`` (``check`` does).
        """
        u = self.users.get(user)
        if u is None:
            return False
        if ROOT_ROLE in u.roles:
            return True
        read, write = self._intervals(u)
        start, end = _interval(key, range_end)
        if need in (PermType.READ, PermType.READWRITE) and not _covered(read, start, end):
            return False
        return not (need in (PermType.WRITE, PermType.READWRITE) and not _covered(write, start, end))

    def _intervals(self, u: User) -> tuple[_Intervals, _Intervals]:
        if self._cache_revision != self.revision:
            self._cache.clear()
            self._cache_revision = self.revision
        cached = self._cache.get(u.name)
        if cached is None:
            reads: list[tuple[bytes, bytes | None]] = []
            writes: list[tuple[bytes, bytes | None]] = []
            for name in u.roles:
                role = self.roles.get(name)
                for p in role.permissions if role is not None else ():
                    iv = _interval(p.key, p.range_end)
                    if p.perm_type in (PermType.READ, PermType.READWRITE):
                        reads.append(iv)
                    if p.perm_type in (PermType.WRITE, PermType.READWRITE):
                        writes.append(iv)
            cached = (_merge(reads), _merge(writes))
            self._cache[u.name] = cached
        return cached

    def _need(self, user: str, key: bytes, range_end: bytes, need: PermType) -> None:
        if not self.permitted(user, key, range_end, need):
            raise errors.PermissionDenied()

    def _known(self, user: str) -> None:
        """The checks every request of an authenticated user starts with."""
        if not user:
            raise errors.UserEmpty()

    def check(self, user: str, command: Command, lease_keys: LeaseKeys) -> None:
        """Raise the error etcd gives if ``user`` may not run ``command`` (WAVE2 §2.3, 2026-03 rules).

        Nothing is checked while auth is off. ``user`` "" -> UserEmpty; a user that does not
        exist has no permission. Range READ; Put WRITE (+READ with prev_kv; with a lease,
        WRITE on every key already attached to it unless admin); DeleteRange WRITE (+READ with
        prev_kv); Txn READ on every compare's range, then every op of success AND failure,
        nested txns recursively; Compaction and Alarm activate/deactivate admin; LeaseGrant and
        Alarm get any user; LeaseRevoke WRITE on every attached key unless admin; auth
        management admin, Authenticate nobody (the password is the check).
        """
        if not self.enabled:
            return
        if isinstance(command, AuthenticateRequest):
            return
        self._known(user)
        _check_command(self, user, command, lease_keys)

    def check_lease_keys(self, user: str, command: Command, lease_keys: LeaseKeys) -> None:
        """The lease part of ``check`` alone: WRITE on every key attached to a lease the command
        attaches to (Put, also inside txns) or revokes, unless admin. The machine repeats it at
        apply time, where the attached keys are the replicated ones at that log position."""
        if not self.enabled or self.is_admin(user):
            return
        for lease in _leases_of(command):
            self._lease_keys_writable(user, _keys_of(lease_keys, lease))

    def check_admin(self, user: str) -> None:
        """etcd's IsAdminPermitted: UserEmpty, UserNotFound or PermissionDenied unless root."""
        if not self.enabled:
            return
        self._known(user)
        u = self.users.get(user)
        if u is None:
            raise errors.UserNotFound()
        if ROOT_ROLE not in u.roles:
            raise errors.PermissionDenied()

    def check_read_range(self, user: str, key: bytes, range_end: bytes) -> None:
        """READ on a range (Range, Watch create, LeaseTimeToLive's keys)."""
        if not self.enabled:
            return
        self._known(user)
        self._need(user, key, range_end, PermType.READ)

    def check_lease_renew(self, user: str, keys: Iterable[bytes]) -> None:
        """LeaseKeepAlive (CVE-2026-33413): admin, or WRITE on every key attached to the lease."""
        if not self.enabled:
            return
        self._known(user)
        self._lease_keys_writable(user, keys)

    def _lease_keys_writable(self, user: str, keys: Iterable[bytes]) -> None:
        if self.is_admin(user):
            return
        for key in keys:
            self._need(user, key, b"", PermType.WRITE)

    def check_user_get(self, user: str, name: str) -> None:
        """UserGet: admin, or a user asking about itself."""
        if not self.enabled:
            return
        self._known(user)
        if user != name:
            self.check_admin(user)

    def check_role_get(self, user: str, role: str) -> None:
        """RoleGet: admin, or a user that has the role."""
        if not self.enabled:
            return
        self._known(user)
        u = self.users.get(user)
        if u is None or role not in u.roles:
            self.check_admin(user)

    # ------------------------------------------------------------------ image

    def snapshot(self) -> bytes:
        """The store as deterministic msgpack bytes (part of the machine image)."""
        users = [[u.name, u.password_hash, list(u.roles), u.no_password]
                 for _, u in sorted(self.users.items())]
        roles = [[r.name, [[int(p.perm_type), p.key, p.range_end] for p in r.permissions]]
                 for _, r in sorted(self.roles.items())]
        return bytes(msgpack.packb([AUTH_IMAGE_FORMAT, self.enabled, self.revision, users, roles],
                                   use_bin_type=True))

    @classmethod
    def restore(cls, data: bytes) -> AuthStore:
        """The store ``snapshot()`` gave ``data``; MalformedCommand on anything else."""
        try:
            body = msgpack.unpackb(data, raw=False, use_list=True)
            fmt, enabled, revision, users, roles = body
            if fmt != AUTH_IMAGE_FORMAT:
                raise ValueError(f"unknown auth image format {fmt!r}")
            if not isinstance(enabled, bool) or type(revision) is not int or revision < 0:
                raise ValueError("bad enabled flag or revision")
            store = cls()
            store.enabled, store.revision = enabled, revision
            for name, password_hash, user_roles, no_password in users:
                if not isinstance(name, str) or not isinstance(password_hash, bytes):
                    raise ValueError("bad user")
                if not all(isinstance(r, str) for r in user_roles) or not isinstance(no_password, bool):
                    raise ValueError("bad user")
                store.users[name] = User(name, password_hash, tuple(sorted(user_roles)), no_password)
            for name, perms in roles:
                if not isinstance(name, str):
                    raise ValueError("bad role")
                parsed = []
                for perm_type, key, range_end in perms:
                    if type(perm_type) is not int or not isinstance(key, bytes) or not isinstance(range_end, bytes):
                        raise ValueError("bad permission")
                    parsed.append(Permission(PermType(perm_type), key, range_end))
                store.roles[name] = Role(name, tuple(sorted(parsed, key=lambda p: (p.key, p.range_end))))
        except Exception as exc:  # msgpack and unpacking raise several unrelated types
            raise errors.MalformedCommand(f"bad auth store image: {exc!r}") from exc
        store._cache_revision = store.revision
        return store


ROOT_PERMISSION = Permission(PermType.READWRITE, b"", FROM_KEY)
"""What RoleGet shows for the root role (etcd's rootPerm)."""


def check_permission_range(key: bytes, range_end: bytes) -> None:
    """A granted range must select something: ``[key, range_end)`` with key < range_end.

    Single key (b"") and from-key (b"\x00") are always valid; an inverted or empty range is
    InvalidAuthMgmt (WAVE2 §2.4: "bad range").
    """
    if range_end not in (b"", FROM_KEY) and range_end <= key:
        raise errors.InvalidAuthMgmt()


_HANDLERS: dict[type, Callable[[AuthStore, Any], bool]] = {
    AuthEnableRequest: AuthStore._enable,
    AuthDisableRequest: AuthStore._disable,
    UserAddRequest: AuthStore._user_add,
    UserDeleteRequest: AuthStore._user_delete,
    UserChangePasswordRequest: AuthStore._user_change_password,
    UserGrantRoleRequest: AuthStore._user_grant_role,
    UserRevokeRoleRequest: AuthStore._user_revoke_role,
    RoleAddRequest: AuthStore._role_add,
    RoleDeleteRequest: AuthStore._role_delete,
    RoleGrantPermissionRequest: AuthStore._role_grant_permission,
    RoleRevokePermissionRequest: AuthStore._role_revoke_permission,
}


def _check_command(store: AuthStore, user: str, cmd: object, lease_keys: LeaseKeys) -> None:
    if isinstance(cmd, RangeRequest):
        store._need(user, cmd.key, cmd.range_end, PermType.READ)
    elif isinstance(cmd, PutRequest):
        _check_put(store, user, cmd, lease_keys)
    elif isinstance(cmd, DeleteRangeRequest):
        _check_delete(store, user, cmd)
    elif isinstance(cmd, TxnRequest):
        _check_txn(store, user, cmd, lease_keys)
    elif isinstance(cmd, LeaseRevokeRequest):
        store._lease_keys_writable(user, _keys_of(lease_keys, cmd.id))
    elif isinstance(cmd, LeaseGrantRequest):
        return
    elif isinstance(cmd, AlarmRequest):
        if cmd.action != AlarmAction.GET:
            store.check_admin(user)
    elif isinstance(cmd, (CompactionRequest, *AUTH_REQUEST_TYPES)):
        store.check_admin(user)
    else:
        raise TypeError(f"not a client command: {type(cmd).__name__}")


def _keys_of(lease_keys: LeaseKeys, lease_id: int) -> Iterable[bytes]:
    try:
        return tuple(lease_keys(lease_id))
    except errors.LeaseNotFound:
        return ()  # the command fails at apply with "requested lease not found"


def _leases_of(cmd: object) -> list[int]:
    if isinstance(cmd, PutRequest):
        return [cmd.lease] if cmd.lease else []
    if isinstance(cmd, LeaseRevokeRequest):
        return [cmd.id]
    if not isinstance(cmd, TxnRequest):
        return []
    found: list[int] = []
    pending = [cmd]
    while pending:
        t = pending.pop()
        for op in (*t.success, *t.failure):
            if op.request_put is not None and op.request_put.lease:
                found.append(op.request_put.lease)
            elif op.request_txn is not None:
                pending.append(op.request_txn)
    return found


def _check_put(store: AuthStore, user: str, put: PutRequest, lease_keys: LeaseKeys) -> None:
    store._need(user, put.key, b"", PermType.WRITE)
    if put.lease:
        # The lease's keys are revoked with it: attaching needs the right to delete them.
        store._lease_keys_writable(user, _keys_of(lease_keys, put.lease))
    if put.prev_kv:
        store._need(user, put.key, b"", PermType.READ)


def _check_delete(store: AuthStore, user: str, req: DeleteRangeRequest) -> None:
    store._need(user, req.key, req.range_end, PermType.WRITE)
    if req.prev_kv:
        store._need(user, req.key, req.range_end, PermType.READ)


def _check_txn(store: AuthStore, user: str, txn: TxnRequest, lease_keys: LeaseKeys) -> None:
    # Iterative over nested txns (CVE-2026-33343: every op of every branch, at every depth).
    pending = [txn]
    while pending:
        t = pending.pop()
        for c in t.compare:
            store._need(user, c.key, c.range_end, PermType.READ)
        for op in (*t.success, *t.failure):
            if op.request_range is not None:
                store._need(user, op.request_range.key, op.request_range.range_end, PermType.READ)
            elif op.request_put is not None:
                _check_put(store, user, op.request_put, lease_keys)
            elif op.request_delete_range is not None:
                _check_delete(store, user, op.request_delete_range)
            elif op.request_txn is not None:
                pending.append(op.request_txn)
