"""The MVCC store: etcd v3's key-value state machine, applied one committed command at a time.

Theory of operation
-------------------
``Store`` owns the replicated state: the key index (every kept revision of every key), the
global revision, the compact revision, the lease table (lease id -> granted TTL and attached
keys), the alarm list, and the event history that watchers replay from. It is driven by
``apply(command, index)`` with the commands of ``conclave.kv.command`` in log order, and
answers reads (``range``, ``hash_kv``, lease queries) from the same state.

Revisions: the store starts at revision 1 (as etcd). Every write transaction (a Put, a
DeleteRange that deletes something, a Txn whose chosen branch writes, a lease revoke that
deletes keys) takes the next revision; each change inside it gets a sub revision in op order.
A request that changes nothing keeps the revision.

Atomicity: every client-visible failure (unknown lease, ignore_value on an absent key, a
compacted or future revision read inside a txn, NOSPACE/CORRUPT alarms) is detected against
the state *before* the first mutation, so a raised ``EtcdError`` always leaves the store
exactly as it was. A txn's nested compares are all evaluated against the pre-txn state (as
etcd's compareToPath does); its ranges see the writes of earlier ops in the same txn.

Events: each apply records its events in ``last_events`` and appends them to the history,
kept for revisions >= the compact revision (a watcher may start at exactly the compact
revision, as in etcd). Events after the compact revision are derivable from the key index,
so the history holds no Event objects for them, only packed references: the key (the same
bytes object the index holds), the main and the sub revision (two ``array`` columns); an
event is rebuilt from its record and the record before it when a watcher replays it. Only
the compact revision's own events, whose previous records compaction dropped, are kept as
Event objects (``_boundary``). A snapshot stores records plus those boundary events, and
``restore`` rebuilds the references.

Determinism: no clocks, no randomness, no dict-order dependence in anything hashed or
encoded; a lease granted with id 0 gets an id derived from the raft index of its command.

Rules for this module: no I/O, no clocks, no randomness; lease deadlines live in
``conclave.kv.lease.Lessor``, watchers in ``conclave.kv.watch.WatchHub``.
"""

from __future__ import annotations

import gc
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from conclave.kv import errors
from conclave.kv.command import Command, Noop
from conclave.kv.index import KeyIndex, Record, find_record, make_record, record_bytes, rows
from conclave.kv.types import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseLeasesResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseStatus,
    LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseHeader,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

MAX_LEASE_TTL_S = 9_000_000_000
"""etcd's MaxLeaseTTL (lease/lessor.go)."""

LEASE_RECORD_BYTES = 64
"""Estimated bytes one lease costs in the db size figures."""

SNAPSHOT_FORMAT = 1

_ID_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads consecutive raft indexes over the id space
_INT63_MASK = (1 << 63) - 1

Response = (
    RangeResponse
    | PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactionResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
    | AlarmResponse
    | None
)


@dataclass(slots=True)
class LeaseEntry:
    """A granted lease as replicated state: its TTL and the keys attached to it."""

    ttl: int
    keys: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _Write:
    """One write transaction in progress."""

    revision: int
    sub: int = 0
    events: list[Event] = field(default_factory=list)


