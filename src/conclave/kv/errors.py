"""Every error a client of the key-value service may see, with etcd's exact wording.

Theory of operation
-------------------
One hierarchy rooted at ``EtcdError``. Each subclass carries two class attributes:

* ``code``: the gRPC status code NAME (``"INVALID_ARGUMENT"``, ``"OUT_OF_RANGE"`` ...); the API
  edge turns it into a ``grpc.StatusCode`` with ``grpc.StatusCode[code]``;
* ``message``: etcd's exact status message (etcd ``api/v3rpc/rpctypes/error.go``). Clients
  (clientv3, Patroni, python clients) match on this text, so it must never be reworded.

An instance may carry an extra ``detail`` for logs; ``str(err)`` is the message, followed by the
detail when there is one. The bare root ``EtcdError(text)`` (code UNKNOWN) uses ``text`` as its
message, for errors that have no class of their own. The API edge must send ``err.message``
so the wire text stays exact.
``error_for_message`` maps a status message back to its class (for Conclave's own clients).

Rules for this module: no grpc import, no I/O; messages are facts copied from etcd, never edited.
"""

from __future__ import annotations

from typing import ClassVar


class EtcdError(Exception):
    """Root of every client-visible error of the key-value service."""

    code: ClassVar[str] = "UNKNOWN"
    message: str = "etcdserver: unknown error"

    def __init__(self, detail: str = "") -> None:
        if type(self) is EtcdError and detail:
            # The bare root carries whatever message it is given (e.g. a peer's unknown error).
            self.message = detail
            detail = ""
        self.detail = detail
        super().__init__(f"{self.message}: {detail}" if detail else self.message)


# ----------------------------------------------------------------- INVALID_ARGUMENT


class KeyNotProvided(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: key is not provided"


class KeyNotFound(EtcdError):
    """Put with ignore_value (or ignore_lease) on a key that does not exist."""

    code = "INVALID_ARGUMENT"
    message = "etcdserver: key not found"


class ValueProvided(EtcdError):
    """Put with ignore_value and a non-empty value."""

    code = "INVALID_ARGUMENT"
    message = "etcdserver: value is provided"


class LeaseProvided(EtcdError):
    """Put with ignore_lease and a non-zero lease."""

    code = "INVALID_ARGUMENT"
    message = "etcdserver: lease is provided"


class TooManyOps(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: too many operations in txn request"


class DuplicateKey(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: duplicate key given in txn request"


class InvalidSortOption(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid sort option"


class RequestTooLarge(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: request is too large"


class MemberBadURLs(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: given member URLs are invalid"


class AuthFailed(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: authentication failed, invalid user ID or password"


class UserEmpty(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: user name is empty"


class RoleEmpty(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: role name is empty"


class AuthOldRevision(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: revision of auth store is old"


class PermissionNotGiven(EtcdError):
    """RoleGrantPermission without a permission."""

    code = "INVALID_ARGUMENT"
    message = "etcdserver: permission not given"


class InvalidAuthMgmt(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid auth management"


# ----------------------------------------------------------------- OUT_OF_RANGE


class Compacted(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision has been compacted"


class FutureRevision(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision is a future revision"


class LeaseTTLTooLarge(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: too large lease TTL"


# ----------------------------------------------------------------- RESOURCE_EXHAUSTED


class NoSpace(EtcdError):
    code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: mvcc: database space exceeded"


class TooManyRequests(EtcdError):
    code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: too many requests"


# ----------------------------------------------------------------- NOT_FOUND


class LeaseNotFound(EtcdError):
    code = "NOT_FOUND"
    message = "etcdserver: requested lease not found"


class MemberNotFound(EtcdError):
    code = "NOT_FOUND"
    message = "etcdserver: member not found"


# ----------------------------------------------------------------- FAILED_PRECONDITION


class LeaseExists(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: lease already exists"


class NotLeader(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: not leader"


class NotCapable(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: not capable"


class MemberExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: member ID already exist"


class PeerURLExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: Peer URLs already exists"


class MemberNotEnoughStarted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: re-configuration failed due to not enough started members"


class MemberNotLearner(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member"


class LearnerNotReady(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member which is in sync with leader"


class TooManyLearners(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: too many learner members in cluster"


class ClusterIDMismatch(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: cluster ID mismatch"


class NotSupportedForLearner(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: rpc not supported for learner"


class BadLeaderTransferee(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: bad leader transferee"


class RootUserNotExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not exist"


class RootRoleNotExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not have root role"


class UserAlreadyExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: user name already exists"


class UserNotFound(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: user name not found"


class RoleAlreadyExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role name already exists"


class RoleNotFound(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role name not found"


class RoleNotGranted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role is not granted to the user"


class PermissionNotGranted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: permission is not granted to the role"


class AuthNotEnabled(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: authentication is not enabled"


# ----------------------------------------------------------------- UNAVAILABLE


class NoLeader(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: no leader"


class LeaderChanged(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: leader changed"


class Stopped(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: server stopped"


class Timeout(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out"


class TimeoutDueToLeaderFail(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, possibly due to previous leader failure"


class TimeoutDueToConnectionLost(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, possibly due to connection lost"


class TimeoutWaitAppliedIndex(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, waiting for the applied index took too long"


class Unhealthy(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: unhealthy cluster"


# ----------------------------------------------------------------- other codes


class InvalidAuthToken(EtcdError):
    code = "UNAUTHENTICATED"
    message = "etcdserver: invalid auth token"


class PermissionDenied(EtcdError):
    code = "PERMISSION_DENIED"
    message = "etcdserver: permission denied"


class Corrupt(EtcdError):
    code = "DATA_LOSS"
    message = "etcdserver: corrupt cluster"


class Canceled(EtcdError):
    code = "CANCELLED"
    message = "etcdserver: request canceled"


class WatchCanceled(EtcdError):
    code = "CANCELLED"
    message = "etcdserver: watch canceled"


class MalformedCommand(EtcdError):
    """A replicated command that cannot be decoded (Conclave's own; not an etcd error)."""

    code = "INTERNAL"
    message = "conclave: malformed replicated command"


# The names the auth contract (AUTH-CONTRACT.md) also uses for two of them.
ErrPermissionDenied = PermissionDenied
ErrAuthOldRevision = AuthOldRevision


def _all_subclasses(root: type[EtcdError]) -> list[type[EtcdError]]:
    found: list[type[EtcdError]] = []
    pending = list(root.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


_BY_MESSAGE: dict[str, type[EtcdError]] = {cls.message: cls for cls in _all_subclasses(EtcdError)}


def error_for_message(message: str) -> type[EtcdError] | None:
    """The error class whose etcd status message is exactly ``message`` (None if unknown)."""
    return _BY_MESSAGE.get(message)
