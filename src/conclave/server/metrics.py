"""Prometheus metrics of one member, under etcd's names, types and labels.

Theory of operation
-------------------
One :class:`MemberMetrics` per member owns a private ``prometheus_client.CollectorRegistry``
(several members may live in one test process) and is the only place that knows metric names.
The text format, the histogram arithmetic and the process/GC collectors are prometheus_client's.

Three kinds of values, chosen by what they cost on the hot path:

* **gauges read at scrape time** (``_MemberCollector``): leader, role, term, committed and
  applied index, pending proposals, keys, revisions, database size, watchers. The scrape runs on
  the member's event loop, so it reads the node's state directly and the raft loop pays nothing.
* **plain integer counters** (the ``*_total`` attributes below): bumped by the raft loop once per
  batch (``count_applied`` folds a whole Ready's results), by the transport once per frame, by
  the WAL once per fsync. An ``int +=`` costs a few tens of ns and takes no lock; the collector
  turns them into counter (or, where etcd has a gauge, gauge) families at scrape time.
* **histograms** (durations, batch sizes), observed once per fsync, per snapshot, per log entry
  proposed or per ReadIndex round, never per request. Those on the raft loop's and the fsync
  thread's path are :class:`Buckets` (a bisect and two plain updates, one writer each;
  prometheus_client's ``Histogram`` takes a lock and costs several times more), exported as
  histogram families at scrape time; the peer round trip (every few seconds) is a ``Histogram``.

Hooks are injected, never imported by the pure layers: the WAL gets a ``SyncObserver``
(``storage_observer``), the snapshotter a finished-callback, the transport this object. Names
with no etcd counterpart carry the ``conclave_`` prefix. ``extensive`` (``--metrics
extensive``) turns on what etcd reserves for it (``grpc_server_handling_seconds``, built by the
api layer's ``RpcMetrics`` into the same registry).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from conclave.kv.types import (
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    TxnRequest,
    TxnResponse,
)
from conclave.storage.wal import SyncStats
from conclave.version import __version__

# etcd exports no ``*_created`` series; neither do we (this is process-wide in prometheus_client).
prometheus_client.disable_created_metrics()

ETCD_SERVER_VERSION = "3.5.0"  # what Maintenance.Status says (server/backend.ETCD_API_VERSION)
ETCD_CLUSTER_VERSION = "3.5"
METRICS_LEVELS = ("basic", "extensive")

# etcd's buckets: disk latencies 1 ms .. 8.192 s (x2), peer round trips 0.1 ms .. 3.2768 s (x2).
DISK_BUCKETS = tuple(0.001 * 2**k for k in range(14))
RTT_BUCKETS = tuple(0.0001 * 2**k for k in range(16))
BATCH_BUCKETS = tuple(float(2**k) for k in range(13))  # 1 .. 4096 commands or reads


class Buckets:
    """A histogram kept as plain numbers by ONE writer thread, exported at scrape time.

    ``counts[i]`` holds the observations in (bounds[i-1], bounds[i]]; the last one those above
    every bound. A scrape that races an observation may see the count one ahead of the sum,
    which Prometheus tolerates (the next scrape is consistent)."""

    __slots__ = ("bounds", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        assert list(bounds) == sorted(bounds) and bounds, bounds
        self.name = name
        self.doc = doc
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self) -> HistogramMetricFamily:
        cumulative, acc = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            acc += n
            cumulative.append((floatToGoString(bound), acc))
        return HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)


@dataclass(slots=True)
class PeerCounters:
    """Plain counters of one peer (the transport bumps them once per frame)."""

    sent_bytes: int = 0
    received_bytes: int = 0
    sent_failures: int = 0
    dropped_messages: int = 0
    rtt: Any = None  # the Histogram child of this peer (label To)


@dataclass(slots=True)
class _Applied:
    """What one Ready applied, counted with local ints and folded in once."""

    puts: int = 0
    deletes: int = 0
    txns: int = 0
    ranges: int = 0
    granted: int = 0
    revoked: int = 0
    expired: int = 0
    extra: dict[type, int] = field(default_factory=dict)


class MemberMetrics:
    """The metrics of one member (see the module docstring)."""

    def __init__(self, *, extensive: bool = False, registry: CollectorRegistry | None = None) -> None:
        self.extensive = extensive
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        prometheus_client.ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, fds
        prometheus_client.PlatformCollector(registry=r)
        prometheus_client.GCCollector(registry=r)
        self.node: Any = None
        # Plain counters (loop thread; the WAL's from the fsync thread only).
        self.leader_changes_total = 0
        self.proposals_failed_total = 0
        self.read_indexes_failed_total = 0
        self.mvcc_put_total = 0
        self.mvcc_delete_total = 0
        self.mvcc_txn_total = 0
        self.mvcc_range_total = 0
        self.lease_granted_total = 0
        self.lease_revoked_total = 0
        self.lease_expired_total = 0
        self.lease_renewed_total = 0
        self.wal_write_bytes_total = 0
        self.snapshot_failures_total = 0
        self.slow_apply_total = 0  # Readys whose apply took longer than node.SLOW_APPLY_S
        self.peers: dict[int, PeerCounters] = {}
        # Histograms observed per batch: the WAL's by the fsync thread, the others by the loop.
        self.wal_fsync = Buckets(
            "etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.",
            DISK_BUCKETS)
        self.backend_commit = Buckets(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend (Conclave: the write of a state "
            "machine snapshot file, its only durable write besides the WAL).", DISK_BUCKETS)
        self.backend_snapshot = Buckets(
            "etcd_disk_backend_snapshot_duration_seconds",
            "The latency distribution of backend snapshots (Maintenance.Snapshot: the backup child).",
            DISK_BUCKETS)
        self.snap_save = Buckets(
            "etcd_debugging_snap_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot (the periodic snapshot child).",
            DISK_BUCKETS)
        self.entry_commands = Buckets(
            "conclave_server_commands_per_entry", "Client commands carried by one proposed Raft log entry "
            "(the commands that arrived while the previous batch was being persisted).", BATCH_BUCKETS)
        self.read_index_batch = Buckets(
            "conclave_server_read_index_batch_size", "Linearizable reads served by one ReadIndex round.",
            BATCH_BUCKETS)
        self.ready_entries = Buckets(
            "conclave_server_entries_per_fsync", "Raft log entries made durable by one WAL fsync.", BATCH_BUCKETS)
        self.histograms = [self.wal_fsync, self.backend_commit, self.backend_snapshot, self.snap_save,
                           self.entry_commands, self.read_index_batch, self.ready_entries]
        self.peer_rtt = Histogram(
            "etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers",
            ["To"], buckets=RTT_BUCKETS, registry=r)
        r.register(_MemberCollector(self))

    # ------------------------------------------------------------------ hooks

    def bind(self, node: Any) -> None:
        """The member whose state the scrape-time gauges read."""
        self.node = node

    def peer(self, node_id: int) -> PeerCounters:
        pc = self.peers.get(node_id)
        if pc is None:
            pc = self.peers[node_id] = PeerCounters(rtt=self.peer_rtt.labels(To=f"{node_id:x}"))
        return pc

    def storage_observer(self) -> WalObserver:
        return WalObserver(self)

    def snapshot_finished(self, what: str, seconds: float, ok: bool) -> None:
        """The snapshotter's callback: a child ended (``what`` is "backup" or "snapshot")."""
        if not ok:
            self.snapshot_failures_total += 1
            return
        (self.backend_snapshot if what == "backup" else self.snap_save).observe(seconds)

    def count_applied(self, results: Iterable[Any]) -> None:
        """Fold the results of one Ready into the mvcc and lease counters (one pass, local ints)."""
        a = _Applied()
        for r in results:
            cmd = r.command
            t = type(cmd)
            if t is PutRequest:
                a.puts += 1
            elif t is TxnRequest:
                a.txns += 1
                if type(r.response) is TxnResponse:
                    _count_txn_ops(r.response, a)
            elif t is DeleteRangeRequest:
                a.deletes += 1
            elif t is LeaseGrantRequest:
                a.granted += 1
            elif t is LeaseRevokeRequest:
                if r.seq:
                    a.revoked += 1
                else:  # the leader's expiry entry (seq 0)
                    a.expired += 1
        self.mvcc_put_total += a.puts
        self.mvcc_delete_total += a.deletes
        self.mvcc_txn_total += a.txns
        self.mvcc_range_total += a.ranges
        self.lease_granted_total += a.granted
        self.lease_revoked_total += a.revoked
        self.lease_expired_total += a.expired