class Store:
    """etcd v3's MVCC key-value state machine (see the module docstring)."""

    __slots__ = (
        "_alarms",
        "_boundary",
        "_compact_rev",
        "_db_size",
        "_db_size_in_use",
        "_ev_keys",
        "_ev_mains",
        "_ev_subs",
        "_index",
        "_leases",
        "_rev",
        "applied_index",
        "last_events",
    )

    def __init__(self) -> None:
        self._index = KeyIndex()
        self._rev = 1
        self._compact_rev = -1
        self._leases: dict[int, LeaseEntry] = {}
        self._alarms: set[tuple[int, AlarmType]] = set()
        # The event history: boundary events (at the compact revision), then references.
        self._boundary: list[Event] = []
        self._ev_keys: list[bytes] = []
        self._ev_mains = array("q")
        self._ev_subs = array("q")
        self._db_size = 0
        self._db_size_in_use = 0
        self.applied_index = 0
        self.last_events: tuple[Event, ...] = ()

    # ------------------------------------------------------------------ properties

    @property
    def revision(self) -> int:
        """The current (latest committed) revision; 1 for an empty store."""
        return self._rev

    @property
    def compact_revision(self) -> int:
        """The last compaction's revision, -1 if the store was never compacted."""
        return self._compact_rev

    @property
    def db_size(self) -> int:
        """Estimated bytes the backend would occupy (grows with every stored revision)."""
        return self._db_size

    @property
    def db_size_in_use(self) -> int:
        """Estimated bytes actually in use (what compaction leaves)."""
        return self._db_size_in_use

    def defragment(self) -> None:
        """Give back the space compaction freed (local, not replicated: etcd defrags per member)."""
        self._db_size = self._db_size_in_use

    def __len__(self) -> int:
        """Number of live keys."""
        return self._index.live_count

    # ------------------------------------------------------------------ apply

    def apply(self, cmd: Command, index: int) -> Response:
        """Apply one committed command at raft ``index``; return its response.

        Raises ``EtcdError`` subclasses for failures the client must see as an error; the
        store is then unchanged (``applied_index`` still advances: the entry was consumed).
        """
        if index <= self.applied_index:
            raise ValueError(f"apply index {index} is not after the applied index {self.applied_index}")
        self.applied_index = index
        self.last_events = ()
        if isinstance(cmd, PutRequest):
            return self._apply_put(cmd)
        if isinstance(cmd, TxnRequest):
            return self._apply_txn(cmd)
        if isinstance(cmd, DeleteRangeRequest):
            return self._apply_delete_range(cmd)
        if isinstance(cmd, RangeRequest):
            self._check_not_corrupt()
            return self._range(cmd, self._rev, None)
        if isinstance(cmd, CompactionRequest):
            return self._apply_compaction(cmd)
        if isinstance(cmd, LeaseGrantRequest):
            return self._apply_lease_grant(cmd, index)
        if isinstance(cmd, LeaseRevokeRequest):
            return self._apply_lease_revoke(cmd)
        if isinstance(cmd, AlarmRequest):
            return self._apply_alarm(cmd)
        if isinstance(cmd, Noop):
            return None
        raise TypeError(f"not a store command: {type(cmd).__name__}")

    # ------------------------------------------------------------------ write txn plumbing

    def _begin(self) -> _Write:
        return _Write(revision=self._rev + 1)

    def _end(self, w: _Write) -> int:
        """Close the write txn; returns the resulting revision."""
        if w.sub == 0:
            return self._rev
        self._rev = w.revision
        events = tuple(w.events)
        self.last_events = events
        # event i of a write txn is its change at sub revision i
        self._ev_keys.extend([e.kv.key for e in events])
        self._ev_mains.extend([w.revision] * len(events))
        self._ev_subs.extend(range(len(events)))
        return self._rev

    def _header(self, revision: int) -> ResponseHeader:
        return ResponseHeader(revision=revision)

    # ------------------------------------------------------------------ alarms in force

    def _check_not_corrupt(self) -> None:
        if self._alarm_active(AlarmType.CORRUPT):
            raise errors.Corrupt()

    def _check_space(self) -> None:
        self._check_not_corrupt()
        if self._alarm_active(AlarmType.NOSPACE):
            raise errors.NoSpace()

    def _alarm_active(self, alarm: AlarmType) -> bool:
        # Checked on every write: the common case (no alarm at all) must cost nothing.
        return bool(self._alarms) and any(a == alarm for _, a in self._alarms)

    # ------------------------------------------------------------------ put

    def _check_put(self, req: PutRequest) -> None:
        if not req.key:
            raise errors.KeyNotProvided()
        if req.lease != 0 and not req.ignore_lease and req.lease not in self._leases:
            raise errors.LeaseNotFound()
        if (req.ignore_value or req.ignore_lease) and self._index.get(req.key) is None:
            raise errors.KeyNotFound()

    def _apply_put(self, req: PutRequest) -> PutResponse:
        self._check_space()
        self._check_put(req)
        w = self._begin()
        prev = self._put(w, req)
        rev = self._end(w)
        return PutResponse(header=self._header(rev), prev_kv=prev if req.prev_kv else None)

    def _put(self, w: _Write, req: PutRequest) -> KeyValue | None:
        index = self._index
        key = index.canonical(req.key)  # one bytes object per key, however many revisions it has
        prev = index.get(key)
        value = prev.value if (req.ignore_value and prev is not None) else req.value
        lease = prev.lease if (req.ignore_lease and prev is not None) else req.lease
        if prev is None:
            kv = KeyValue(key, w.revision, w.revision, 1, value, lease)
        else:
            kv = KeyValue(key, prev.create_revision, w.revision, prev.version + 1, value, lease)
            if prev.lease and prev.lease != lease:
                old = self._leases.get(prev.lease)
                if old is not None:
                    old.keys.discard(key)
        if lease:
            self._leases[lease].keys.add(key)
        index.put(kv, w.sub)
        w.sub += 1
        w.events.append(Event(EventType.PUT, kv, prev))
        size = record_bytes(key, kv)
        self._db_size += size
        self._db_size_in_use += size
        return prev

    # ------------------------------------------------------------------ delete

    def _apply_delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        self._check_not_corrupt()
        if not req.key:
            raise errors.KeyNotProvided()
        w = self._begin()
        prev = self._delete_range(w, req.key, req.range_end)
        rev = self._end(w)
        return DeleteRangeResponse(
            header=self._header(rev), deleted=len(prev), prev_kvs=tuple(prev) if req.prev_kv else ()
        )

    def _delete_range(self, w: _Write, key: bytes, range_end: bytes) -> list[KeyValue]:
        prev = self._index.delete_range(key, range_end, w.revision, w.sub)
        w.sub += len(prev)
        for kv in prev:
            if kv.lease:
                entry = self._leases.get(kv.lease)
                if entry is not None:
                    entry.keys.discard(kv.key)
            w.events.append(Event(EventType.DELETE, KeyValue(key=kv.key, mod_revision=w.revision), kv))
            size = record_bytes(kv.key, None)
            self._db_size += size
            self._db_size_in_use += size
        return prev

    # ------------------------------------------------------------------ range

    def range(self, req: RangeRequest) -> RangeResponse:
        """Serve a Range read from the current state (no log entry needed)."""
        return self._range(req, self._rev, None)

    def _check_read_revision(self, revision: int) -> None:
        if revision > self._rev:
            raise errors.FutureRevision()
        if 0 < revision < self._compact_rev:
            raise errors.Compacted()

    def _range(self, req: RangeRequest, header_rev: int, w: _Write | None) -> RangeResponse:
        if not req.key:
            raise errors.KeyNotProvided()
        if req.sort_order not in _SORT_ORDERS or req.sort_target not in _SORT_KEYS:
            raise errors.InvalidSortOption()
        rev = req.revision
        self._check_read_revision(rev)
        # Inside a txn that already wrote, "revision == current" must not see the pending writes.
        current = rev <= 0 or (rev >= self._rev and (w is None or w.sub == 0))
        index = self._index
        sort_order = req.sort_order
        if req.sort_target != SortTarget.KEY and sort_order == SortOrder.NONE:
            sort_order = SortOrder.ASCEND  # etcd: a non-key target without an order sorts ascending
        elif req.sort_target == SortTarget.KEY and sort_order == SortOrder.ASCEND:
            sort_order = SortOrder.NONE  # already in key order
        filtered = bool(
            req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
        )
        limit = req.limit if req.limit > 0 else 0

        if current:
            count = index.count_live(req.key, req.range_end)
            if req.count_only:
                return RangeResponse(header=self._header(header_rev), count=count)
            if limit and sort_order == SortOrder.NONE and not filtered:
                # Fast path: only limit+1 keys are touched.
                lo_keys = index.live_slice(req.key, req.range_end)[: limit + 1]
                kvs = index.values_of(lo_keys)
            else:
                kvs = list(index.iter_live(req.key, req.range_end))
        else:
            kvs = list(index.iter_at(req.key, req.range_end, rev))
            count = len(kvs)
            if req.count_only:
                return RangeResponse(header=self._header(header_rev), count=count)

        if filtered:
            kvs = [kv for kv in kvs if _passes_filters(kv, req)]
        if sort_order != SortOrder.NONE:
            kvs.sort(key=_SORT_KEYS[req.sort_target], reverse=sort_order == SortOrder.DESCEND)
        more = False
        if limit and len(kvs) > limit:
            del kvs[limit:]
            more = True
        if req.keys_only:
            kvs = [replace(kv, value=b"") for kv in kvs]
        return RangeResponse(header=self._header(header_rev), kvs=tuple(kvs), more=more, count=count)

    # ------------------------------------------------------------------ txn

    def _apply_txn(self, req: TxnRequest) -> TxnResponse:
        self._check_not_corrupt()
        path: list[bool] = []
        self._evaluate_path(req, path)
        if self._alarm_active(AlarmType.NOSPACE) and _txn_has_put(req):
            raise errors.NoSpace()  # etcd's capped applier: any put anywhere in the txn
        writes = self._check_path(req, iter(path))
        w = self._begin()
        final_rev = w.revision if writes else self._rev
        header = self._header(final_rev)
        resp = self._execute_txn(req, iter(path), w, header)
        rev = self._end(w)
        assert rev == final_rev, "txn write prediction diverged from execution"
        return resp

    def _evaluate_path(self, req: TxnRequest, path: list[bool]) -> None:
        """Evaluate every compare on the chosen path against the pre-txn state (DFS order)."""
        succeeded = all(self._compare(c) for c in req.compare)
        path.append(succeeded)
        for op in req.success if succeeded else req.failure:
            if op.request_txn is not None:
                self._evaluate_path(op.request_txn, path)

    def _check_path(self, req: TxnRequest, path: Iterator[bool]) -> bool:
        """Raise now whatever the chosen ops would fail with; return whether they write."""
        writes = False
        for op in req.success if next(path) else req.failure:
            if op.request_put is not None:
                self._check_put(op.request_put)
                writes = True
            elif op.request_delete_range is not None:
                d = op.request_delete_range
                if not d.key:
                    raise errors.KeyNotProvided()
                if not writes and self._index.count_live(d.key, d.range_end) > 0:
                    writes = True
            elif op.request_range is not None:
                if not op.request_range.key:
                    raise errors.KeyNotProvided()
                self._check_read_revision(op.request_range.revision)
            elif op.request_txn is not None:
                writes = self._check_path(op.request_txn, path) or writes
        return writes

    def _execute_txn(self, req: TxnRequest, path: Iterator[bool], w: _Write, header: ResponseHeader) -> TxnResponse:
        """The chosen ops in order. As in etcd, each op's header carries the revision as of that
        op (the pre-txn revision until the txn's first change, then the txn's), and a nested
        txn's own header is empty (only the outermost response is the request's answer)."""
        succeeded = next(path)
        responses: list[ResponseOp] = []
        for op in req.success if succeeded else req.failure:
            if op.request_put is not None:
                p = op.request_put
                prev = self._put(w, p)
                responses.append(ResponseOp(response_put=PutResponse(self._op_header(w), prev if p.prev_kv else None)))
            elif op.request_delete_range is not None:
                d = op.request_delete_range
                gone = self._delete_range(w, d.key, d.range_end)
                responses.append(ResponseOp(response_delete_range=DeleteRangeResponse(
                    self._op_header(w), len(gone), tuple(gone) if d.prev_kv else ())))
            elif op.request_range is not None:
                rev = self._op_header(w).revision
                responses.append(ResponseOp(response_range=self._range(op.request_range, rev, w)))
            elif op.request_txn is not None:
                nested = self._execute_txn(op.request_txn, path, w, _NO_HEADER)
                responses.append(ResponseOp(response_txn=nested))
        return TxnResponse(header=header, succeeded=succeeded, responses=tuple(responses))

    def _op_header(self, w: _Write) -> ResponseHeader:
        return ResponseHeader(revision=w.revision if w.sub else self._rev)

    def first_failed_compare(self, compares: Iterable[Compare]) -> int:
        """Index of the first compare that does not hold at the current revision, or -1."""
        for i, c in enumerate(compares):
            if not self._compare(c):
                return i
        return -1

    def _compare(self, c: Compare) -> bool:
        if not c.range_end:
            kv = self._index.get(c.key)
            kvs: Iterable[KeyValue] = () if kv is None else (kv,)
        else:
            kvs = self._index.iter_live(c.key, c.range_end)
        seen = False
        for kv in kvs:
            seen = True
            if not _compare_kv(c, kv):
                return False
        if seen:
            return True
        if c.target == CompareTarget.VALUE:
            return False  # etcd: a value compare on a missing key always fails
        return _compare_kv(c, _ABSENT)

    # ------------------------------------------------------------------ compaction

    def _apply_compaction(self, req: CompactionRequest) -> CompactionResponse:
        self._check_not_corrupt()
        rev = req.revision
        if rev <= self._compact_rev:
            raise errors.Compacted()
        if rev > self._rev:
            raise errors.FutureRevision()
        self._compact(rev)
        return CompactionResponse(header=self._header(self._rev))

    def _compact(self, rev: int) -> None:
        # Keep revision `rev` itself for watchers: its events become boundary events, built
        # now because compaction drops the records before them (their prev_kv).
        mains = self._ev_mains
        lo = bisect_left(mains, rev)
        hi = bisect_right(mains, rev)
        boundary = [self._history_ref(i) for i in range(lo, hi)]
        released = self._index.compact(rev)
        self._db_size_in_use -= released
        del self._ev_keys[:hi]
        del self._ev_mains[:hi]
        del self._ev_subs[:hi]
        self._boundary = boundary
        self._compact_rev = rev

    # ------------------------------------------------------------------ leases

    def _apply_lease_grant(self, req: LeaseGrantRequest, index: int) -> LeaseGrantResponse:
        self._check_space()
        if req.ttl > MAX_LEASE_TTL_S:
            raise errors.LeaseTTLTooLarge()
        lease_id = req.id
        if lease_id == 0:
            lease_id = self._lease_id_for(index)
        elif lease_id in self._leases:
            raise errors.LeaseExists()
        self._leases[lease_id] = LeaseEntry(ttl=req.ttl)
        self._db_size += LEASE_RECORD_BYTES
        self._db_size_in_use += LEASE_RECORD_BYTES
        return LeaseGrantResponse(header=self._header(self._rev), id=lease_id, ttl=req.ttl)

    def _lease_id_for(self, index: int) -> int:
        candidate = (index * _ID_MIX) & _INT63_MASK
        while candidate == 0 or candidate in self._leases:
            candidate = (candidate + 1) & _INT63_MASK
        return candidate

    def _apply_lease_revoke(self, req: LeaseRevokeRequest) -> LeaseRevokeResponse:
        self._check_not_corrupt()
        entry = self._leases.get(req.id)
        if entry is None:
            raise errors.LeaseNotFound()
        w = self._begin()
        for key in sorted(entry.keys):
            self._delete_range(w, key, b"")
        del self._leases[req.id]
        self._db_size_in_use -= LEASE_RECORD_BYTES
        rev = self._end(w)
        return LeaseRevokeResponse(header=self._header(rev))

    def lease_ids(self) -> list[int]:
        return sorted(self._leases)

    def lease_ttl(self, lease_id: int) -> int:
        """The granted TTL in seconds; raises LeaseNotFound."""
        entry = self._leases.get(lease_id)
        if entry is None:
            raise errors.LeaseNotFound()
        return entry.ttl

    def lease_keys(self, lease_id: int) -> list[bytes]:
        entry = self._leases.get(lease_id)
        if entry is None:
            raise errors.LeaseNotFound()
        return sorted(entry.keys)

    def lease_time_to_live(
        self, req: LeaseTimeToLiveRequest, remaining_ttl: int | None = None
    ) -> LeaseTimeToLiveResponse:
        """etcd's LeaseTimeToLive: ttl -1 for an unknown lease; ``remaining_ttl`` from the Lessor."""
        entry = self._leases.get(req.id)
        header = self._header(self._rev)
        if entry is None:
            return LeaseTimeToLiveResponse(header=header, id=req.id, ttl=-1)
        return LeaseTimeToLiveResponse(
            header=header,
            id=req.id,
            ttl=entry.ttl if remaining_ttl is None else remaining_ttl,
            granted_ttl=entry.ttl,
            keys=tuple(sorted(entry.keys)) if req.keys else (),
        )

    def lease_leases(self) -> LeaseLeasesResponse:
        return LeaseLeasesResponse(
            header=self._header(self._rev), leases=tuple(LeaseStatus(i) for i in sorted(self._leases))
        )

    # ------------------------------------------------------------------ alarms

    def _apply_alarm(self, req: AlarmRequest) -> AlarmResponse:
        header = self._header(self._rev)
        if req.action == AlarmAction.GET:
            return AlarmResponse(header=header, alarms=self.alarms())
        member = (req.member_id, AlarmType(req.alarm))
        if req.action == AlarmAction.ACTIVATE:
            if member[1] == AlarmType.NONE:
                return AlarmResponse(header=header)
            self._alarms.add(member)
            return AlarmResponse(header=header, alarms=(AlarmMember(*member),))
        if req.action == AlarmAction.DEACTIVATE:
            if member not in self._alarms:
                return AlarmResponse(header=header)
            self._alarms.discard(member)
            return AlarmResponse(header=header, alarms=(AlarmMember(*member),))
        raise ValueError(f"unknown alarm action {req.action!r}")

    def alarms(self) -> tuple[AlarmMember, ...]:
        return tuple(AlarmMember(m, a) for m, a in sorted(self._alarms))

    # ------------------------------------------------------------------ watch history

    def history_position(self, revision: int) -> int:
        """Position in the event history of the first event at or after ``revision``."""
        b = self._boundary
        if b and revision <= b[-1].kv.mod_revision:
            return 0 if revision <= b[0].kv.mod_revision else len(b)
        return len(b) + bisect_left(self._ev_mains, revision)

    def history_revision(self, position: int) -> int:
        """The main revision of the event at ``position`` (without building the event)."""
        nb = len(self._boundary)
        if position < nb:
            return self._boundary[position].kv.mod_revision
        return self._ev_mains[position - nb]

    def history_key(self, position: int) -> bytes:
        """The key of the event at ``position`` (without building the event)."""
        nb = len(self._boundary)
        if position < nb:
            return self._boundary[position].kv.key
        return self._ev_keys[position - nb]

    def history_event(self, position: int) -> Event:
        nb = len(self._boundary)
        if position < nb:
            return self._boundary[position]
        if position < 0:
            raise IndexError(position)
        return self._history_ref(position - nb)

    def _history_ref(self, i: int) -> Event:
        """The event of reference ``i``, rebuilt from its record and the one before it."""
        key, main, sub = self._ev_keys[i], self._ev_mains[i], self._ev_subs[i]
        kv, prev = find_record(key, self._index.histories[key], main, sub)
        if kv is None:
            return Event(EventType.DELETE, KeyValue(key=key, mod_revision=main), prev)
        return Event(EventType.PUT, kv, prev)

    @property
    def history_length(self) -> int:
        return len(self._boundary) + len(self._ev_mains)

    def events_since(self, revision: int) -> list[Event]:
        """Every kept event at ``revision`` or later (tests and small replays)."""
        return [self.history_event(p) for p in range(self.history_position(revision), self.history_length)]

    # ------------------------------------------------------------------ hashing

    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """(hash, compact_revision, hash_revision) over every kept key revision <= ``revision``."""
        rev = self._rev if revision <= 0 else revision
        self._check_read_revision(rev)
        crc = 0
        for key, history in self._index.records():
            for main, sub, kv in rows(key, history):
                if main > rev:
                    break
                crc = zlib.crc32(_pack_record(key, main, sub, kv), crc)
        return crc, self._compact_rev, rev

    def hash(self) -> int:
        """A CRC32 of the whole replicated state (not db size figures, not the applied index)."""
        crc = zlib.crc32(msgpack.packb([self._rev, self._compact_rev]))
        for key, history in self._index.records():
            for main, sub, kv in rows(key, history):
                crc = zlib.crc32(_pack_record(key, main, sub, kv), crc)
        for lease_id in sorted(self._leases):
            entry = self._leases[lease_id]
            crc = zlib.crc32(msgpack.packb([lease_id, entry.ttl, sorted(entry.keys)]), crc)
        crc = zlib.crc32(msgpack.packb(sorted((m, int(a)) for m, a in self._alarms)), crc)
        return crc

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> bytes:
        """Every bit of replicated state (plus db size figures and the applied index)."""
        with _gc_paused():
            return self._snapshot()

    def _snapshot(self) -> bytes:
        records: list[Any] = []
        for key, history in self._index.records():
            packed: list[Any] = []
            for main, sub, kv in rows(key, history):
                if kv is None:
                    packed.append([main, sub])
                else:
                    packed.append([main, sub, kv.create_revision, kv.version, kv.value, kv.lease])
            records.append([key, packed])
        body = [
            SNAPSHOT_FORMAT,
            self._rev,
            self._compact_rev,
            self.applied_index,
            self._db_size,
            self._db_size_in_use,
            records,
            [_pack_event(e) for e in self._boundary],
            [[i, self._leases[i].ttl] for i in sorted(self._leases)],
            sorted([m, int(a)] for m, a in self._alarms),
        ]
        return bytes(msgpack.packb(body, use_bin_type=True))

    @classmethod
    def restore(cls, data: bytes) -> Store:
        """The store a ``snapshot()`` was taken of; raises MalformedCommand on bad input."""
        try:
            with _gc_paused():
                body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
                return cls._from_body(body)
        except errors.EtcdError:
            raise
        except Exception as exc:  # any decode or shape failure is one clear error
            raise errors.MalformedCommand(f"bad store snapshot: {exc!r}") from exc

    def history_rows(self) -> Iterator[tuple[bytes, list[tuple[int, int, KeyValue | None]]]]:
        """Every kept record, key by key in key order: ``(key, [(main, sub, kv or None)])``.

        A ``None`` kv is a tombstone (the key was deleted at ``main``). What a foreign backup
        format needs (``server/etcd_backup.py`` writes etcd's ``key`` bucket from it).
        """
        for key, history in self._index.records():
            yield key, list(rows(key, history))

    def lease_table(self) -> dict[int, int]:
        """Lease id -> granted TTL in seconds, for every lease that exists."""
        return {i: e.ttl for i, e in self._leases.items()}

    @classmethod
    def load(cls, revision: int, compact_revision: int,
             records: Iterable[tuple[bytes, list[tuple[int, int, KeyValue | None]]]],
             leases: dict[int, int]) -> Store:
        """A store holding exactly these records (keys strictly increasing, each key's records
        oldest first) and leases (id -> TTL), at ``revision``, compacted at ``compact_revision``.

        The inverse of ``history_rows``/``lease_table`` for an importer of another format. The
        compact revision's own put events are kept for watchers that start there; its deletes
        are not recoverable from records alone (a format that compacted them away lost them).
        Raises ``MalformedCommand`` for records that are not consistent.
        """
        packed: list[Any] = []
        boundary: list[Any] = []
        size = LEASE_RECORD_BYTES * len(leases)
        for key, recs in records:
            rows_: list[Any] = []
            for main, sub, kv in recs:
                size += record_bytes(key, kv)
                if kv is None:
                    rows_.append([main, sub])
                else:
                    if kv.mod_revision != main:
                        raise errors.MalformedCommand(
                            f"record of {key!r} at {main} says mod revision {kv.mod_revision}")
                    rows_.append([main, sub, kv.create_revision, kv.version, kv.value, kv.lease])
                    if main == compact_revision:
                        boundary.append(_pack_event(Event(EventType.PUT, replace(kv, key=key))))
            packed.append([key, rows_])
        body = [SNAPSHOT_FORMAT, revision, compact_revision, 0, size, size, packed, boundary,
                [[i, ttl] for i, ttl in sorted(leases.items())], []]
        try:
            with _gc_paused():
                store = cls._from_body(body)
        except errors.EtcdError:
            raise
        except Exception as exc:
            raise errors.MalformedCommand(f"inconsistent records: {exc}") from exc
        return store

    @classmethod
    def _from_body(cls, body: Any) -> Store:
        if not isinstance(body, list) or len(body) != 10 or body[0] != SNAPSHOT_FORMAT:
            raise ValueError("not a store snapshot of format 1")
        _, rev, compact_rev, applied, db_size, in_use, records, boundary, leases, alarms = body
        store = cls()
        store._rev = _int(rev)
        store._compact_rev = _int(compact_rev)
        store.applied_index = _int(applied)
        store._db_size = _int(db_size)
        store._db_size_in_use = _int(in_use)
        for lease_id, ttl in leases:
            store._leases[_int(lease_id)] = LeaseEntry(ttl=_int(ttl))
        for member, alarm in alarms:
            store._alarms.add((_int(member), AlarmType(alarm)))
        index = store._index
        compact = store._compact_rev
        pending: list[tuple[int, int, bytes]] = []
        last_key: bytes | None = None
        for key, rows_ in records:
            if not isinstance(key, bytes) or (last_key is not None and key <= last_key):
                raise ValueError("snapshot keys must be bytes in strictly increasing order")
            last_key = key
            recs: list[Record] = []
            kv: KeyValue | None = None
            last_main = -1
            for row in rows_:
                main, sub = _int(row[0]), _int(row[1])
                if main < last_main:
                    raise ValueError("record revisions must not go backwards")
                last_main = main
                kv = None
                if len(row) == 6:
                    kv = KeyValue(key, _int(row[2]), main, _int(row[3]), _bytes(row[4]), _int(row[5]))
                elif len(row) != 2:
                    raise ValueError("bad record row")
                recs.append(make_record(main, sub, kv))
                if main > compact:
                    pending.append((main, sub, key))
            if not recs:
                raise ValueError("a snapshot key without records")
            index.load(key, recs)
            if kv is not None and kv.lease:
                entry = store._leases.get(kv.lease)
                if entry is None:
                    raise ValueError(f"key attached to unknown lease {kv.lease}")
                entry.keys.add(key)
        for packed in boundary:
            event = _unpack_event(packed)
            if event.kv.mod_revision != compact:
                raise ValueError("boundary events must be at the compact revision")
            store._boundary.append(event)
        pending.sort(key=lambda r: (r[0], r[1]))
        store._ev_keys.extend([r[2] for r in pending])
        store._ev_mains.extend([r[0] for r in pending])
        store._ev_subs.extend([r[1] for r in pending])
        return store


