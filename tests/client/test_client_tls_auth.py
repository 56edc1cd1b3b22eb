"""Conclave's Python client (native and gRPC), aetcd and python3-etcd3 against one `conclave serve`
member with mutual TLS on its client and native ports and auth enabled: log in as a limited user,
read and write, be refused outside the user's keys and with a wrong password; CN authentication
with the client certificate alone; the client's re-authentication when the member's token expires;
and the CLI's etcdctl-style flags over TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge.tls_support import Pki, make_pki

from conclave import Client
from conclave.client import AuthFailed, ClientError, PermissionDenied, TLSError, Unavailable
from conclave.server.launcher import ProcessCluster

COMPAT_CLIENT = Path(__file__).resolve().parents[1] / "compat" / "clients" / "tls_auth_client.py"
REPO_SRC = Path(__file__).resolve().parents[2] / "src"
TOKEN_TTL_S = 2  # --auth-token-ttl of the member: short, so the re-authentication path is exercised


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp_path_factory.mktemp("tls-auth"), 1, client_tls=True, extra_args=[
        "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
        "--trusted-ca-file", str(pki.ca), "--client-cert-auth", "--auth-token-ttl", str(TOKEN_TTL_S)])
    c.start()
    try:
        m = c.members[0]
        with Client([m.native_endpoint], ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                    key_file=str(pki.client_key), timeout=20, discover=False) as root:
            root.user_add("root", "rootpw")
            root.role_add("app")
            root.role_grant_permission("app", "readwrite", "/app/", prefix=True)
            root.user_add("alice", "pw")
            root.user_grant_role("alice", "app")
            root.role_add("root")
            root.user_grant_role("root", "root")
            root.auth_enable()
        yield c
    finally:
        c.stop()


def tls_kw(pki: Pki) -> dict[str, str]:
    return {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}


@pytest.mark.parametrize("protocol", ["native", "grpc"])
def test_the_client_over_tls_as_a_limited_user(member: ProcessCluster, pki: Pki, protocol: str) -> None:
    m = member.members[0]
    ep = m.native_endpoint if protocol == "native" else m.endpoint
    with Client([ep], protocol=protocol, user="alice", password="pw", timeout=10, discover=False,
                **tls_kw(pki)) as c:
        c.put(f"/app/{protocol}", "v")
        assert c.get(f"/app/{protocol}") == b"v"
        with pytest.raises(PermissionDenied, match=r"^etcdserver: permission denied$"):
            c.put("/outside", "x")
        with pytest.raises(PermissionDenied):
            c.user_list()  # auth management needs root
        assert c.user_get("alice") == ("app",)  # one's own user is readable
        with pytest.raises(PermissionDenied):  # a watch is checked when it is created
            c.watch("/outside").start()
        w = c.watch("/app/", prefix=True)
        w.start()
        c.put(f"/app/{protocol}-w", "seen")
        ev = w.next(timeout=10)
        assert ev is not None and ev.kv.value == b"seen"
        w.close()
        # The member forgets the token TOKEN_TTL_S after its last use: the next call is refused
        # with "invalid auth token", and the client logs in again and retries by itself.
        time.sleep(TOKEN_TTL_S + 1.5)
        c.put(f"/app/{protocol}", "after-expiry")
        assert c.get(f"/app/{protocol}") == b"after-expiry"
    with Client([ep], protocol=protocol, user="alice", password="wrong", timeout=10, discover=False,
                **tls_kw(pki)) as c, \
            pytest.raises(AuthFailed, match=r"^etcdserver: authentication failed, invalid user ID or password$"):
        c.get("/app/x")


@pytest.mark.parametrize("protocol", ["native", "grpc"])
def test_the_certificate_alone_is_the_user_named_by_its_cn(member: ProcessCluster, pki: Pki, protocol: str) -> None:
    m = member.members[0]
    ep = m.native_endpoint if protocol == "native" else m.endpoint
    with Client([ep], protocol=protocol, timeout=10, discover=False, **tls_kw(pki)) as c:  # CN "root"
        c.put("/outside", "by-cn")
        assert "alice" in c.user_list()


def test_tls_refusals_are_clear(member: ProcessCluster, pki: Pki) -> None:
    m = member.members[0]
    with Client([m.native_endpoint], user="alice", password="pw", timeout=4, connect_timeout=2,
                discover=False) as c, pytest.raises(Unavailable, match=r"TLS"):  # plain text on the TLS port
        c.get("/app/x")
    with Client([m.native_endpoint], ca_file=str(pki.ca), user="alice", password="pw", timeout=4,
                connect_timeout=2, discover=False) as c, \
            pytest.raises((TLSError, Unavailable), match=r"client certificate"):  # none, under --client-cert-auth
        c.get("/app/x")
    with Client([m.endpoint], protocol="grpc", timeout=4, connect_timeout=2, discover=False) as c, \
            pytest.raises(ClientError, match=r"TLS"):
        c.get("/app/x")


@pytest.mark.parametrize("lib", ["aetcd", "etcd3"])
def test_third_party_clients_over_tls_as_a_user(member: ProcessCluster, pki: Pki, lib: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    done = subprocess.run(
        [sys.executable, str(COMPAT_CLIENT), lib, member.members[0].endpoint, str(pki.ca), str(pki.client_cert),
         str(pki.client_key), "alice", "pw", f"/app/{lib}/"],
        capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["get"] in ("v1", "v2")
    assert "permission denied" in result["denied"], result
    assert "authentication failed" in result["wrong_password"], result


def test_the_cli_with_etcdctl_flags_over_tls(member: ProcessCluster, pki: Pki) -> None:
    m = member.members[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env["PYTHONPATH"] = str(REPO_SRC)
    tls = [f"--cacert={pki.ca}", f"--cert={pki.client_cert}", f"--key={pki.client_key}"]

    def conclave(*argv: str, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
        d = subprocess.run([sys.executable, "-m", "conclave", *argv], capture_output=True, text=True, timeout=60,
                           env={**env, **(extra_env or {})})
        return d.returncode, d.stdout, d.stderr

    ep = f"--endpoints={m.native_endpoint}"
    assert conclave(ep, *tls, "--user=alice:pw", "put", "/app/cli", "1") == (0, "OK\n", "")
    assert conclave("get", "/app/cli", ep, *tls, "--user", "alice", "--password", "pw") == (0, "/app/cli\n1\n", "")
    assert conclave(ep, *tls, "get", "/app/cli", extra_env={"CONCLAVE_USER": "alice:pw"})[1] == "/app/cli\n1\n"
    assert conclave(ep, *tls, "--user=alice:pw", "put", "/outside", "1") == (
        1, "", "Error: etcdserver: permission denied\n")
    assert conclave(ep, *tls, "--user=alice:bad", "get", "/app/cli") == (
        2, "", "Error: etcdserver: authentication failed, invalid user ID or password\n")
    assert conclave(ep, *tls, "--user=root:rootpw", "role", "get", "app") == (
        0, "Role app\nKV Read:\n\t[/app/, /app0) (prefix /app/)\nKV Write:\n\t[/app/, /app0) (prefix /app/)\n", "")
    rc, out, _ = conclave(ep, *tls, "--user=root:rootpw", "auth", "status")
    assert rc == 0 and out.startswith("Authentication Status: true\nAuthRevision: ")
    grpc_ep = f"--endpoints={m.endpoint}"
    assert conclave(grpc_ep, "--protocol=grpc", *tls, "--user=alice:pw", "get", "/app/cli", "--print-value-only") \
        == (0, "1\n", "")
    rc, _, err = conclave(ep, "--user=alice:pw", "get", "/app/cli", "--timeout=3")  # no TLS flags
    assert rc == 1 and "TLS" in err


@pytest.mark.parametrize("protocol", ["native", "grpc"])
def test_insecure_skip_tls_verify_needs_no_ca(member: ProcessCluster, pki: Pki, protocol: str) -> None:
    m = member.members[0]
    ep = m.native_endpoint if protocol == "native" else m.endpoint
    with Client([ep], protocol=protocol, user="alice", password="pw", timeout=10, discover=False,
                insecure_skip_tls_verify=True, cert_file=str(pki.client_cert), key_file=str(pki.client_key)) as c:
        c.put(f"/app/skip-{protocol}", "v")
        assert c.get(f"/app/skip-{protocol}") == b"v"


def test_failed_logins_over_new_native_connections_are_rate_limited(member: ProcessCluster, pki: Pki) -> None:
    """The limiter counts per (user, client host): opening a new connection (a new port) for every
    guess does not reset it (docs/security.md, Brute force: locked after the 5th failure)."""
    m = member.members[0]
    with Client([m.native_endpoint], timeout=10, discover=False, **tls_kw(pki)) as root:  # CN root
        root.user_add("eve", "right")
    for _ in range(5):
        with Client([m.native_endpoint], user="eve", password="guess", timeout=10, discover=False,
                    **tls_kw(pki)) as c, pytest.raises(AuthFailed):
            c.get("/app/x")
    with Client([m.native_endpoint], user="eve", password="right", timeout=10, discover=False,
                **tls_kw(pki)) as c, pytest.raises(AuthFailed):
        c.get("/app/x")  # locked: even the right password is refused, unchecked
    time.sleep(4.5)  # the lock (1 s, doubled by the refused attempt above) runs out
    with Client([m.native_endpoint], user="eve", password="right", timeout=10, discover=False,
                **tls_kw(pki)) as c, pytest.raises(PermissionDenied):  # logged in: eve has no role
        c.get("/app/x")


def test_a_three_member_tls_cluster_failover_logs_in_on_the_next_member(tmp_path: Path, pki: Pki) -> None:
    """Discovery learns the other members' https:// native addresses; when the member in use is
    killed, the client connects to another one over TLS, logs in there and goes on."""
    c = ProcessCluster(tmp_path / "c3", 3, client_tls=True, extra_args=[
        "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
        "--trusted-ca-file", str(pki.ca), "--client-cert-auth"])
    c.start()
    try:
        first = c.members[0]
        with Client([first.native_endpoint], timeout=30, **tls_kw(pki)) as root:  # CN root, auth still off
            root.user_add("root", "rootpw")
            root.role_add("root")
            root.user_grant_role("root", "root")
            root.role_add("app")
            root.role_grant_permission("app", "readwrite", "/app/", prefix=True)
            root.user_add("alice", "pw")
            root.user_grant_role("alice", "app")
            root.auth_enable()
        with Client([first.native_endpoint], user="alice", password="pw", timeout=30, **tls_kw(pki)) as alice:
            alice.put("/app/k", "1")
            assert sorted(alice.aio.endpoints) == sorted(m.native_endpoint for m in c.members)
            used = next(m for m in c.members if m.native_endpoint == alice.aio.endpoint)
            used.kill()
            # A read is retried freely: it moves to another member over a new TLS connection,
            # logged in there (a write could meet the dead connection first: OutcomeUnknown).
            assert alice.get("/app/k") == b"1"
            alice.put("/app/k", "2")
            assert alice.aio.endpoint != used.native_endpoint
            assert alice.get("/app/k") == b"2"
            with pytest.raises(PermissionDenied):
                alice.put("/outside", "x")
    finally:
        c.stop()
