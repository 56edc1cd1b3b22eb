"""Shards, the fast parts: flags and config, the data dir's record, transport framing with group ids,
two real transports carrying several groups, the leader-balancing choice, routing spans."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from conclave.cli import serve
from conclave.kv import types as kv
from conclave.raft.types import Message, MessageType
from conclave.server import datadir
from conclave.server import transport as tp
from conclave.server.config import ConfigError, ServerConfig, derive_split_keys, parse_split_keys
from conclave.server.groups import fair_share, group_dir, pick_transfer
from conclave.server.launcher import free_ports
from conclave.server.sharded import txn_spans


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serve.register(p.add_subparsers())
    return p.parse_args(["serve", *argv])


def test_shard_flags(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    assert serve.config_from_args(_args(["--data-dir", d])).split_keys() is None
    assert serve.config_from_args(_args(["--data-dir", d, "--shards", "3"])).split_keys() == [b"K", b"f"]
    cfg = serve.config_from_args(_args(["--data-dir", d, "--shard-split-keys", "a,m,t"]))
    assert cfg.split_keys() == [b"a", b"m", b"t"]
    assert serve.config_from_args(_args(["--data-dir", d, "--shards", "1"])).split_keys() == []
    with pytest.raises(ConfigError, match="mutually exclusive"):
        serve.config_from_args(_args(["--data-dir", d, "--shards", "3", "--shard-split-keys", "a"]))
    for bad, msg in (("0", "between 1 and 64"), ("65", "between 1 and 64"), ("x", "expected an integer")):
        with pytest.raises(ConfigError, match=msg):
            serve.config_from_args(_args(["--data-dir", d, "--shards", bad]))
    for bad in ("b,a", "a,a", "a,,b", ","):
        with pytest.raises(ConfigError, match="--shard-split-keys"):
            parse_split_keys(bad)


def test_shard_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCLAVE_SHARDS", "4")
    cfg = serve.config_from_args(_args(["--data-dir", str(tmp_path / "d")]))
    assert cfg.split_keys() == derive_split_keys(4) and len(derive_split_keys(4)) == 3
    monkeypatch.delenv("CONCLAVE_SHARDS")
    monkeypatch.setenv("CONCLAVE_SHARD_SPLIT_KEYS", "k")
    assert serve.config_from_args(_args(["--data-dir", str(tmp_path / "d")])).split_keys() == [b"k"]


def test_split_is_fixed_at_creation(tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=str(tmp_path / "s"), shards=3)
    assert datadir.shard_split(cfg) == [b"K", b"f"]
    assert json.loads((tmp_path / "s" / "shards.json").read_text()) == {"split_keys": ["4b", "66"]}
    assert datadir.shard_split(ServerConfig(data_dir=cfg.data_dir)) == [b"K", b"f"]  # no flag: the recorded one
    with pytest.raises(ConfigError, match="fixed at cluster creation"):
        datadir.shard_split(ServerConfig(data_dir=cfg.data_dir, shards=2))
    # A one-group data dir (member.json, no shards.json) stays one group; asking for more is refused.
    one = tmp_path / "one"
    one.mkdir()
    (one / "member.json").write_text("{}")
    assert datadir.shard_split(ServerConfig(data_dir=str(one))) == []
    assert not (one / "shards.json").exists()
    with pytest.raises(ConfigError, match="created with 1 shard"):
        datadir.shard_split(ServerConfig(data_dir=str(one), shards=3))
    # A new default data dir gets no shard file: its layout is today's.
    assert datadir.shard_split(ServerConfig(data_dir=str(tmp_path / "new"))) == []
    assert not (tmp_path / "new").exists()
    assert group_dir("x", 0) == Path("x") and group_dir("x", 2) == Path("x/groups/2")


def _msg(to: int, term: int = 1) -> Message:
    return Message(MessageType.HEARTBEAT, to=to, frm=1, term=term)


def test_frames_group_zero_unchanged_and_groups_batched() -> None:
    plain = [_msg(2), _msg(2, 3)]
    frames = tp.encode_raft_frames(list(plain))
    assert frames == [tp.encode_frame(tp.RAFT, tp.encode_messages(plain))]  # the one-group wire format
    items: list[Any] = [_msg(2), tp.GroupMessage(1, _msg(2, 5)), tp.GroupMessage(3, _msg(2, 7)),
                        tp.GroupMessage(1, _msg(2, 6)), (tp.RPC_REQ, [1, "ttl", 5, 2])]
    frames = tp.encode_raft_frames(items)
    assert len(frames) == 3  # group 0, ONE frame for the other groups, the rpc
    import msgpack

    kind, body = msgpack.unpackb(frames[1][tp.HEADER.size:], raw=False)
    assert kind == tp.RAFT_GROUPS
    got = tp.decode_raft_groups(body)
    assert [(g, [m.term for m in ms]) for g, ms in got] == [(1, [5, 6]), (3, [7])]
    for bad in ([[1]], [["x", b""]], [[-1, b""]], "nope"):
        with pytest.raises(tp.TransportError):
            tp.decode_raft_groups(bad)
    assert tp._rpc_request([1, "ttl", 5, 2]) == [1, "ttl", 5, 2]
    with pytest.raises(tp.TransportError):
        tp._rpc_request([1, "ttl", 5, -2])


def test_one_transport_carries_every_group() -> None:
    asyncio.run(asyncio.wait_for(_carries_every_group(), 30))


async def _carries_every_group() -> None:
    pa, pb = free_ports(2)
    got: dict[tuple[str, int], list[int]] = {}

    def sink(name: str, gid: int) -> Any:
        return lambda msgs: got.setdefault((name, gid), []).extend(m.term for m in msgs)

    async def rpc(gid: int) -> Any:
        async def handler(method: str, args: Any) -> Any:
            return [gid, method, args]
        return handler

    a = tp.Transport(1, 9, sink("a", 0), await rpc(0), lambda n: None)
    b = tp.Transport(2, 9, sink("b", 0), await rpc(0), lambda n: None)
    await a.listen("127.0.0.1", pa)
    await b.listen("127.0.0.1", pb)
    try:
        views = {g: b.group(g, sink("b", g), await rpc(g), lambda n: None) for g in (1, 2)}
        va = {g: a.group(g, sink("a", g), await rpc(g), lambda n: None) for g in (0, 1, 2)}
        va[1].set_peer(2, ("127.0.0.1", pb))
        views[1].set_peer(1, ("127.0.0.1", pa))
        va[0].send([_msg(2, 10)])
        va[1].send([_msg(2, 11)])
        va[2].send([_msg(2, 12), _msg(2, 13)])
        a.send([_msg(2, 99)], gid=7)  # a group b does not run: dropped there
        assert await va[2].call(2, "ttl", 5, timeout=5) == [2, "ttl", 5]
        assert await va[0].call(2, "ttl", 6, timeout=5) == [0, "ttl", 6]
        with pytest.raises(tp.RemoteError, match="no raft group 7"):
            await a.call(2, "ttl", 1, 5, gid=7)
        for _ in range(100):
            if b.unknown_group_messages:
                break
            await asyncio.sleep(0.02)
        assert got[("b", 0)] == [10] and got[("b", 1)] == [11] and got[("b", 2)] == [12, 13]
        assert b.unknown_group_messages == 1
        views[2].remove_peer(1)  # only group 0 removes peers
        assert 1 in b.peers()
        await views[2].close()
        assert 2 not in b._groups
    finally:
        await a.close()
        await b.close()


def test_pick_transfer() -> None:
    assert fair_share(4, 3) == 2
    assert pick_transfer(1, {0: 1, 1: 1, 2: 1, 3: 2}, [2, 3]) == (2, 3)  # 3 > 2: give one to member 3
    assert pick_transfer(1, {0: 1, 1: 1, 2: 2, 3: 3}, [2, 3]) is None  # at the fair share
    assert pick_transfer(1, {0: 1, 1: 1, 2: 1, 3: 1}, []) is None  # nobody live
    assert pick_transfer(1, {0: 1, 1: 1, 2: 1, 3: 2}, [2]) == (2, 2)  # 2 members: fair share 2
    assert pick_transfer(1, {0: 1, 1: 1, 2: 2, 3: 2}, [2]) is None


def test_txn_spans() -> None:
    t = kv.TxnRequest(
        compare=(kv.Compare(key=b"a"),),
        success=(kv.RequestOp(request_put=kv.PutRequest(key=b"m")),),
        failure=(kv.RequestOp(request_txn=kv.TxnRequest(success=(
            kv.RequestOp(request_range=kv.RangeRequest(key=b"x", range_end=b"z")),))),),
    )
    assert sorted(txn_spans(t)) == [(b"a", b""), (b"m", b""), (b"x", b"z")]
