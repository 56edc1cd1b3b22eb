"""`conclave get/put/del/txn/watch/lease/lock/elect/member/status/compact` against the shared cluster."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest

from conclave.cli.main import main
from conclave.server.launcher import ProcessCluster

from .conftest import native_endpoints


def cli(cluster: ProcessCluster, capsys: pytest.CaptureFixture[str], *argv: str,
        grpc: bool = False) -> tuple[int, str, str]:
    eps = ",".join(cluster.endpoints if grpc else native_endpoints(cluster))
    extra = ["--protocol", "grpc"] if grpc else []
    rc = main([argv[0], "--endpoints", eps, *extra, *argv[1:]])
    out, err = capsys.readouterr()
    return rc, out, err


def test_put_get_del_like_etcdctl(cluster: ProcessCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(cluster, capsys, "put", "cli/a", "1") == (0, "OK\n", "")
    assert cli(cluster, capsys, "put", "cli/b", "2")[0] == 0
    assert cli(cluster, capsys, "get", "cli/a")[1] == "cli/a\n1\n"
    assert cli(cluster, capsys, "get", "cli/", "--prefix", "--print-value-only")[1] == "1\n2\n"
    assert cli(cluster, capsys, "get", "cli/", "--prefix", "--keys-only", grpc=True)[1] == "cli/a\n\ncli/b\n\n"
    rc, out, _ = cli(cluster, capsys, "get", "cli/a", "-w", "json")
    doc = json.loads(out)
    assert rc == 0 and doc["count"] == 1 and doc["kvs"][0]["key"] == "Y2xpL2E=" and doc["kvs"][0]["value"] == "MQ=="
    rc, out, _ = cli(cluster, capsys, "get", "cli/", "--prefix", "-w", "table")
    assert rc == 0 and out.splitlines()[3].split("|")[1].strip() == "cli/a"
    assert cli(cluster, capsys, "del", "cli/", "--prefix")[1] == "2\n"
    assert cli(cluster, capsys, "get", "cli/a")[1] == ""


def test_txn_from_stdin(cluster: ProcessCluster, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    cli(cluster, capsys, "put", "tx/k", "v1")
    monkeypatch.setattr(sys, "stdin", io.StringIO('value("tx/k") = "v1"\n\nput tx/k v2\nget tx/k\n\nget tx/k\n'))
    rc, out, _ = cli(cluster, capsys, "txn")
    assert rc == 0 and out == "SUCCESS\n\nOK\n\ntx/k\nv2\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO('mod("tx/k") < "1"\n\nput tx/k v3\n\nget tx/k\n'))
    rc, out, _ = cli(cluster, capsys, "txn")
    assert out == "FAILURE\n\ntx/k\nv2\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO('nonsense("x") ~ 1\n\n\n'))
    rc, _, err = cli(cluster, capsys, "txn")
    assert rc == 1 and err.startswith("Error: bad compare") and err.count("\n") == 1


def test_lease_member_status_compact(cluster: ProcessCluster, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(cluster, capsys, "lease", "grant", "30")
    assert rc == 0 and out.startswith("lease ") and "granted with TTL(30s)" in out
    lid = out.split()[1]
    assert cli(cluster, capsys, "put", "ls/k", "v", "--lease", lid)[0] == 0
    out = cli(cluster, capsys, "lease", "timetolive", lid, "--keys")[1]
    assert "granted with TTL(30s)" in out and "attached keys([ls/k])" in out
    assert "keepalived with TTL(30)" in cli(cluster, capsys, "lease", "keep-alive", lid, "--once")[1]
    assert lid in cli(cluster, capsys, "lease", "list")[1]
    assert cli(cluster, capsys, "lease", "revoke", lid)[1] == f"lease {lid} revoked\n"
    rc, _, err = cli(cluster, capsys, "lease", "revoke", lid)
    assert rc == 1 and err == "Error: etcdserver: requested lease not found\n"
    out = cli(cluster, capsys, "member", "list")[1]
    assert out.count("started") == 3 and all(ep in out for ep in native_endpoints(cluster))
    rc, out, _ = cli(cluster, capsys, "status", "-w", "json")
    assert rc == 0 and sum(s["Status"]["leader"] == s["Status"]["header"]["member_id"] for s in json.loads(out)) == 1
    assert "RAFT TERM" in cli(cluster, capsys, "status", "-w", "table")[1]
    rev = json.loads(cli(cluster, capsys, "put", "cp/k", "v", "-w", "json")[1])["header"]["revision"]
    assert cli(cluster, capsys, "compact", str(rev)) == (0, f"compacted revision {rev}\n", "")
    rc, _, err = cli(cluster, capsys, "get", "cp/k", "--rev", str(rev - 1))
    assert rc == 1 and err == "Error: etcdserver: mvcc: required revision has been compacted\n"


def test_errors_are_one_line_and_exit_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["get", "k", "--endpoints", "127.0.0.1:1", "--timeout", "0.5"])
    _, err = capsys.readouterr()
    assert rc == 1 and err.startswith("Error: ") and err.count("\n") == 1
    rc = main(["lease", "revoke", "not-hex", "--endpoints", "127.0.0.1:1"])
    assert rc == 1 and "bad lease id" in capsys.readouterr().err


def test_watch_and_lock_commands_in_processes(cluster: ProcessCluster) -> None:
    eps = ",".join(native_endpoints(cluster))
    watch = subprocess.Popen([sys.executable, "-m", "conclave", "watch", "wt/", "--prefix", "--max-events", "2",
                              "--endpoints", eps], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    locked = subprocess.run(
        [sys.executable, "-m", "conclave", "lock", "--endpoints", eps, "cli-lock",
         sys.executable, "-c", "import os; print(os.environ['CONCLAVE_FENCING_TOKEN'])"],
        capture_output=True, text=True, timeout=30)
    assert locked.returncode == 0 and int(locked.stdout) > 0
    time.sleep(1.0)  # the watch process is registered by now (it started before the lock run)
    subprocess.run([sys.executable, "-m", "conclave", "put", "wt/1", "x", "--endpoints", eps], check=True, timeout=30)
    subprocess.run([sys.executable, "-m", "conclave", "del", "wt/1", "--endpoints", eps], check=True, timeout=30)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert out == "PUT\nwt/1\nx\nDELETE\nwt/1\n\n"
