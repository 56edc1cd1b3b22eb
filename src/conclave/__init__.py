"""Conclave: a fault-tolerant coordination service (Raft + MVCC key-value store, etcd v3 API).

The client's public names are importable from here too (``from conclave import Client, value,
put_op``): they are loaded on first use, so importing the server or the pure cores does not
load the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conclave.version import __version__

if TYPE_CHECKING:
    from conclave.client import (
        AsyncClient,
        AuthError,
        AuthFailed,
        AuthNotEnabled,
        AuthOldRevision,
        Claim,
        Client,
        ClientError,
        Compacted,
        CoreClient,
        DeadlineExceeded,
        Election,
        Event,
        EventType,
        FutureRevision,
        InvalidArgument,
        InvalidAuthToken,
        KeyNotFound,
        KeyValue,
        LamportClock,
        Lease,
        LeaseInfo,
        LeaseNotFound,
        Lock,
        LockTimeout,
        Member,
        NoLeader,
        NoSpace,
        NotElected,
        NotLeader,
        OutcomeUnknown,
        PermissionDenied,
        ProtocolError,
        QueueEmpty,
        ServerError,
        ServerTimeout,
        Session,
        SessionExpired,
        Status,
        Timestamp,
        TLSError,
        Txn,
        Unavailable,
        UserEmpty,
        Watch,
        create_revision,
        delete_op,
        get_op,
        lease,
        mod_revision,
        put_op,
        txn_op,
        value,
        version,
    )

# The names `conclave.client` exports (its __all__; a test checks the two lists agree), and the version.
__all__ = [
    "AsyncClient", "AuthError", "AuthFailed", "AuthNotEnabled", "AuthOldRevision", "Claim", "Client",
    "ClientError", "Compacted", "CoreClient", "DeadlineExceeded", "Election", "Event", "EventType",
    "FutureRevision", "InvalidArgument", "InvalidAuthToken", "KeyNotFound", "KeyValue", "LamportClock", "Lease",
    "LeaseInfo", "LeaseNotFound", "Lock", "LockTimeout", "Member", "NoLeader", "NoSpace", "NotElected",
    "NotLeader", "OutcomeUnknown", "PermissionDenied", "ProtocolError", "QueueEmpty", "ServerError",
    "ServerTimeout", "Session", "SessionExpired", "Status", "TLSError", "Timestamp", "Txn", "Unavailable",
    "UserEmpty", "Watch", "__version__", "create_revision", "delete_op", "get_op", "lease", "mod_revision",
    "put_op", "txn_op", "value", "version",
]  # fmt: skip
CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562), so that importing the server or the pure cores does not load the client.
    if name in CLIENT_NAMES:
        import conclave.client

        return getattr(conclave.client, name)
    raise AttributeError(f"module 'conclave' has no attribute {name!r}")
