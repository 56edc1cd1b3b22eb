"""protobuf (private pool, :mod:`conclave.api.pb`) <-> domain values (:mod:`conclave.kv.types`).

Theory of operation: one function per message and direction, written out field by field (no
reflection) because every KV call passes through here twice. Request decoders validate enum numbers
and raise :class:`conclave.kv.errors.EtcdError` subclasses (never a traceback) for input etcd itself
would reject. Response encoders take the header fields the edge owns (cluster_id, member_id,
raft_term) as a ready-made protobuf ``ResponseHeader`` factory argument, and the revision from the
domain response.

No business rules here: only mapping.
"""

from __future__ import annotations

from typing import Any

from conclave.api import pb
from conclave.kv import auth as kvauth
from conclave.kv import errors as kverr
from conclave.kv import types as kv
from conclave.wire.contract import MemberInfo, StatusInfo, WatchDelivery

_PbHeader = pb.message_class("ResponseHeader")
_PbKeyValue = pb.message_class("KeyValue")
_PbEvent = pb.message_class("Event")
_PbRangeResponse = pb.message_class("RangeResponse")
_PbPutResponse = pb.message_class("PutResponse")
_PbDeleteRangeResponse = pb.message_class("DeleteRangeResponse")
_PbTxnResponse = pb.message_class("TxnResponse")
_PbResponseOp = pb.message_class("ResponseOp")
_PbWatchResponse = pb.message_class("WatchResponse")
_PbMember = pb.message_class("Member")
_PbRangeRequest = pb.message_class("RangeRequest")
_PbPutRequest = pb.message_class("PutRequest")
_PbDeleteRangeRequest = pb.message_class("DeleteRangeRequest")
_PbTxnRequest = pb.message_class("TxnRequest")
_PbRequestOp = pb.message_class("RequestOp")
_PbCompare = pb.message_class("Compare")

_SORT_ORDERS = {int(v): v for v in kv.SortOrder}
_SORT_TARGETS = {int(v): v for v in kv.SortTarget}
_COMPARE_RESULTS = {int(v): v for v in kv.CompareResult}
_COMPARE_TARGETS = {int(v): v for v in kv.CompareTarget}
_FILTERS = {int(v): v for v in kv.WatchFilterType}
_ALARM_ACTIONS = {int(v): v for v in kv.AlarmAction}
_ALARM_TYPES = {int(v): v for v in kv.AlarmType}
_EVENT_TYPES = (kv.EventType.PUT, kv.EventType.DELETE)
MAX_TXN_DEPTH = 64  # nested txns deeper than this are refused (protects the recursion below)


class InvalidRequest(kverr.EtcdError):
    """A request the edge cannot map (unknown enum number, absurd nesting)."""

    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid request"


def _enum(table: dict[int, Any], number: int, what: str) -> Any:
    value = table.get(number)
    if value is None:
        raise InvalidRequest(f"unknown {what} {number}")
    return value


# ----------------------------------------------------------------------------- header


def header(resp_header: kv.ResponseHeader | None, cluster_id: int, member_id: int, raft_term: int) -> Any:
    """A full protobuf header: the edge's ids and term, the domain response's revision."""
    return _PbHeader(
        cluster_id=cluster_id,
        member_id=member_id,
        revision=resp_header.revision if resp_header is not None else 0,
        raft_term=raft_term,
    )


def _inner_header(h: kv.ResponseHeader) -> Any:
    return _PbHeader(cluster_id=h.cluster_id, member_id=h.member_id, revision=h.revision, raft_term=h.raft_term)


# ----------------------------------------------------------------------------- mvccpb


def key_value_to_pb(x: kv.KeyValue) -> Any:
    return _PbKeyValue(
        key=x.key,
        create_revision=x.create_revision,
        mod_revision=x.mod_revision,
        version=x.version,
        value=x.value,
        lease=x.lease,
    )


def key_value_from_pb(m: Any) -> kv.KeyValue:
    return kv.KeyValue(m.key, m.create_revision, m.mod_revision, m.version, m.value, m.lease)


def event_to_pb(e: kv.Event) -> Any:
    if e.prev_kv is None:
        return _PbEvent(type=int(e.type), kv=key_value_to_pb(e.kv))
    return _PbEvent(type=int(e.type), kv=key_value_to_pb(e.kv), prev_kv=key_value_to_pb(e.prev_kv))


def event_from_pb(m: Any) -> kv.Event:
    return kv.Event(
        _EVENT_TYPES[m.type],
        key_value_from_pb(m.kv),
        key_value_from_pb(m.prev_kv) if m.HasField("prev_kv") else None,
    )


