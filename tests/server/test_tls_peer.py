"""Peer-port TLS on real `conclave serve` clusters: mutual TLS forms a cluster that serves writes; a member with a
certificate from another CA, or with a common name outside --peer-cert-allowed-cn, is refused at the handshake and
never gets a Raft message in (the cluster's term stays put); a renewed peer certificate is served to new connections
without a restart."""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from conclave.server.launcher import ProcessCluster
from conclave.server.transport import HELLO, encode_frame

from .conftest import Etcd, wait_for
from .tls_pki import ETCDCTL, Leaf, Pki, client_context, replace_files, served_serial, wait_serial


def peer_cluster(root: Path, pki: Pki, leaves: dict[str, Leaf], *extra: str, size: int = 3) -> ProcessCluster:
    return ProcessCluster(
        root, size=size, peer_tls=True, heartbeat_ms=100, election_ms=1500,  # steady terms on a loaded machine
        extra_args=["--peer-trusted-ca-file", str(pki.ca_file), "--peer-client-cert-auth", *extra],
        member_args={name: ["--peer-cert-file", str(leaf.cert), "--peer-key-file", str(leaf.key)]
                     for name, leaf in leaves.items()},
    )  # fmt: skip


def term(endpoint: str) -> int:
    cl = Etcd(endpoint)
    try:
        return int(cl.status().header.raft_term)
    finally:
        cl.close()


def test_peer_mtls_cluster_forms_serves_writes_and_renews_its_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    leaves = {f"m{i}": pki.leaf(f"m{i}") for i in (1, 2, 3)}
    cluster = peer_cluster(tmp_path / "c", pki, leaves)
    with cluster:
        m1, _m2, m3 = cluster.members
        assert m1.peer_url.startswith("https://")
        a = Etcd(m1.endpoint)
        wait_for(lambda: a.put(b"k", b"over mTLS") is not None, 30, "a write")
        c = Etcd(m3.endpoint)
        assert c.value(b"k") == b"over mTLS"  # linearizable: through the leader, over the TLS peer links
        # The peer port speaks TLS only: a plain frame is refused with a reason in the log.
        with socket.create_connection(("127.0.0.1", m1.peer_port), timeout=5) as raw:
            raw.sendall(encode_frame(HELLO, [1, 1]))
            raw.settimeout(5)
            with pytest.raises((ConnectionResetError, AssertionError)):
                data = raw.recv(100)
                assert data and data[0] != 0x15  # a TLS alert (0x15) or a close: never a frame
        wait_for(lambda: "not a TLS client" in m1.log_text(), 10, "the refusal in the log")
        # Renewal: new files, no restart; the next handshake serves the new certificate.
        ctx = client_context(pki, leaves["m2"])
        assert served_serial(m1.peer_port, ctx) == leaves["m1"].serial
        renewed = pki.leaf("m1-renewed", cn="m1")
        pid = m1.proc.pid if m1.proc else 0
        time.sleep(1.1)
        replace_files(renewed, leaves["m1"])
        assert wait_serial(m1.peer_port, ctx, renewed.serial) == renewed.serial
        assert m1.proc is not None and m1.proc.pid == pid and m1.alive()
        wait_for(lambda: a.put(b"k", b"after renewal") is not None, 15, "a write after the renewal")
        assert c.value(b"k") == b"after renewal"
        a.close()
        c.close()
        for m in cluster.members:
            assert "peer TLS: not connecting" not in m.log_text(), m.log_text()[-2000:]


