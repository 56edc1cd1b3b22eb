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
2. it proposes ``Checked(R, command)``; the state machine applies it only if the store's
   revision is still R (else ``AuthOldRevision``: the client re-authenticates and retries, as
   with etcd's token revision).

Why that is as safe as checking at apply time: ``revision`` is bumped by every command that
changes anything a check reads (users, their roles, role permissions, ``enabled``; enabling
bumps it too, unlike etcd, so a command checked while auth was off cannot slip in after an
enable). Equal revisions therefore mean an identical auth store, so the check made at R gives
the verdict an apply-time check would give. The only other input is ``lease_keys``, the keys
attached to a lease (Put with a lease, LeaseRevoke): that is kv state, which can change between
check and apply -- etcd has the same window for lease keepalive checks, and a key attached in
between was itself written by a user allowed to write it. An unwrapped client command counts as
checked at revision 0, so clusters that never touched auth keep their hot path unwrapped, and a
command checked by no one can never apply once auth is on (the revision is >= 1 by then).
Internal commands (the leader's lease expiry, seq 0; ``Noop``) are never checked.

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
from typing import TYPE_CHECKING

from conclave.kv import errors

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


class AuthStore:
    """Users, roles, permissions, ``enabled`` and ``revision`` (see the module docstring)."""

    __slots__ = ("_cache", "_cache_revision", "enabled", "revision", "roles", "users")

    def __init__(self) -> None:
        self.enabled = False
        self.revision = 0
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {}
        self._cache: dict[str, object] = {}
        self._cache_revision = 0

    def apply(self, cmd: AuthRequest, index: int = 0) -> AuthResponse:
        """Apply one auth command (``index``: its raft index, for simple tokens)."""
        raise NotImplementedError

    # read side
    def status(self) -> AuthStatusResponse:
        raise NotImplementedError

    def user_get(self, name: str) -> UserGetResponse:
        raise NotImplementedError

    def user_list(self) -> UserListResponse:
        raise NotImplementedError

    def role_get(self, name: str) -> RoleGetResponse:
        raise NotImplementedError

    def role_list(self) -> RoleListResponse:
        raise NotImplementedError

    # permission rules
    def is_admin(self, user: str) -> bool:
        raise NotImplementedError

    def permitted(self, user: str, key: bytes, range_end: bytes, need: PermType) -> bool:
        raise NotImplementedError

    def check(self, user: str, command: Command, lease_keys: LeaseKeys) -> None:
        raise NotImplementedError

    def check_admin(self, user: str) -> None:
        raise NotImplementedError

    def check_read_range(self, user: str, key: bytes, range_end: bytes) -> None:
        raise NotImplementedError

    def check_lease_renew(self, user: str, keys: Iterable[bytes]) -> None:
        raise NotImplementedError

    def check_user_get(self, user: str, name: str) -> None:
        raise NotImplementedError

    def check_role_get(self, user: str, role: str) -> None:
        raise NotImplementedError

    # image
    def snapshot(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def restore(cls, data: bytes) -> AuthStore:
        raise NotImplementedError


_ = (bisect_right, errors)