# ----------------------------------------------------------------------------- KV requests


def range_request_from_pb(m: Any, barrier_passed: bool = False) -> kv.RangeRequest:
    """``barrier_passed``: the caller already holds a ReadIndex barrier taken after ``m`` arrived,
    so the read is served from the local store (as a serializable one) and stays linearizable."""
    return kv.RangeRequest(
        m.key,
        m.range_end,
        m.limit,
        m.revision,
        _enum(_SORT_ORDERS, m.sort_order, "sort order"),
        _enum(_SORT_TARGETS, m.sort_target, "sort target"),
        m.serializable or barrier_passed,
        m.keys_only,
        m.count_only,
        m.min_mod_revision,
        m.max_mod_revision,
        m.min_create_revision,
        m.max_create_revision,
    )


def put_request_from_pb(m: Any) -> kv.PutRequest:
    return kv.PutRequest(m.key, m.value, m.lease, m.prev_kv, m.ignore_value, m.ignore_lease)


def delete_range_request_from_pb(m: Any) -> kv.DeleteRangeRequest:
    return kv.DeleteRangeRequest(m.key, m.range_end, m.prev_kv)


def compare_from_pb(m: Any) -> kv.Compare:
    return kv.Compare(
        _enum(_COMPARE_RESULTS, m.result, "compare result"),
        _enum(_COMPARE_TARGETS, m.target, "compare target"),
        m.key,
        m.range_end,
        m.version,
        m.create_revision,
        m.mod_revision,
        m.value,
        m.lease,
    )


def request_op_from_pb(m: Any, depth: int = 0) -> kv.RequestOp:
    which = m.WhichOneof("request")
    if which == "request_put":
        return kv.RequestOp(request_put=put_request_from_pb(m.request_put))
    if which == "request_range":
        return kv.RequestOp(request_range=range_request_from_pb(m.request_range))
    if which == "request_delete_range":
        return kv.RequestOp(request_delete_range=delete_range_request_from_pb(m.request_delete_range))
    if which == "request_txn":
        return kv.RequestOp(request_txn=txn_request_from_pb(m.request_txn, depth + 1))
    raise InvalidRequest("txn operation without a request")


def txn_request_from_pb(m: Any, depth: int = 0) -> kv.TxnRequest:
    if depth > MAX_TXN_DEPTH:
        raise InvalidRequest(f"txn nested deeper than {MAX_TXN_DEPTH}")
    return kv.TxnRequest(
        tuple([compare_from_pb(c) for c in m.compare]),
        tuple([request_op_from_pb(op, depth) for op in m.success]),
        tuple([request_op_from_pb(op, depth) for op in m.failure]),
    )


def compaction_request_from_pb(m: Any) -> kv.CompactionRequest:
    return kv.CompactionRequest(m.revision, m.physical)


# ----------------------------------------------------------------------------- KV responses


def range_response_to_pb(r: kv.RangeResponse, hdr: Any) -> Any:
    return _PbRangeResponse(header=hdr, kvs=[key_value_to_pb(x) for x in r.kvs], more=r.more, count=r.count)


def put_response_to_pb(r: kv.PutResponse, hdr: Any) -> Any:
    if r.prev_kv is None:
        return _PbPutResponse(header=hdr)
    return _PbPutResponse(header=hdr, prev_kv=key_value_to_pb(r.prev_kv))


def delete_range_response_to_pb(r: kv.DeleteRangeResponse, hdr: Any) -> Any:
    return _PbDeleteRangeResponse(header=hdr, deleted=r.deleted, prev_kvs=[key_value_to_pb(x) for x in r.prev_kvs])


def response_op_to_pb(op: kv.ResponseOp) -> Any:
    if op.response_put is not None:
        return _PbResponseOp(response_put=put_response_to_pb(op.response_put, _inner_header(op.response_put.header)))
    if op.response_range is not None:
        r = op.response_range
        return _PbResponseOp(response_range=range_response_to_pb(r, _inner_header(r.header)))
    if op.response_delete_range is not None:
        d = op.response_delete_range
        return _PbResponseOp(response_delete_range=delete_range_response_to_pb(d, _inner_header(d.header)))
    assert op.response_txn is not None  # ResponseOp guarantees exactly one is set
    t = op.response_txn
    return _PbResponseOp(response_txn=txn_response_to_pb(t, _inner_header(t.header)))


def txn_response_to_pb(r: kv.TxnResponse, hdr: Any) -> Any:
    return _PbTxnResponse(header=hdr, succeeded=r.succeeded, responses=[response_op_to_pb(op) for op in r.responses])