# ---------------------------------------------------------------------- helpers (module-private)

_NO_HEADER = ResponseHeader()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building or walking millions of acyclic objects.

    Why: generational collections triggered by the allocations alone more than double the cost
    of snapshot/restore; nothing built here forms cycles. The previous state is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_ABSENT = KeyValue()

_SORT_ORDERS = frozenset(SortOrder)

_SORT_KEYS: dict[SortTarget, Any] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def _passes_filters(kv: KeyValue, req: RangeRequest) -> bool:
    if req.min_mod_revision and kv.mod_revision < req.min_mod_revision:
        return False
    if req.max_mod_revision and kv.mod_revision > req.max_mod_revision:
        return False
    if req.min_create_revision and kv.create_revision < req.min_create_revision:
        return False
    return not (req.max_create_revision and kv.create_revision > req.max_create_revision)


def _compare_kv(c: Compare, kv: KeyValue) -> bool:
    target = c.target
    ours: int | bytes
    theirs: int | bytes
    if target == CompareTarget.VERSION:
        ours, theirs = kv.version, c.version
    elif target == CompareTarget.CREATE:
        ours, theirs = kv.create_revision, c.create_revision
    elif target == CompareTarget.MOD:
        ours, theirs = kv.mod_revision, c.mod_revision
    elif target == CompareTarget.VALUE:
        ours, theirs = kv.value, c.value
    elif target == CompareTarget.LEASE:
        ours, theirs = kv.lease, c.lease
    else:
        raise ValueError(f"unknown compare target {target!r}")
    result = c.result
    if result == CompareResult.EQUAL:
        return ours == theirs
    if result == CompareResult.NOT_EQUAL:
        return ours != theirs
    if result == CompareResult.GREATER:
        return ours > theirs  # type: ignore[operator]
    if result == CompareResult.LESS:
        return ours < theirs  # type: ignore[operator]
    raise ValueError(f"unknown compare result {result!r}")


