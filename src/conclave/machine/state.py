"""The replicated state machine: committed raft entries in, results and watch events out.

Theory of operation
-------------------
A ``StateMachine`` holds everything every member must agree on at an applied index: the MVCC
store (``conclave.kv.mvcc.Store``), the auth store (``conclave.kv.auth.AuthStore``: users,
roles, permissions), the member table and cluster id, and the once-only table of applied
``(origin, seq)``. It also holds the member-local lease deadlines (``Lessor``),
which are not replicated: a grant applied here starts a deadline at the ``now_ms`` the driver
passes in; only the leader (``leases.promote``) ever finds a lease expired. No clock, no I/O.

``apply(entry, now_ms)`` takes committed entries in index order (an entry at or below
``applied_index`` is ignored, a gap is a driver bug and raises). A kv command runs at store
index ``raft_index * BATCH_SLOTS + position``, so lease ids and apply order are the same on
every replica. It returns ``Applied``: one ``Result`` per request (``origin``, ``seq``,
response or ``EtcdError``); the driver resolves the ones it proposed (``origin == me``).

Auth: an auth command goes to ``auth.apply`` (an Authenticate's ``AuthenticateResponse`` is in
the results of EVERY member, so each can register the token). ``Checked(rev, cmd)`` is a client
command the server authorised at auth revision ``rev``: while auth is on it applies only if the
auth revision is still ``rev`` (else AuthOldRevision, nothing changes) and, when it names its
user, that user may still write every key attached to the leases it uses; an unwrapped client
command counts as ``rev`` 0; internal commands (seq 0 lease expiry, Noop) are never checked;
``Result.command`` is the unwrapped command. Why this is as safe as etcd's apply-time check:
``conclave.kv.auth``. Clusters that never enable auth take the old path (a flag test and a
set lookup per command).

Once-only apply: a batch can reach the log twice (a forwarded proposal duplicated on the wire, a
driver that re-proposes after a leader change), so a kv command whose ``(origin, seq)`` was
applied is skipped (no result). The table is bounded: per origin the highest applied seq and a
bitmap of the ``ONCE_WINDOW`` seqs below it; a seq further below counts as applied. Hence seqs
must be unique and growing per origin across restarts: drivers start each run at
``entry.seq_base(epoch)`` with an epoch they persist and increment per start. Seq 0 (lease
expiry) is never deduplicated (a second revoke fails harmlessly with "lease not found").

Cross-shard transactions (``conclave.machine.xshard``): ``xshard`` holds this group's
transaction records, intents (locks) and fences. A cross-shard command (Prepare, Resolve,
Begin, Heartbeat, Decide, Forget) goes through the same once-only path and returns its Vote /
Record / Resolved as the result's response (a Resolve that commits also its watch events). It is
an internal command: unwrapped it is never refused by the auth revision (the coordinator checked
the client's transaction); wrapped in ``Checked`` it is checked like any other. While some
intent is held, every plain kv command is checked against the locks first: one that meets a
lock gets ``xshard.Locked`` as its error and the store is unchanged. With no intent and auth
off, a kv command costs one more dict truth test.

``snapshot()`` writes the ONE image format (msgpack map: format, kv, members, cluster_id,
applied_index, once, auth, xshard); ``restore(image)`` reads it, and also the images of older
servers (``{"kv", "members", "cluster_id"}``, no once-only table; no ``auth``: auth off, no
users; no ``xshard``: no transaction in flight).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from conclave.kv import errors as kverr
from conclave.kv.auth import AUTH_REQUEST_TYPES, AuthResponse, AuthStore
from conclave.kv.command import XCOMMAND_TYPES, Checked, Command, Noop, Prepare
from conclave.kv.lease import Lessor
from conclave.kv.mvcc import Response, Store
from conclave.kv.types import Event, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, TxnRequest
from conclave.machine import entry as ent
from conclave.machine import rules
from conclave.machine.entry import Member
from conclave.machine.xshard import Record, Resolved, Vote, XShard
from conclave.raft.codec import decode_conf_change
from conclave.raft.types import ConfChangeType, Entry, EntryType

IMAGE_FORMAT = 4  # 4: + xshard
# Command classes that take the slow path even while auth is off (kv commands do not).
_AUTH_COMMANDS: frozenset[type] = frozenset(AUTH_REQUEST_TYPES)
_XSHARD_COMMANDS: frozenset[type] = frozenset(XCOMMAND_TYPES)
_SLOW_PATH: frozenset[type] = _AUTH_COMMANDS | _XSHARD_COMMANDS | {Checked}
ONCE_WINDOW = 4 * ent.BATCH_SLOTS
_WINDOW_MASK = (1 << ONCE_WINDOW) - 1


@dataclass(slots=True)
class Result:
    origin: int
    seq: int
    command: Command | None  # None for member and conf change entries
    response: Response | AuthResponse | Vote | Record | Resolved
    error: kverr.EtcdError | None
    events: tuple[Event, ...] = ()


@dataclass(slots=True)
class Applied:
    results: list[Result] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # every watch event, in revision order
    members_changed: bool = False
    removed: frozenset[int] = frozenset()


class StateMachine:
    __slots__ = ("_once", "applied_index", "auth", "cluster_id", "leases", "members", "once_only", "store",
                 "xshard")

    def __init__(self, cluster_id: int = 0, members: Iterable[Member] = (), *, store: Store | None = None,
                 applied_index: int = 0, once_only: bool = True, auth: AuthStore | None = None,
                 xshard: XShard | None = None) -> None:
        self.store = store if store is not None else Store()
        self.cluster_id = cluster_id
        self.members: dict[int, Member] = {m.id: m for m in members}
        self.applied_index = applied_index
        # False switches off once-only apply: a broken rule for the simulator's teeth tests.
        self.once_only = once_only
        self._once: dict[int, tuple[int, int]] = {}  # origin -> (highest seq, bitmap below it)
        self.auth = auth if auth is not None else AuthStore()
        self.xshard = xshard if xshard is not None else XShard()
        self.leases = Lessor()
        for lid in self.store.lease_ids():
            self.leases.grant(lid, self.store.lease_ttl(lid), 0)

    @classmethod
    def bootstrap(cls, cluster_id: int, members: Iterable[Member], *, once_only: bool = True) -> StateMachine:
        return cls(cluster_id, members, once_only=once_only)

    # ------------------------------------------------------------------ apply

    def apply(self, e: Entry, now_ms: int) -> Applied:
        out = Applied()
        if e.index <= self.applied_index:
            return out
        if e.index != self.applied_index + 1:
            raise ValueError(f"entry {e.index} applied after {self.applied_index} (entries must apply in order)")
        self.applied_index = e.index
        if e.type == EntryType.CONF_CHANGE:
            self._apply_conf_change(e, out)
            return out
        decoded = ent.decode(e.data)
        if decoded is None:
            return out
        if isinstance(decoded, ent.MemberEntry):
            self._apply_member(decoded, out)
            return out
        origin = decoded.origin
        auth = self.auth
        xshard = self.xshard
        for i, (seq, cmd) in enumerate(decoded.commands):
            if seq and origin and not self._first_time(origin, seq):
                continue
            response: Response | AuthResponse | Vote | Record | Resolved = None
            error: kverr.EtcdError | None = None
            events: tuple[Event, ...] = ()
            try:
                if auth.enabled or xshard.intents or cmd.__class__ in _SLOW_PATH:
                    # Auth on, locks held, or an auth / cross-shard command or a Checked wrapper:
                    # the hot path never gets here.
                    checked = cmd
                    cmd = cmd.command if isinstance(cmd, Checked) else cmd
                    response = self._apply_authorised(checked, seq, e.index, e.index * ent.BATCH_SLOTS + i)
                else:
                    response = self.store.apply(cmd, e.index * ent.BATCH_SLOTS + i)
            except kverr.EtcdError as exc:
                error = exc
            else:
                events = tuple(self.store.last_events)
                out.events.extend(events)
                if isinstance(cmd, LeaseGrantRequest) and isinstance(response, LeaseGrantResponse):
                    self.leases.grant(response.id, response.ttl, now_ms)
                elif isinstance(cmd, LeaseRevokeRequest):
                    self.leases.revoke(cmd.id)
            out.results.append(Result(origin, seq, cmd, response, error, events))
        return out

    def _apply_authorised(self, cmd: Command, seq: int, raft_index: int,
                          store_index: int) -> Response | AuthResponse | Vote | Record | Resolved:
        """Apply a command that may need the auth revision check (see conclave.kv.auth) or the
        cross-shard lock check.

        ``Checked(rev, c, user)``: refused with AuthOldRevision if auth is on and the store's
        auth revision is not ``rev``; with a user, the lease part of the check is repeated. An
        unwrapped client command counts as checked at revision 0. Internal commands (seq 0: the
        leader's lease expiry; Noop; the cross-shard commands) are never checked. A plain kv
        command that meets a cross-shard lock raises ``xshard.Locked`` (nothing applied).
        """
        auth = self.auth
        user = ""
        if isinstance(cmd, Checked):
            revision, user, cmd = cmd.revision, cmd.user, cmd.command
        elif seq == 0 or isinstance(cmd, Noop) or cmd.__class__ in _XSHARD_COMMANDS:
            revision = auth.revision
        else:
            revision = 0
        if auth.enabled:
            if revision != auth.revision:
                raise kverr.AuthOldRevision()
            if user:
                # The lease keys are kv state: they may have changed since the server's check.
                seen = TxnRequest(cmd.part.compares, cmd.part.success, cmd.part.failure) \
                    if isinstance(cmd, Prepare) else cmd
                auth.check_lease_keys(user, seen, self.store.lease_keys)
        if cmd.__class__ in _AUTH_COMMANDS:
            self.store.last_events = ()  # the caller publishes these: an auth command has none
            return auth.apply(cmd, raft_index)  # type: ignore[arg-type]  # one of AUTH_REQUEST_TYPES
        if isinstance(cmd, Checked):
            raise kverr.MalformedCommand("a Checked command wraps another")
        if cmd.__class__ in _XSHARD_COMMANDS:
            self.store.last_events = ()  # a Resolve that commits sets them again
            return self.xshard.apply(cmd, self.store, store_index)  # type: ignore[arg-type]  # an XCommand
        self.xshard.check_plain(cmd, self.store)
        return self.store.apply(cmd, store_index)

    def _first_time(self, origin: int, seq: int) -> bool:
        """Record ``(origin, seq)`` as applied; False if it already was."""
        hwm, mask = self._once.get(origin, (0, 0))
        if seq > hwm:
            shift = seq - hwm
            mask = 1 if shift >= ONCE_WINDOW else ((mask << shift) | 1) & _WINDOW_MASK
            self._once[origin] = (seq, mask)
            return True
        if not self.once_only:
            return True
        back = hwm - seq
        if back >= ONCE_WINDOW or mask >> back & 1:
            return False
        self._once[origin] = (hwm, mask | 1 << back)
        return True

    def _apply_member(self, m: ent.MemberEntry, out: Applied) -> None:
        known = self.members.get(m.member.id)
        if known is not None:
            known.name, known.client_urls, known.native_urls = m.member.name, m.member.client_urls, m.member.native_urls
            if m.member.peer_urls and m.member.peer_urls != known.peer_urls:
                known.peer_urls = m.member.peer_urls
            out.members_changed = True
        out.results.append(Result(m.origin, m.seq, None, None, None))

    def _apply_conf_change(self, e: Entry, out: Applied) -> None:
        cc = decode_conf_change(e.data)
        origin, seq, added = ent.decode_conf_context(cc.context)
        info = {m.id: m for m in added}
        removed: set[int] = set()
        for ch in cc.changes:
            if ch.type == ConfChangeType.REMOVE_NODE:
                self.members.pop(ch.node_id, None)
                removed.add(ch.node_id)
            else:
                m = info.get(ch.node_id) or self.members.get(ch.node_id) or Member(ch.node_id, "", [])
                m.is_learner = ch.type == ConfChangeType.ADD_LEARNER
                self.members[ch.node_id] = m
                removed.discard(ch.node_id)
        out.members_changed = True
        out.removed = frozenset(removed)
        out.results.append(Result(origin, seq, None, None, None))

    # ------------------------------------------------------------------ rules and queries

    def validate(self, request: object, limits: rules.Limits) -> object:
        """``rules.validate`` against this machine's store (quota): the request to propose."""
        return rules.validate(request, limits, self.store)

    def hash(self) -> int:
        """The store hash at the applied index (same applied index -> same hash on every replica)."""
        return self.store.hash()

    def was_applied(self, origin: int, seq: int) -> bool:
        hwm, mask = self._once.get(origin, (0, 0))
        if seq > hwm:
            return False
        back = hwm - seq
        return back >= ONCE_WINDOW or bool(mask >> back & 1)

    # ------------------------------------------------------------------ image

    def snapshot(self) -> bytes:
        """The state image at the applied index (what raft snapshots and backups carry)."""
        once = [[o, hwm, mask.to_bytes((mask.bit_length() + 7) // 8, "big")]
                for o, (hwm, mask) in sorted(self._once.items())]
        return bytes(msgpack.packb({
            "format": IMAGE_FORMAT,
            "kv": self.store.snapshot(),
            "members": [m.to_wire() for m in self.members.values()],
            "cluster_id": self.cluster_id,
            "applied_index": self.applied_index,
            "once": once,
            "auth": self.auth.snapshot(),
            "xshard": self.xshard.snapshot(),
        }, use_bin_type=True))

    @classmethod
    def restore(cls, image: bytes, *, index: int | None = None, once_only: bool = True) -> StateMachine:
        """The machine an image describes; ``index`` (the raft snapshot's) overrides the image's.

        Raises ``ImageError`` for an image that is not one.
        """
        try:
            body: Any = msgpack.unpackb(image, raw=False)
            store = Store.restore(body["kv"])
            members = [Member.from_wire(w) for w in body["members"]]
            cluster_id = int(body["cluster_id"])
            applied = int(body.get("applied_index", 0))  # images of older servers lack it
            once = {int(o): (int(h), int.from_bytes(bytes(m), "big")) for o, h, m in body.get("once", [])}
            # Images of servers before auth have no auth store: auth off, no users, no roles.
            auth = AuthStore.restore(bytes(body["auth"])) if "auth" in body else AuthStore()
            # Images of servers before cross-shard transactions: none in flight.
            xshard = XShard.restore(body["xshard"]) if "xshard" in body else XShard()
        except Exception as exc:
            raise ImageError(f"not a state machine image: {exc}") from None
        sm = cls(cluster_id, members, store=store, applied_index=applied if index is None else index,
                 once_only=once_only, auth=auth, xshard=xshard)
        sm._once = once
        return sm


class ImageError(ValueError):
    """Bytes that are not a state machine image."""