# Requests and responses the other way round (used by Conclave's own clients and the tests).


def range_request_to_pb(r: kv.RangeRequest) -> Any:
    return _PbRangeRequest(
        key=r.key,
        range_end=r.range_end,
        limit=r.limit,
        revision=r.revision,
        sort_order=int(r.sort_order),
        sort_target=int(r.sort_target),
        serializable=r.serializable,
        keys_only=r.keys_only,
        count_only=r.count_only,
        min_mod_revision=r.min_mod_revision,
        max_mod_revision=r.max_mod_revision,
        min_create_revision=r.min_create_revision,
        max_create_revision=r.max_create_revision,
    )


def put_request_to_pb(r: kv.PutRequest) -> Any:
    return _PbPutRequest(
        key=r.key,
        value=r.value,
        lease=r.lease,
        prev_kv=r.prev_kv,
        ignore_value=r.ignore_value,
        ignore_lease=r.ignore_lease,
    )


def delete_range_request_to_pb(r: kv.DeleteRangeRequest) -> Any:
    return _PbDeleteRangeRequest(key=r.key, range_end=r.range_end, prev_kv=r.prev_kv)


def compare_to_pb(c: kv.Compare) -> Any:
    m = _PbCompare(result=int(c.result), target=int(c.target), key=c.key, range_end=c.range_end)
    target = c.target
    if target == kv.CompareTarget.VERSION:
        m.version = c.version
    elif target == kv.CompareTarget.CREATE:
        m.create_revision = c.create_revision
    elif target == kv.CompareTarget.MOD:
        m.mod_revision = c.mod_revision
    elif target == kv.CompareTarget.VALUE:
        m.value = c.value
    else:
        m.lease = c.lease
    return m


def request_op_to_pb(op: kv.RequestOp) -> Any:
    if op.request_put is not None:
        return _PbRequestOp(request_put=put_request_to_pb(op.request_put))
    if op.request_range is not None:
        return _PbRequestOp(request_range=range_request_to_pb(op.request_range))
    if op.request_delete_range is not None:
        return _PbRequestOp(request_delete_range=delete_range_request_to_pb(op.request_delete_range))
    assert op.request_txn is not None
    return _PbRequestOp(request_txn=txn_request_to_pb(op.request_txn))


def txn_request_to_pb(r: kv.TxnRequest) -> Any:
    return _PbTxnRequest(
        compare=[compare_to_pb(c) for c in r.compare],
        success=[request_op_to_pb(op) for op in r.success],
        failure=[request_op_to_pb(op) for op in r.failure],
    )


def _header_from_pb(m: Any) -> kv.ResponseHeader:
    h = m.header
    return kv.ResponseHeader(h.cluster_id, h.member_id, h.revision, h.raft_term)


def range_response_from_pb(m: Any) -> kv.RangeResponse:
    return kv.RangeResponse(_header_from_pb(m), tuple([key_value_from_pb(x) for x in m.kvs]), m.more, m.count)


def put_response_from_pb(m: Any) -> kv.PutResponse:
    return kv.PutResponse(_header_from_pb(m), key_value_from_pb(m.prev_kv) if m.HasField("prev_kv") else None)


def delete_range_response_from_pb(m: Any) -> kv.DeleteRangeResponse:
    return kv.DeleteRangeResponse(_header_from_pb(m), m.deleted, tuple([key_value_from_pb(x) for x in m.prev_kvs]))


def response_op_from_pb(m: Any) -> kv.ResponseOp:
    which = m.WhichOneof("response")
    if which == "response_put":
        return kv.ResponseOp(response_put=put_response_from_pb(m.response_put))
    if which == "response_range":
        return kv.ResponseOp(response_range=range_response_from_pb(m.response_range))
    if which == "response_delete_range":
        return kv.ResponseOp(response_delete_range=delete_range_response_from_pb(m.response_delete_range))
    if which == "response_txn":
        return kv.ResponseOp(response_txn=txn_response_from_pb(m.response_txn))
    raise InvalidRequest("txn response without a response")


def txn_response_from_pb(m: Any) -> kv.TxnResponse:
    return kv.TxnResponse(_header_from_pb(m), m.succeeded, tuple([response_op_from_pb(op) for op in m.responses]))


# ----------------------------------------------------------------------------- Lease


def lease_grant_request_from_pb(m: Any) -> kv.LeaseGrantRequest:
    return kv.LeaseGrantRequest(m.TTL, m.ID)


def lease_revoke_request_from_pb(m: Any) -> kv.LeaseRevokeRequest:
    return kv.LeaseRevokeRequest(m.ID)


