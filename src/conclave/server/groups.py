"""Several Raft groups on one member: the meta group, the data groups, one shared transport.

Theory of operation
-------------------
A sharded cluster (``conclave serve --shards K`` or ``--shard-split-keys``) runs K+1 Raft groups
on every member, all with the same members:

- group 0, the *meta group*, lives in the data dir's root, exactly where a one-group member
  keeps its log (so the member's identity, ``member.json``, and the cluster's membership are
  the meta group's). It holds no user key: its store holds the split table under
  ``SPLIT_TABLE_KEY``, written once by the first member that finds it absent (a create-if-absent
  transaction) and read back at every start (``conclave shards`` shows it);
- groups 1..K, the *data groups*, each own one key range of ``ShardMap(splits, (1..K))``
  (group i owns ``[splits[i-2], splits[i-1])``); each keeps its WAL, hard state and snapshots in
  ``<data-dir>/groups/<gid>/`` and its own revision.

Every group is an ordinary ``Node`` (its own raft loop, storage, state machine and watch hub)
built on a copy of the member's configuration whose data dir is the group's directory, and
talking through its view of ONE ``Transport`` (``Transport.group``): messages of the groups are
batched per peer into one frame. The split is fixed when the cluster is created
(``datadir.shard_split``: ``shards.json`` in the data dir).

Leader balancing (``_balance``): every ``BALANCE_INTERVAL_S`` a member that leads more than its
fair share ``ceil(G/N)`` of the G data groups (the meta group, which takes no user writes, is
not counted) moves the leadership of one of them to the live member (its peer connection is
up) that leads the fewest, and only to one that leads fewer than its fair share: each move
lowers the spread, so the step converges and never flaps; at most one
transfer per member per interval.

Not supported with K>1 yet (refused with a clear error by ``ShardedBackend``): membership
changes and joining a running cluster (every group would have to change together).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

from conclave.kv import types as kv
from conclave.machine.xshard import ShardMap
from conclave.server.config import ConfigError, ServerConfig, parse_url
from conclave.server.node import Node
from conclave.server.transport import PeerTls, Transport

log = logging.getLogger("conclave.groups")

META_GROUP = 0
GROUPS_DIR = "groups"
SPLIT_TABLE_KEY = b"conclave/shards"
BALANCE_INTERVAL_S = 2.0
TABLE_RETRY_S = 0.5


def group_dir(data_dir: str | Path, gid: int) -> Path:
    """Where group ``gid`` keeps its log: the data dir itself for the meta group."""
    return Path(data_dir) if gid == META_GROUP else Path(data_dir) / GROUPS_DIR / str(gid)


def encode_table(splits: list[bytes]) -> bytes:
    return json.dumps({"split_keys": [k.hex() for k in splits], "groups": list(range(1, len(splits) + 2))}).encode()


def decode_table(raw: bytes) -> list[bytes]:
    return [bytes.fromhex(k) for k in json.loads(raw)["split_keys"]]


def fair_share(groups: int, members: int) -> int:
    return math.ceil(groups / max(1, members))


def pick_transfer(me: int, leaders: dict[int, int], live: list[int]) -> tuple[int, int] | None:
    """(group, target) to move one of ``me``'s leaderships to, or None when balanced.

    ``leaders``: group -> its leader as this member sees it; ``live``: the members that can take
    over (``me`` excluded). Moves only from above the fair share to below it."""
    if not live:
        return None
    fair = fair_share(len(leaders), len(live) + 1)
    mine = sorted(g for g, lead in leaders.items() if lead == me)
    if len(mine) <= fair:
        return None
    counts = {m: 0 for m in live}
    for lead in leaders.values():
        if lead in counts:
            counts[lead] += 1
    target = min(sorted(counts), key=lambda m: counts[m])
    if counts[target] >= fair:
        return None
    return mine[-1], target


class MemberGroups:
    """The member's Nodes by group id, their shard map, their shared transport."""

    def __init__(self, cfg: ServerConfig, splits: list[bytes]) -> None:
        if not splits:
            raise ConfigError("MemberGroups needs at least one split key (a one-group member runs a plain Node)")
        if cfg.initial_cluster_state == "existing" and not cfg.bootstrapped:
            raise ConfigError("a sharded cluster cannot be joined yet (--initial-cluster-state=existing with "
                              "--shards): membership changes are not supported with more than one shard")
        self.cfg = cfg
        self.splits = list(splits)
        self.shard_map = ShardMap(tuple(self.splits), tuple(range(1, len(self.splits) + 2)))
        self.transport: Transport | None = None
        self._nodes: dict[int, Node] = {META_GROUP: Node(cfg, group_id=META_GROUP, transport=self._view)}
        self._tasks: list[asyncio.Task[Any]] = []
        self.transfers = 0
        self.table: list[bytes] | None = None  # the split table as the meta group holds it

    # ------------------------------------------------------------------ lookup

    @property
    def meta(self) -> Node:
        return self._nodes[META_GROUP]

    def node(self, gid: int) -> Node:
        return self._nodes[gid]

    def group_ids(self) -> list[int]:
        """Every group this member runs, the meta group first."""
        return sorted(self._nodes)

    def data_group_ids(self) -> list[int]:
        return list(self.shard_map.groups)

    def group_of(self, key: bytes) -> int:
        return self.shard_map.group_of(key)

    def range_of(self, gid: int) -> tuple[bytes, bytes]:
        """``[start, end)`` of data group ``gid`` (end b"" = to the end of the key space)."""
        i = self.shard_map.groups.index(gid)
        lo = self.splits[i - 1] if i > 0 else b""
        hi = self.splits[i] if i < len(self.splits) else b""
        return lo, hi

    # ------------------------------------------------------------------ start/stop

    async def _view(self, node: Node) -> Any:
        if self.transport is None:  # the meta group starts first: its identity is the member's
            self.transport = Transport(node.member_id, node.cluster_id, node._on_peer_messages, node._on_rpc,
                                       node._on_unreachable, tls=PeerTls.from_config(self.cfg),
                                       metrics=node.metrics)  # fmt: skip
            peer = parse_url(self.cfg.listen_peer_urls[0], "listen-peer-urls")
            await self.transport.listen(peer.host, peer.port)
        return self.transport.group(node.group_id, node._on_peer_messages, node._on_rpc, node._on_unreachable)

    async def start(self) -> None:
        await self.meta.start()
        for gid in self.shard_map.groups:
            gcfg = copy.copy(self.cfg)  # after the meta start: the data dir's bootstrap fields
            gcfg.data_dir = str(group_dir(self.cfg.data_dir, gid))
            Path(gcfg.data_dir).mkdir(parents=True, exist_ok=True)
            node = Node(gcfg, group_id=gid, transport=self._view)
            self._nodes[gid] = node
            await node.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._balance(), name="leader-balance"))
        self._tasks.append(loop.create_task(self._split_table(), name="split-table"))
        self._tasks.append(loop.create_task(self._watch_groups(), name="group-watch"))
        log.info("running %d raft groups: meta group 0 and data groups %s split at %s", len(self._nodes),
                 ",".join(map(str, self.shard_map.groups)), ",".join(k.decode(errors="replace") for k in self.splits))

    async def _watch_groups(self) -> None:
        """A data group that stops (a failed fsync, corrupt storage) stops the member: the runner
        waits on the meta node, which then carries the reason (crash-only, as a one-group member)."""
        waits = {asyncio.ensure_future(n.stopped.wait()): gid for gid, n in self._nodes.items() if gid != META_GROUP}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        gid = waits[next(iter(done))]
        node = self._nodes[gid]
        self.meta.stop_reason = f"raft group {gid} stopped: {node.stop_reason or 'unknown reason'}"
        self.meta.fatal = node.fatal
        await self.meta.stop()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        for gid in sorted(self._nodes, reverse=True):  # the meta group last: its node owns the identity
            with contextlib.suppress(Exception):
                await self._nodes[gid].stop()
        if self.transport is not None:
            await self.transport.close()

    # ------------------------------------------------------------------ the split table

    def read_table(self) -> list[bytes] | None:
        """The split table in the meta group's local store (None until it is written)."""
        with contextlib.suppress(Exception):
            resp = self.meta.store.range(kv.RangeRequest(key=SPLIT_TABLE_KEY))
            if resp.kvs:
                return decode_table(resp.kvs[0].value)
        return None

    async def _split_table(self) -> None:
        """Write the split table into the meta group once (create-if-absent), then check it."""
        while True:
            await asyncio.sleep(TABLE_RETRY_S)
            try:
                if not self.meta.has_leader():
                    continue
                await self.meta.read_barrier()
                table = self.read_table()
                if table is None:
                    txn = kv.TxnRequest(
                        compare=(kv.Compare(result=kv.CompareResult.EQUAL, target=kv.CompareTarget.VERSION,
                                            key=SPLIT_TABLE_KEY, version=0),),
                        success=(kv.RequestOp(request_put=kv.PutRequest(key=SPLIT_TABLE_KEY,
                                                                        value=encode_table(self.splits))),),
                    )  # fmt: skip
                    await self.meta.propose_kv(txn)
                    continue
                self.table = table
                if table != self.splits:
                    log.error("the meta group's split table %s differs from this data dir's %s: this data dir "
                              "belongs to another cluster layout", table, self.splits)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no leader yet, a timeout: try again
                log.debug("split table not written yet: %s", exc)

    # ------------------------------------------------------------------ leader balancing

    def leaders(self) -> dict[int, int]:
        return {gid: n.leader_id() for gid, n in self._nodes.items()}

    def balance_once(self) -> tuple[int, int] | None:
        """The transfer this member would start now (see the module docstring), or None."""
        if self.transport is None:
            return None
        me = self.meta.member_id
        voters = set(self.meta.raft.conf_state.voters)
        live = [m for m in self.transport.connected_peers() if m in voters]
        # the data groups only: they take the writes (the meta group holds the split table and the
        # membership); counting it in the fair share left data leaderships at 1/0/2 for K=3
        data = {g: lead for g, lead in self.leaders().items() if g != META_GROUP}
        return pick_transfer(me, data, live)

    async def _balance(self) -> None:
        while True:
            await asyncio.sleep(BALANCE_INTERVAL_S)
            move = self.balance_once()
            if move is None:
                continue
            gid, target = move
            log.info("leader balance: moving the leadership of group %d to member %x", gid, target)
            try:
                await asyncio.wait_for(self._nodes[gid].transfer_leadership(target), 3 * BALANCE_INTERVAL_S)
                self.transfers += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("leader balance: moving group %d to %x failed: %s", gid, target, exc)