def test_impostor_peers_are_refused_before_any_raft_message(tmp_path: Path) -> None:
    """m4's certificate comes from another CA, m5's has a common name outside --peer-cert-allowed-cn; both trust
    the real CA. Three good members make the quorum of five and serve; the impostors never get a leader."""
    pki = Pki(tmp_path / "pki")
    rogue = Pki(tmp_path / "rogue", cn="rogue CA")
    leaves = {f"m{i}": pki.leaf(f"m{i}") for i in (1, 2, 3)}
    leaves["m4"] = rogue.leaf("m4")
    leaves["m5"] = pki.leaf("m5", cn="intruder")
    cluster = peer_cluster(tmp_path / "c", pki, leaves, "--peer-cert-allowed-cn", "m1,m2,m3,m4", size=5)
    with cluster:
        m1, _m2, _m3, m4, m5 = cluster.members
        a = Etcd(m1.endpoint)
        wait_for(lambda: a.put(b"k", b"v") is not None, 40, "a write with three of five")
        wait_for(lambda: "peer TLS: refused a connection from 127.0.0.1: certificate verification failed"
                 in m1.log_text(), 15, "m4's refusal")  # fmt: skip
        wait_for(lambda: "common name 'intruder' is not in --peer-cert-allowed-cn" in m1.log_text(), 15,
                 "m5's refusal")  # fmt: skip
        before = term(m1.endpoint)
        time.sleep(4.0)  # m4 and m5 campaign all along (election timeout 1.5 s): none of it may arrive
        assert term(m1.endpoint) == before
        assert a.put(b"k2", b"v2") is not None
        for bad in (m4, m5):
            text = bad.log_text()
            assert "leader is now" not in text, text[-2000:]
        # Refusals are logged once per source and reason, not once per retry.
        lines = [ln for ln in m1.log_text().splitlines() if "peer TLS: refused" in ln]
        reasons = {re.sub(r".*refused a connection from ", "", ln) for ln in lines}
        assert len(lines) == len(reasons) <= 4, lines
        # And m1 does not dial into the rogue member either: m4's server certificate is not from our CA.
        assert "peer TLS: not connecting to member" in m1.log_text()
        a.close()


def test_peer_port_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    leaves = {"m1": pki.leaf("m1")}
    with peer_cluster(tmp_path / "c", pki, leaves, size=1) as cluster:
        (m1,) = cluster.members
        data = b"?"
        try:
            with socket.create_connection(("127.0.0.1", m1.peer_port), timeout=5) as raw, client_context(
                pki
            ).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(encode_frame(HELLO, [1, 1]))
                data = s.recv(10)  # TLS1.3: the refusal arrives on the first read
        except (ssl.SSLError, OSError):
            data = b""
        assert data == b""
        wait_for(lambda: "peer TLS: refused a connection from 127.0.0.1: no client certificate presented"
                 in m1.log_text(), 10, "the refusal")  # fmt: skip


@pytest.mark.skipif(ETCDCTL is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")
def test_a_member_joins_over_tls_and_an_impostor_cannot(tmp_path: Path) -> None:
    import json
    import subprocess

    assert ETCDCTL is not None, "etcdctl is not installed"
    pki = Pki(tmp_path / "pki")
    leaves = {f"m{i}": pki.leaf(f"m{i}") for i in (1, 2, 3)}
    cluster = peer_cluster(tmp_path / "c", pki, leaves)

    def ctl(*args: str) -> tuple[int, str]:
        done = subprocess.run([ETCDCTL, f"--endpoints={','.join(cluster.endpoints[:3])}", "--command-timeout=10s",
                               *args], capture_output=True, text=True, timeout=30)  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    with cluster:
        wait_for(lambda: ctl("put", "before", "join")[0] == 0, 30, "a first write")
        m4_leaf = pki.leaf("m4")
        cluster.member_args["m4"] = ["--peer-cert-file", str(m4_leaf.cert), "--peer-key-file", str(m4_leaf.key)]
        m4 = cluster.add_member_process("m4")
        assert m4.peer_url.startswith("https://")
        rc, out = ctl("member", "add", "m4", "--peer-urls", m4.peer_url)
        assert rc == 0, out
        m4.start()
        cluster.wait_ready(40, [m4])
        e4 = Etcd(m4.endpoint)
        wait_for(lambda: e4.value(b"before", serializable=True) == b"join", 30, "m4 to catch up over TLS")
        e4.close()
        before = term(cluster.members[0].endpoint)
        rogue = Pki(tmp_path / "rogue", cn="rogue CA").leaf("m5")
        cluster.member_args["m5"] = ["--peer-cert-file", str(rogue.cert), "--peer-key-file", str(rogue.key)]
        m5 = cluster.add_member_process("m5")
        rc, out = ctl("member", "add", "m5", "--peer-urls", m5.peer_url, "--learner")
        assert rc == 0, out
        m5.start()
        assert m5.proc is not None
        assert m5.proc.wait(60) != 0
        assert "cannot join: no member of --initial-cluster answered" in m5.log_text(), m5.log_text()[-2000:]
        assert "it refused this member's peer certificate" in m5.log_text(), m5.log_text()[-2000:]
        members = json.loads(ctl("member", "list", "-w", "json")[1])["members"]
        assert next(m for m in members if m5.peer_url in m["peerURLs"]).get("name", "") == ""  # never started
        assert term(cluster.members[0].endpoint) == before
        assert ctl("put", "after", "impostor")[0] == 0
