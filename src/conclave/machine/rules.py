"""The rules a request must pass before it enters the log, defined and checked once.

Theory of operation
-------------------
Every API path (gRPC and native, both through ``server.backend``) and the simulated driver call
``validate`` on a request before proposing it, and ``check_size`` on its encoding: a bad request
never reaches the log, and the same request gets the same etcd error whichever port it came in by.

* request shape (empty keys, sort options, duplicate keys in a txn, txn op count
  ``--max-txn-ops``): ``conclave.kv.validation.validate_request``;
* lease TTL: above ``max_lease_ttl_s`` is refused; below ``min_lease_ttl_s`` (etcd: 1.5 election
  timeouts, so a lease cannot expire because of one election) is raised to it;
* request size (``--max-request-bytes``): on the framed encoding;
* quota (``--quota-backend-bytes``): a request that adds data is refused while the NOSPACE alarm
  is active; ``over_quota`` tells the leader when to raise that alarm;
* auth commands (``conclave.kv.auth``): the errors etcd's auth store gives whatever its state --
  an empty user or role name to add (UserEmpty / RoleEmpty), an empty name to change
  (UserNotFound / RoleNotFound), a grant without a permission (PermissionNotGiven) or with a
  range that selects nothing (InvalidAuthMgmt). etcd checks admin permission before these, so
  the server runs its auth check first and ``validate`` after it.

The store repeats its state-dependent checks at apply time (deterministic on every replica).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import cast

from conclave.kv import auth, errors
from conclave.kv.command import Checked, Command
from conclave.kv.mvcc import MAX_LEASE_TTL_S, Store
from conclave.kv.types import AlarmType, LeaseGrantRequest, PutRequest, TxnRequest
from conclave.kv.validation import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, validate_request, write_cost_bytes

DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024**3  # etcd's --quota-backend-bytes default


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    quota_backend_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    min_lease_ttl_s: int = 1
    max_lease_ttl_s: int = MAX_LEASE_TTL_S


def min_lease_ttl_s(election_timeout_ms: int) -> int:
    """etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds."""
    return max(1, math.ceil(1.5 * election_timeout_ms / 1000))


def validate(req: object, limits: Limits, store: Store | None = None) -> object:
    """The request to propose (a lease TTL raised to the minimum), or the EtcdError etcd gives.

    A ``Checked`` wrapper is validated by its command (and stays wrapped).
    """
    if isinstance(req, Checked):
        inner = validate(req.command, limits, store)
        return req if inner is req.command else Checked(req.revision, cast(Command, inner))
    # Quota first, as etcd's quotaKVServer wraps the request checks.
    if store is not None and _adds_data(req) and any(a.alarm == AlarmType.NOSPACE for a in store.alarms()):
        raise errors.NoSpace()
    validate_request(req, max_txn_ops=limits.max_txn_ops)
    if isinstance(req, auth.AUTH_REQUEST_TYPES):
        _validate_auth(req)
    elif isinstance(req, LeaseGrantRequest):
        if req.ttl > limits.max_lease_ttl_s:
            raise errors.LeaseTTLTooLarge()
        if req.ttl < limits.min_lease_ttl_s:
            return replace(req, ttl=limits.min_lease_ttl_s)
    return req


def _validate_auth(req: object) -> None:
    # The order of each command's apply-time checks, where they do not depend on the store.
    if isinstance(req, auth.UserAddRequest) and not req.name:
        raise errors.UserEmpty()
    if isinstance(req, auth.RoleAddRequest) and not req.name:
        raise errors.RoleEmpty()
    if isinstance(req, auth.RoleGrantPermissionRequest):
        if req.perm is None:
            raise errors.PermissionNotGiven()
        auth.check_permission_range(req.perm.key, req.perm.range_end)
    user: str | None = None
    if isinstance(req, auth.UserGrantRoleRequest):
        user = req.user
    elif isinstance(req, (auth.UserDeleteRequest, auth.UserChangePasswordRequest, auth.UserRevokeRoleRequest)):
        user = req.name
    if user == "":
        raise errors.UserNotFound()
    role: str | None = None
    if isinstance(req, (auth.RoleDeleteRequest, auth.RoleRevokePermissionRequest)):
        role = req.role
    elif isinstance(req, auth.RoleGrantPermissionRequest):
        role = req.name
    if role == "":
        raise errors.RoleNotFound()


def check_size(encoded_bytes: int, limits: Limits) -> None:
    """RequestTooLarge when a framed request exceeds ``--max-request-bytes``."""
    if encoded_bytes > limits.max_request_bytes:
        raise errors.RequestTooLarge()


def over_quota(store: Store, limits: Limits) -> bool:
    """The store outgrew ``--quota-backend-bytes`` (the leader then raises the NOSPACE alarm)."""
    return store.db_size > limits.quota_backend_bytes


def _adds_data(req: object) -> bool:
    # Puts (and txns with a put) are refused under NOSPACE, as etcd; deletes, compactions and
    # lease grants are not.
    return isinstance(req, (PutRequest, TxnRequest)) and write_cost_bytes(req) > 0
