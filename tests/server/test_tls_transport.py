"""The peer transport's TLS in one process: two Transports on 127.0.0.1, Raft messages through mutual TLS; a
revoked peer, a peer outside the allowed names and a plain peer are refused before any message is delivered;
peer auto-TLS encrypts without verifying."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from conclave.raft.types import Message, MessageType
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.transport import PeerTls, Transport

from .tls_pki import Leaf, Pki


def _cfg(tmp: Path, name: str, port: int, leaf: Leaf | None, pki: Pki | None, **kw: Any) -> ServerConfig:
    extra: dict[str, Any] = {}
    if leaf is not None and pki is not None:
        extra = {"peer_cert_file": str(leaf.cert), "peer_key_file": str(leaf.key),
                 "peer_trusted_ca_file": str(pki.ca_file), "peer_client_cert_auth": True}  # fmt: skip
    return ServerConfig(name=name, data_dir=str(tmp / name), listen_peer_urls=[f"https://127.0.0.1:{port}"],
                        **{**extra, **kw})  # fmt: skip


async def _exchange(a_cfg: ServerConfig, b_cfg: ServerConfig, a_port: int, b_port: int,
                    wait_s: float = 1.5) -> tuple[list[Any], Transport]:  # fmt: skip
    """A dials B and sends heartbeats for ``wait_s``; returns what B received, and B."""
    got: list[Any] = []

    async def no_rpc(method: str, args: Any) -> Any:
        raise AssertionError(method)

    a = Transport(1, 9, lambda m: None, no_rpc, lambda n: None, tls=PeerTls.from_config(a_cfg))
    b = Transport(2, 9, got.extend, no_rpc, lambda n: None, tls=PeerTls.from_config(b_cfg))
    await a.listen("127.0.0.1", a_port)
    await b.listen("127.0.0.1", b_port)
    try:
        a.set_peer(2, ("127.0.0.1", b_port), secure=True)
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline and not got:
            a.send([Message(type=MessageType.HEARTBEAT, to=2, frm=1, term=1)])
            await asyncio.sleep(0.05)
    finally:
        await a.close()
        await b.close()
    return got, b


def test_mutual_tls_delivers_and_a_revoked_peer_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = Pki(tmp_path / "pki")
    a_leaf, b_leaf, revoked = pki.leaf("a"), pki.leaf("b"), pki.leaf("revoked")
    crl = pki.crl(tmp_path / "crl.pem", [revoked.serial])
    pa, pb, pc, pd = free_ports(4)
    got, _ = asyncio.run(_exchange(_cfg(tmp_path, "a", pa, a_leaf, pki), _cfg(tmp_path, "b", pb, b_leaf, pki,
                                                                             peer_crl_file=str(crl)), pa, pb))
    assert got and got[0].type == MessageType.HEARTBEAT
    with caplog.at_level(logging.WARNING, logger="conclave.transport"):
        got, b = asyncio.run(_exchange(_cfg(tmp_path, "r", pc, revoked, pki),
                                       _cfg(tmp_path, "b2", pd, b_leaf, pki, peer_crl_file=str(crl)), pc, pd))
    assert got == [] and b.refused >= 1
    assert "peer TLS: refused a connection from 127.0.0.1" in caplog.text and "revoked" in caplog.text


def test_allowed_hostname_and_plain_peers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = Pki(tmp_path / "pki")
    ok, stranger = pki.leaf("ok", hosts=("m1.example.com",)), pki.leaf("x", hosts=("x.example.com",))
    b_leaf = pki.leaf("b")
    pa, pb, pc, pd = free_ports(4)
    allowed = {"peer_cert_allowed_hostname": ["m1.example.com", "b.example.com", "127.0.0.1"]}
    got, _ = asyncio.run(_exchange(_cfg(tmp_path, "a", pa, ok, pki, **allowed),
                                   _cfg(tmp_path, "b", pb, b_leaf, pki, **allowed), pa, pb))
    assert got
    with caplog.at_level(logging.WARNING, logger="conclave.transport"):
        got, _ = asyncio.run(_exchange(_cfg(tmp_path, "x", pc, stranger, pki),
                                       _cfg(tmp_path, "b2", pd, b_leaf, pki, **allowed), pc, pd))
    assert got == []
    assert "matches none of --peer-cert-allowed-hostname" in caplog.text

    async def plain() -> tuple[list[Any], Transport]:
        got: list[Any] = []

        async def no_rpc(method: str, args: Any) -> Any:
            raise AssertionError(method)

        p1, p2 = free_ports(2)
        a = Transport(1, 9, lambda m: None, no_rpc, lambda n: None)  # no TLS at all
        b = Transport(2, 9, got.extend, no_rpc, lambda n: None,
                      tls=PeerTls.from_config(_cfg(tmp_path, "b3", p2, b_leaf, pki)))  # fmt: skip
        await a.listen("127.0.0.1", p1)
        await b.listen("127.0.0.1", p2)
        a.set_peer(2, ("127.0.0.1", p2))
        for _ in range(20):
            a.send([Message(type=MessageType.HEARTBEAT, to=2, frm=1, term=1)])
            await asyncio.sleep(0.05)
        await a.close()
        await b.close()
        return got, b

    with caplog.at_level(logging.WARNING, logger="conclave.transport"):
        got, b = asyncio.run(plain())
    assert got == [] and b.refused >= 1
    assert "not a TLS client (plain-text connection to a TLS port)" in caplog.text


def test_peer_auto_tls_encrypts_without_verifying(tmp_path: Path) -> None:
    pa, pb = free_ports(2)
    a_cfg = _cfg(tmp_path, "a", pa, None, None, peer_auto_tls=True)
    b_cfg = _cfg(tmp_path, "b", pb, None, None, peer_auto_tls=True)
    from conclave.server import tls

    for cfg in (a_cfg, b_cfg):
        cfg.validate()
        tls.prepare_auto_tls(cfg)
    assert a_cfg.peer_cert_file.endswith("fixtures/peer/cert.pem")
    got, _ = asyncio.run(_exchange(a_cfg, b_cfg, pa, pb))
    assert got and got[0].frm == 1
