"""The Conclave Python client: ``Client`` (sync) and ``AsyncClient`` (asyncio), both protocols.

``Client(endpoints=["127.0.0.1:2381", ...])`` speaks the native protocol; ``protocol="grpc"``
speaks the etcd v3 API. Recipes (lock, election, counter, queue, broadcast, barriers,
claim_unique) are reached from the client; ``LamportClock`` is standalone. ``AsyncClient``
(in ``recipes``) is ``CoreClient`` (in ``aio``, the primitives) plus the recipe factories.
"""

from conclave.client.aio import CoreClient, Lease, Session, Txn, Watch
from conclave.client.clock import LamportClock, Timestamp
from conclave.client.errors import (
    AuthError,
    AuthFailed,
    AuthNotEnabled,
    AuthOldRevision,
    ClientError,
    Compacted,
    DeadlineExceeded,
    FutureRevision,
    InvalidArgument,
    InvalidAuthToken,
    KeyNotFound,
    LeaseNotFound,
    LockTimeout,
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
    SessionExpired,
    TLSError,
    Unavailable,
    UserEmpty,
)
from conclave.client.recipes import AsyncClient, Election, Lock
from conclave.client.sync import Client
from conclave.client.types import (
    Claim,
    Event,
    EventType,
    KeyValue,
    LeaseInfo,
    Member,
    Status,
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

__all__ = [
    "AsyncClient", "AuthError", "AuthFailed", "AuthNotEnabled", "AuthOldRevision", "Claim", "Client",
    "ClientError", "Compacted", "CoreClient", "DeadlineExceeded", "Election", "Event", "EventType",
    "FutureRevision", "InvalidArgument", "InvalidAuthToken", "KeyNotFound", "KeyValue", "LamportClock",
    "Lease", "LeaseInfo", "LeaseNotFound", "Lock", "LockTimeout", "Member", "NoLeader", "NoSpace",
    "NotElected", "NotLeader", "OutcomeUnknown", "PermissionDenied", "ProtocolError", "QueueEmpty",
    "ServerError", "ServerTimeout", "Session", "SessionExpired", "Status", "TLSError", "Timestamp", "Txn",
    "Unavailable", "UserEmpty", "Watch", "create_revision", "delete_op", "get_op", "lease", "mod_revision",
    "put_op", "txn_op", "value", "version",
]
