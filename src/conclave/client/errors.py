"""The client's exceptions: one hierarchy, each class named after the failure it reports.

Server errors arrive as (etcd error class name, etcd message) on the native protocol and as a
gRPC status message on the etcd API; both are mapped here onto the same classes, so code that
catches ``Compacted`` or ``LeaseNotFound`` works with either protocol. ``str(err)`` keeps etcd's
wording. ``OutcomeUnknown`` is raised only for writes whose fate the client cannot know (the
connection or the deadline was lost after the request left); everything else is either a definite
failure or was retried where retrying is safe.
"""

from __future__ import annotations

from conclave.kv import errors as kverr


class ClientError(Exception):
    """Root of every error the Conclave client raises."""


class Unavailable(ClientError):
    """No member could serve the request (unreachable, no leader, deadline passed before sending)."""


class NoLeader(Unavailable):
    """The member that answered knows no leader (election in progress or minority side)."""


class NotLeader(Unavailable):
    """The member that answered is not the leader and could not forward."""


class ServerTimeout(Unavailable):
    """The member gave up waiting (e.g. for a commit): a write may or may not have been applied."""


class DeadlineExceeded(Unavailable, TimeoutError):
    """The per-call timeout passed; for reads and unsent writes nothing happened."""


class OutcomeUnknown(ClientError):
    """A write left the client but its answer was lost: it may or may not have been applied."""


class ProtocolError(ClientError):
    """The server sent something this client cannot understand."""


class ServerError(ClientError):
    """A definite error from the server; ``message`` is etcd's wording, ``kind`` its class name."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class TLSError(ClientError):
    """TLS to a member failed in a way retrying cannot cure (certificate, plain-text vs TLS port)."""


class AuthError(ServerError):
    """An authentication or authorization failure (etcd's auth errors; ``message`` is etcd's text)."""


class PermissionDenied(AuthError):
    """The user's roles do not grant what the request needs."""


class AuthFailed(AuthError):
    """Wrong user name or password."""


class InvalidAuthToken(AuthError):
    """The token is unknown or expired (the client re-authenticates once by itself)."""


class AuthOldRevision(AuthError):
    """The token predates a change of users or roles (the client re-authenticates once by itself)."""


class UserEmpty(AuthError):
    """Auth is enabled and the request carried no credentials."""


class AuthNotEnabled(AuthError):
    """Authenticate while auth is disabled."""


class InvalidArgument(ServerError):
    """The request itself is wrong (empty key, too large, duplicate keys in a txn...)."""


class Compacted(ServerError):
    """The revision asked for has been compacted away."""

    def __init__(self, message: str = kverr.Compacted.message, kind: str = "Compacted",
                 compact_revision: int = 0) -> None:
        super().__init__(message, kind)
        self.compact_revision = compact_revision


class FutureRevision(ServerError):
    """The revision asked for does not exist yet."""


class LeaseNotFound(ServerError):
    """The lease does not exist (expired or revoked)."""


class KeyNotFound(ServerError):
    """A put with ignore_value/ignore_lease on a key that does not exist."""


class NoSpace(ServerError):
    """The cluster's storage quota is exhausted (NOSPACE alarm)."""


class WatchRangeEmpty(InvalidArgument):
    """A watch whose range end is not after its key."""


class LockTimeout(ClientError, TimeoutError):
    """A lock or election campaign was not won within its timeout."""


class QueueEmpty(ClientError, TimeoutError):
    """``Queue.get(timeout=...)`` found no item in time."""


class SessionExpired(ClientError):
    """The session's lease is gone: its ephemeral keys (and any lock held with it) are lost."""


class NotElected(ClientError):
    """Proclaim or resign by a candidate that is not (or no longer) the leader."""


_BY_KIND: dict[str, type[ServerError]] = {
    "Compacted": Compacted,
    "FutureRevision": FutureRevision,
    "LeaseNotFound": LeaseNotFound,
    "KeyNotFound": KeyNotFound,
    "NoSpace": NoSpace,
    "WatchRangeEmpty": WatchRangeEmpty,
    "MalformedRequest": InvalidArgument,
    "InvalidRequest": InvalidArgument,
    "PermissionDenied": PermissionDenied,
    "AuthFailed": AuthFailed,
    "InvalidAuthToken": InvalidAuthToken,
    "AuthOldRevision": AuthOldRevision,
    "UserEmpty": UserEmpty,
    "AuthNotEnabled": AuthNotEnabled,
}
# Auth errors after which the client authenticates again and retries once (as etcd's clientv3):
# the member refused the request before applying it.
REAUTH_KINDS = frozenset({"InvalidAuthToken", "AuthOldRevision", "UserEmpty"})
_UNAVAILABLE: dict[str, type[Unavailable]] = {"NoLeader": NoLeader, "NotLeader": NotLeader}

# Errors after which the request was certainly not applied: safe to send to another member.
NOT_APPLIED_KINDS = frozenset({"NoLeader", "NotLeader", "NotSupportedForLearner", "TooManyRequests"})
# Errors after which a write may or may not have been applied. "server stopped" is among them: a
# stopping member (a failed fsync, a removal) answers it also for proposals already in Raft, which
# the other members may still commit (found by `conclave chaos --workload append`, docs/chaos.md).
UNCERTAIN_KINDS = frozenset({
    "Timeout", "TimeoutDueToLeaderFail", "TimeoutDueToConnectionLost", "LeaderChanged",
    "TimeoutWaitAppliedIndex", "Unhealthy", "Stopped",
})


# A cross-shard transaction whose decision the coordinator could not learn, or that committed but whose
# answers were lost (server/xshard_coord.py): the caller must check, the client never sends it again.
CROSS_SHARD_UNKNOWN_KINDS = frozenset({"OutcomeUnknown", "ResponseLost"})


def _classes() -> dict[str, type[kverr.EtcdError]]:
    found: dict[str, type[kverr.EtcdError]] = {}
    pending: list[type[kverr.EtcdError]] = [kverr.EtcdError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


_ETCD: dict[str, type[kverr.EtcdError]] = _classes()


def kind_for_message(message: str) -> str:
    """The etcd error class name for a gRPC status message ('' when unknown)."""
    cls = kverr.error_for_message(message)
    return cls.__name__ if cls is not None else ""


def server_error(kind: str, message: str) -> ClientError:
    """The client exception for an error the server named ``kind`` with ``message``."""
    if kind in _UNAVAILABLE:
        return _UNAVAILABLE[kind](message)
    if kind in CROSS_SHARD_UNKNOWN_KINDS:  # a sharded member's coordinator could not learn the outcome
        return OutcomeUnknown(message)
    cls = _BY_KIND.get(kind)
    if cls is not None:
        return cls(message, kind)
    etcd = _ETCD.get(kind)
    code = etcd.code if etcd is not None else ""
    if kind in UNCERTAIN_KINDS:
        return ServerTimeout(message)
    if code == "UNAVAILABLE":
        return Unavailable(message)
    if code == "INVALID_ARGUMENT":
        return InvalidArgument(message, kind)
    return ServerError(message, kind)