def lease_time_to_live_request_from_pb(m: Any) -> kv.LeaseTimeToLiveRequest:
    return kv.LeaseTimeToLiveRequest(m.ID, m.keys)


def lease_grant_response_to_pb(r: kv.LeaseGrantResponse, hdr: Any) -> Any:
    return pb.message_class("LeaseGrantResponse")(header=hdr, ID=r.id, TTL=r.ttl, error=r.error)


def lease_revoke_response_to_pb(r: kv.LeaseRevokeResponse, hdr: Any) -> Any:
    return pb.message_class("LeaseRevokeResponse")(header=hdr)


def lease_time_to_live_response_to_pb(r: kv.LeaseTimeToLiveResponse, hdr: Any) -> Any:
    return pb.message_class("LeaseTimeToLiveResponse")(
        header=hdr, ID=r.id, TTL=r.ttl, grantedTTL=r.granted_ttl, keys=list(r.keys)
    )


def lease_leases_response_to_pb(r: kv.LeaseLeasesResponse, hdr: Any) -> Any:
    status = pb.message_class("LeaseStatus")
    return pb.message_class("LeaseLeasesResponse")(header=hdr, leases=[status(ID=s.id) for s in r.leases])


# ----------------------------------------------------------------------------- Watch


def watch_create_request_from_pb(m: Any) -> kv.WatchCreateRequest:
    return kv.WatchCreateRequest(
        m.key,
        m.range_end,
        m.start_revision,
        m.progress_notify,
        # etcd ignores filter values it does not know (FiltersFromRequest has no default case).
        tuple([_FILTERS[f] for f in m.filters if f in _FILTERS]),
        m.prev_kv,
        m.watch_id,
        m.fragment,
    )


def watch_delivery_to_pb(d: WatchDelivery, watch_id: int, hdr: Any) -> Any:
    return _PbWatchResponse(
        header=hdr,
        watch_id=watch_id,
        canceled=d.canceled,
        compact_revision=d.compact_revision,
        cancel_reason=d.cancel_reason,
        events=[event_to_pb(e) for e in d.events],
    )


def watch_response_from_pb(m: Any) -> kv.WatchResponse:
    return kv.WatchResponse(
        _header_from_pb(m),
        m.watch_id,
        m.created,
        m.canceled,
        m.compact_revision,
        m.cancel_reason,
        m.fragment,
        tuple([event_from_pb(e) for e in m.events]),
    )


# ----------------------------------------------------------------------------- Cluster / Maintenance


def member_to_pb(x: MemberInfo) -> Any:
    return _PbMember(
        ID=x.id, name=x.name, peerURLs=list(x.peer_urls), clientURLs=list(x.client_urls), isLearner=x.is_learner
    )


def status_to_pb(s: StatusInfo, hdr: Any) -> Any:
    return pb.message_class("StatusResponse")(
        header=hdr,
        version=s.version,
        dbSize=s.db_size,
        leader=s.leader,
        raftIndex=s.raft_index,
        raftTerm=s.raft_term,
        raftAppliedIndex=s.raft_applied_index,
        errors=list(s.errors),
        dbSizeInUse=s.db_size_in_use,
        isLearner=s.is_learner,
        storageVersion=s.storage_version,
        dbSizeQuota=s.db_size_quota,
    )


def alarm_action_from_pb(number: int) -> kv.AlarmAction:
    action: kv.AlarmAction = _enum(_ALARM_ACTIONS, number, "alarm action")
    return action


def alarm_type_from_pb(number: int) -> kv.AlarmType:
    alarm: kv.AlarmType = _enum(_ALARM_TYPES, number, "alarm type")
    return alarm


def alarm_member_to_pb(a: kv.AlarmMember) -> Any:
    return pb.message_class("AlarmMember")(memberID=a.member_id, alarm=int(a.alarm))


def hash_kv_response_to_pb(r: kv.HashKVResponse, hdr: Any) -> Any:
    return pb.message_class("HashKVResponse")(
        header=hdr, hash=r.hash, compact_revision=r.compact_revision, hash_revision=r.hash_revision
    )


# ------------------------------------------------------------------------------------ auth

_PERM_TYPES = {int(v): v for v in kvauth.PermType}
_PbPermission = pb.message_class("Permission")


def permission_from_pb(m: Any) -> kvauth.Permission:
    return kvauth.Permission(_enum(_PERM_TYPES, m.permType, "permission type"), bytes(m.key), bytes(m.range_end))


def permission_to_pb(p: kvauth.Permission) -> Any:
    return _PbPermission(permType=int(p.perm_type), key=p.key, range_end=p.range_end)