def _txn_has_put(req: TxnRequest) -> bool:
    return any(_op_has_put(op) for op in (*req.success, *req.failure))


def _op_has_put(op: RequestOp) -> bool:
    if op.request_put is not None:
        return True
    return op.request_txn is not None and _txn_has_put(op.request_txn)


def _pack_record(key: bytes, main: int, sub: int, kv: KeyValue | None) -> bytes:
    if kv is None:
        return bytes(msgpack.packb([key, main, sub]))
    return bytes(msgpack.packb([key, main, sub, kv.create_revision, kv.version, kv.value, kv.lease]))


def _pack_kv(kv: KeyValue | None) -> list[Any] | None:
    if kv is None:
        return None
    return [kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease]


def _unpack_kv(v: Any) -> KeyValue | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 6:
        raise ValueError("bad key-value row")
    return KeyValue(_bytes(v[0]), _int(v[1]), _int(v[2]), _int(v[3]), _bytes(v[4]), _int(v[5]))


def _pack_event(e: Event) -> list[Any]:
    return [int(e.type), _pack_kv(e.kv), _pack_kv(e.prev_kv)]


def _unpack_event(v: Any) -> Event:
    if not isinstance(v, list) or len(v) != 3:
        raise ValueError("bad event row")
    kv = _unpack_kv(v[1])
    if kv is None:
        raise ValueError("event without a key-value")
    return Event(EventType(_int(v[0])), kv, _unpack_kv(v[2]))


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return v