def _count_txn_ops(resp: TxnResponse, a: _Applied) -> None:
    """The operations a txn ran count as puts, deletes and ranges too, as in etcd."""
    for op in resp.responses:
        if op.response_put is not None:
            a.puts += 1
        elif op.response_delete_range is not None:
            a.deletes += 1
        elif op.response_range is not None:
            a.ranges += 1
        elif op.response_txn is not None:
            _count_txn_ops(op.response_txn, a)


class WalObserver:
    """``storage.base.SyncObserver`` for the WAL: the clock it reads and what one sync did.

    Runs on the fsync thread: histograms are thread-safe, and the byte counter has one writer."""

    __slots__ = ("_m",)

    def __init__(self, metrics: MemberMetrics) -> None:
        self._m = metrics

    def now(self) -> float:
        return time.perf_counter()

    def synced(self, stats: SyncStats) -> None:
        m = self._m
        m.wal_fsync.observe(stats.fsync_s)
        m.wal_write_bytes_total += stats.wal_bytes
        if stats.entries:
            m.ready_entries.observe(stats.entries)
        if stats.snapshots:
            m.backend_commit.observe(stats.snapshot_s)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if labels:
        g = GaugeMetricFamily(name, doc, labels=list(labels))
        g.add_metric(list(labels.values()), value)
        return g
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _MemberCollector(Collector):
    """Everything read at scrape time (the event loop's thread, where the node lives)."""

    def __init__(self, metrics: MemberMetrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families depend on the node (peers), not known at registration

    def collect(self) -> Iterator[Metric]:
        m = self.m
        for h in m.histograms:
            yield h.family()
        yield _gauge("etcd_server_version", "Which version is running. 1 for 'server_version' label with "
                     "current version.", 1, {"server_version": ETCD_SERVER_VERSION})
        yield _gauge("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with "
                     "current cluster version", 1, {"cluster_version": ETCD_CLUSTER_VERSION})
        yield _gauge("etcd_server_go_version", "Which Go version server is running with. 1 for "
                     "'server_go_version' label with current version (Conclave: the Python version).", 1,
                     {"server_go_version": f"python{platform.python_version()}"})
        yield _gauge("conclave_info", "Conclave's own version.", 1, {"version": __version__,
                     "python": sys.version.split()[0]})
        yield _counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen.",
                       m.leader_changes_total)
        yield _counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen.",
                       m.proposals_failed_total)
        yield _counter("etcd_server_read_indexes_failed_total", "The total number of failed read indexes seen.",
                       m.read_indexes_failed_total)
        yield _counter("etcd_mvcc_put_total", "Total number of puts seen by this member.", m.mvcc_put_total)
        yield _counter("etcd_mvcc_delete_total", "Total number of deletes seen by this member.", m.mvcc_delete_total)
        yield _counter("etcd_mvcc_txn_total", "Total number of txns seen by this member.", m.mvcc_txn_total)
        yield _counter("etcd_mvcc_range_total", "Total number of ranges seen by this member.", m.mvcc_range_total)
        yield _counter("etcd_debugging_lease_granted_total", "The total number of granted leases.",
                       m.lease_granted_total)
        yield _counter("etcd_debugging_lease_revoked_total", "The total number of revoked leases.",
                       m.lease_revoked_total)
        yield _counter("etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader.",
                       m.lease_renewed_total)
        yield _counter("etcd_debugging_server_lease_expired_total", "The total number of expired leases.",
                       m.lease_expired_total)
        yield _gauge("etcd_disk_wal_write_bytes_total", "Total number of bytes written in WAL.",
                     m.wal_write_bytes_total)
        yield _counter("etcd_server_slow_apply_total", "The total number of slow apply requests (likely "
                       "overloaded from slow disk; Conclave: a Ready's committed entries applied in over 100 ms).",
                       m.slow_apply_total)
        yield _counter("conclave_snapshot_failures_total", "Snapshot or backup children that failed or "
                       "missed their deadline.", m.snapshot_failures_total)
        yield from self._peers()
        node = m.node
        if node is None or getattr(node, "_sm", None) is None:
            return
        yield from self._node(node)

    def _peers(self) -> Iterator[Metric]:
        m = self.m
        if not m.peers:
            return
        fams = {
            "sent": CounterMetricFamily("etcd_network_peer_sent_bytes", "The total number of bytes sent to peers.",
                                        labels=["To"]),
            "received": CounterMetricFamily("etcd_network_peer_received_bytes",
                                            "The total number of bytes received from peers.", labels=["From"]),
            "failures": CounterMetricFamily("etcd_network_peer_sent_failures",
                                            "The total number of send failures to peers.", labels=["To"]),
            "dropped": CounterMetricFamily("conclave_network_peer_dropped_messages",
                                           "Raft messages dropped before they reached a peer (its queue was full "
                                           "or its connection down; Raft retransmits).", labels=["To"]),
        }
        for nid, pc in sorted(m.peers.items()):
            h = f"{nid:x}"
            fams["sent"].add_metric([h], pc.sent_bytes)
            fams["received"].add_metric([h], pc.received_bytes)
            fams["failures"].add_metric([h], pc.sent_failures)
            fams["dropped"].add_metric([h], pc.dropped_messages)
        yield from fams.values()
        node = m.node
        transport = getattr(node, "transport", None) if node is not None else None
        if transport is not None:
            active = GaugeMetricFamily("etcd_network_active_peers", "The current number of active peer connections.",
                                       labels=["Local", "Remote"])
            local = f"{node.member_id:x}"
            for nid in transport.connected_peers():
                active.add_metric([local, f"{nid:x}"], 1)
            yield active

    def _node(self, node: Any) -> Iterator[Metric]:
        from conclave.raft.types import NONE, Role
        from conclave.server.config import reported_db_size

        raft, store, cfg = node.raft, node.store, node.cfg
        me = node.members.get(node.member_id)
        yield _gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                     int(raft.leader_id != NONE))
        yield _gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                     int(raft.role == Role.LEADER))
        yield _gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                     int(bool(me and me.is_learner)))
        yield _gauge("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with "
                     "current ID.", 1, {"server_id": f"{node.member_id:x}"})
        yield _gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                     raft.commit_index)
        yield _gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                     node.applied_index)
        yield _gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                     node.pending_proposals())
        yield _gauge("conclave_server_term", "The current Raft term of this member.", raft.term)
        yield _gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                     cfg.quota_backend_bytes)
        size, in_use = reported_db_size(store.db_size, store.db_size_in_use)
        yield _gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically "
                     "allocated in bytes.", size)
        yield _gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically "
                     "in use in bytes.", in_use)
        yield _gauge("etcd_debugging_mvcc_db_total_size_in_bytes", "Total size of the underlying database "
                     "physically allocated in bytes.", size)
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", len(store))
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", store.revision)
        yield _gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.",
                     max(0, store.compact_revision))
        hub = getattr(node, "hub", None)
        if hub is not None:
            yield _gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", len(hub))
            yield _gauge("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.",
                         hub.unsynced_count)
        yield _gauge("etcd_server_snapshot_apply_in_progress_total", "1 if the server is applying the incoming "
                     "snapshot. 0 if none.", 0)
        yield _counter("conclave_server_loop_errors_total", "Messages whose handling failed inside the raft loop "
                       "(their requests failed; the member went on).", sum(node.loop_errors.values()))
        yield _counter("conclave_peer_messages_dropped_total", "Peer messages the guard dropped (non-members, "
                       "protocol breakers).", node.peer_guard.dropped_total)
