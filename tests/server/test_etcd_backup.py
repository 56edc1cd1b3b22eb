"""etcd backups both ways: bbolt files read and written in Python, checked against Debian's etcd 3.4.

* unit: bbolt round trips (many pages, branch levels, overflow values), damaged files give
  BboltError/BackupError and nothing else;
* etcd -> Conclave: a real etcd's `etcdctl snapshot save` restored with `conclave snapshot restore`
  serves the same keys, history, revision and leases;
* Conclave -> etcd: a Conclave backup converted with `conclave snapshot convert --to etcd` is read
  by `etcdctl snapshot status` and restored by `etcdctl snapshot restore`, and etcd serves it;
* `conclave snapshot status` prints what `etcdctl snapshot status` prints for an etcd file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.kv.types import KeyValue, PutRequest
from conclave.machine import StateMachine
from conclave.server import etcd_backup
from conclave.server.backup import BackupError
from conclave.server.launcher import ProcessCluster, free_ports
from conclave.storage import bbolt

from .conftest import etcdctl_path, wait_for

ETCDCTL = etcdctl_path()
ETCD = shutil.which("etcd")
if ETCD is None and os.environ.get("CI") == "true":
    raise RuntimeError("etcd is required in CI (make system-deps installs it)")


# ---------------------------------------------------------------------- bbolt unit


def test_bbolt_round_trip_many_pages_branches_and_overflow() -> None:
    rng = random.Random(7)
    buckets = {
        b"big": [(i.to_bytes(4, "big") + bytes(rng.randrange(30)), bytes(rng.randrange(400)))
                 for i in range(30_000)],  # several branch levels at 4 KiB pages
        b"huge": [(b"one", b"z" * 50_000), (b"two", b"")],  # an overflow page chain
        b"empty": [],
    }
    data = bbolt.write_buckets(buckets)
    assert bbolt.read_buckets(data) == {k: sorted(v) for k, v in buckets.items()}
    assert bbolt.database_size(data) == len(data)


def test_bbolt_refuses_damage_with_a_reason_never_a_crash() -> None:
    data = bbolt.write_buckets({b"key": [(bytes([i]) * 3, b"v" * i) for i in range(1, 200)]})
    with pytest.raises(bbolt.BboltError, match="too short"):
        bbolt.read_buckets(data[:40])
    with pytest.raises(bbolt.BboltError, match=r"beyond the end|past the end"):
        bbolt.read_buckets(data[: 4096 * 3 + 100])
    # one broken meta page: the other one is used
    broken = bytearray(data)
    broken[16 + 20] ^= 0xFF
    assert bbolt.read_buckets(bytes(broken)) == bbolt.read_buckets(data)
    both = bytearray(broken)
    both[4096 + 16 + 20] ^= 0xFF
    with pytest.raises(bbolt.BboltError, match="checksum"):
        bbolt.read_buckets(bytes(both))
    rng = random.Random(3)
    for _ in range(300):  # random byte flips past the meta pages: an error or the data, nothing else
        flipped = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            flipped[rng.randrange(8192, len(data))] = rng.randrange(256)
        with contextlib.suppress(bbolt.BboltError):
            bbolt.read_buckets(bytes(flipped))


def test_conclave_store_round_trips_through_the_etcd_format() -> None:
    sm = StateMachine(1, [])
    store = sm.store
    index = 1
    for i in range(50):
        store.apply(PutRequest(key=f"k{i % 7}".encode(), value=f"v{i}".encode()), index)
        index += 1
    data = etcd_backup.machine_to_etcd_backup(sm)
    back, _, _ = etcd_backup.etcd_backup_to_machine(data)
    assert back.store.revision == store.revision
    assert back.store.hash_kv(0) == store.hash_kv(0)
    assert list(back.store.history_rows()) == list(store.history_rows())
    with pytest.raises(BackupError, match="checksum"):
        etcd_backup.read_etcd_backup(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BackupError, match="not an etcd backup"):
        etcd_backup.read_etcd_backup(bbolt.write_buckets({b"other": [(b"a", b"b")]}))


def test_protobuf_kv_codec_round_trip() -> None:
    kv = KeyValue(b"key", 3, 9, 2, b"\x00value", 0x694D_A235_583F_4608)
    assert etcd_backup.decode_kv(etcd_backup.encode_kv(kv)) == kv
    with pytest.raises(BackupError):
        etcd_backup.decode_kv(b"\x0a\x05ab")  # a length past the end


# ---------------------------------------------------------------------- against etcd 3.4


def _ctl(endpoint: str, *args: str, timeout: float = 30) -> tuple[int, str]:
    assert ETCDCTL is not None
    done = subprocess.run([ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=5s", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "ETCDCTL_API": "3"})
    return done.returncode, done.stdout + done.stderr


def _conclave(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conclave", *args], capture_output=True, text=True, timeout=120)


class EtcdProcess:
    def __init__(self, data_dir: Path, name: str = "default") -> None:
        self.client, self.peer = free_ports(2)
        self.endpoint = f"127.0.0.1:{self.client}"
        self.log = open(data_dir.parent / f"{data_dir.name}.log", "wb")  # noqa: SIM115
        assert ETCD is not None
        self.proc = subprocess.Popen(
            [ETCD, "--name", name, "--data-dir", str(data_dir),
             "--listen-client-urls", f"http://{self.endpoint}", "--advertise-client-urls", f"http://{self.endpoint}",
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-cluster", f"{name}=http://127.0.0.1:{self.peer}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: _ctl(self.endpoint, "endpoint", "status")[0] == 0, 30, "etcd to start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[type[EtcdProcess]]:
    if ETCD is None or ETCDCTL is None:
        pytest.skip("etcd 3.4 is not installed")
    started: list[EtcdProcess] = []

    class Tracked(EtcdProcess):
        def __init__(self, data_dir: Path, name: str = "default") -> None:
            super().__init__(data_dir, name)
            started.append(self)

    yield Tracked
    for e in started:
        e.stop()


WRITES = [
    ("put", "foo", "bar"), ("put", "foo", "baz"), ("put", "a", "1"), ("put", "b/x", "2"), ("del", "a"),
    ("put", "b/y", "3"), ("put", "foo", "qux"),
]


def _fill(endpoint: str) -> int:
    for cmd in WRITES:
        rc, out = _ctl(endpoint, *cmd)
        assert rc == 0, out
    rc, out = _ctl(endpoint, "lease", "grant", "600")
    assert rc == 0, out
    lease = out.split()[1]
    assert _ctl(endpoint, "put", "leased", "v", f"--lease={lease}")[0] == 0
    assert _ctl(endpoint, "compact", "3")[0] == 0
    assert _ctl(endpoint, "put", "after", "compaction")[0] == 0
    return int(lease, 16)


def _view(endpoint: str) -> dict[str, object]:
    """What a client sees: every key now, and at two past revisions (history survives)."""
    out: dict[str, object] = {}
    for rev in ("", "4", "6"):
        rc, text = _ctl(endpoint, "get", "", "--from-key", "-w", "json", *(["--rev", rev] if rev else []))
        assert rc == 0, text
        body = json.loads(text)
        out[rev or "now"] = [(kv["key"], kv.get("value"), kv["create_revision"], kv["mod_revision"], kv["version"],
                              kv.get("lease", 0)) for kv in body.get("kvs", [])]
        if not rev:
            out["revision"] = body["header"]["revision"]
    return out


AUTH_SCRIPT = [
    ("user", "add", "root:rootpw"), ("role", "add", "app"),
    ("role", "grant-permission", "app", "readwrite", "/app/", "--prefix"),
    ("role", "grant-permission", "app", "read", "b/x"), ("user", "add", "alice:alicepw"),
    ("user", "grant-role", "alice", "app"),
]


def test_an_etcd_backup_restores_into_conclave(etcd_factory: type[EtcdProcess], tmp_path: Path) -> None:
    etcd = etcd_factory(tmp_path / "etcd")
    lease = _fill(etcd.endpoint)
    for cmd in AUTH_SCRIPT:
        rc, out = _ctl(etcd.endpoint, *cmd)
        assert rc == 0, out
    want = _view(etcd.endpoint)
    backup = tmp_path / "etcd.db"
    rc, out = _ctl(etcd.endpoint, "snapshot", "save", str(backup))
    assert rc == 0, out
    etcd.stop()

    # the auth store comes along: users with etcd's bcrypt hashes, their roles, the permissions
    import bcrypt

    from conclave.kv.auth import Permission, PermType

    sm, _, _ = etcd_backup.etcd_backup_to_machine(backup.read_bytes())
    assert sorted(sm.auth.users) == ["alice", "root"] and sm.auth.users["alice"].roles == ("app",)
    assert bcrypt.checkpw(b"alicepw", sm.auth.users["alice"].password_hash)
    assert sm.auth.roles["app"].permissions == (Permission(PermType.READWRITE, b"/app/", b"/app0"),
                                                Permission(PermType.READ, b"b/x", b""))
    assert sm.auth.permitted("alice", b"/app/1", b"", PermType.WRITE)
    assert not sm.auth.permitted("alice", b"b/x", b"", PermType.WRITE)

    # conclave snapshot status says what etcdctl snapshot status says, in every output format
    for fmt in ("simple", "table", "json"):
        theirs = subprocess.run([ETCDCTL or "", "snapshot", "status", str(backup), "-w", fmt],
                                capture_output=True, text=True, timeout=30).stdout
        ours = _conclave("snapshot", "status", str(backup), "-w", fmt)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs

    c = ProcessCluster(tmp_path / "conclave", 1)
    m = c.members[0]
    done = _conclave("snapshot", "restore", str(backup), "--data-dir", str(m.data_dir), "--name", m.name,
                     "--initial-cluster", f"{m.name}={m.peer_url}", "--initial-cluster-token", c.token,
                     "--initial-advertise-peer-urls", m.peer_url)
    assert done.returncode == 0, done.stderr
    c.start()
    try:
        wait_for(lambda: _ctl(c.endpoints[0], "get", "foo")[0] == 0, 30, "the restored member")
        assert _view(c.endpoints[0]) == want
        rc, out = _ctl(c.endpoints[0], "lease", "timetolive", f"{lease:x}", "--keys")
        assert rc == 0 and "leased" in out and "remaining" in out, out
        rc, out = _ctl(c.endpoints[0], "get", "foo", "--rev", "2")
        assert "compacted" in out, out  # the backup's compaction carried over
    finally:
        c.stop()


def test_a_conclave_backup_goes_to_etcd(etcd_factory: type[EtcdProcess], tmp_path: Path) -> None:
    c = ProcessCluster(tmp_path / "conclave", 1)
    c.start()
    try:
        wait_for(lambda: _ctl(c.endpoints[0], "put", "warm", "up")[0] == 0, 30, "first write")
        _fill(c.endpoints[0])
        want = _view(c.endpoints[0])
        backup = tmp_path / "conclave.db"
        rc, out = _ctl(c.endpoints[0], "snapshot", "save", str(backup))
        assert rc == 0, out
    finally:
        c.stop()
    # etcd's tools refuse Conclave's own format (the README says which tool reads which file) ...
    rc, out = _ctl(c.endpoints[0], "snapshot", "status", str(backup))
    assert rc != 0
    # ... and read the converted file
    converted = tmp_path / "for-etcd.db"
    done = _conclave("snapshot", "convert", str(backup), str(converted), "--to", "etcd")
    assert done.returncode == 0, done.stderr
    rc, out = _ctl("", "snapshot", "status", str(converted), "-w", "json")
    assert rc == 0, out
    status = json.loads(out.splitlines()[0])
    assert status["revision"] == want["revision"]
    restored = tmp_path / "etcd-restored"
    rc, out = _ctl("", "snapshot", "restore", str(converted), "--data-dir", str(restored))
    assert rc == 0, out
    etcd = etcd_factory(restored)
    assert _view(etcd.endpoint) == want
    # and back again: the converted file restores into Conclave too (convert refuses to overwrite)
    again = _conclave("snapshot", "convert", str(converted), str(converted), "--to", "conclave")
    assert again.returncode == 1 and "exists" in again.stderr
    h1 = hashlib.sha256(converted.read_bytes()).hexdigest()
    back = _conclave("snapshot", "convert", str(converted), str(tmp_path / "back.db"), "--to", "conclave")
    assert back.returncode == 0, back.stderr
    assert hashlib.sha256(converted.read_bytes()).hexdigest() == h1


def test_users_and_roles_of_a_conclave_backup_reach_etcd(etcd_factory: type[EtcdProcess], tmp_path: Path) -> None:
    import bcrypt

    from conclave.kv import auth

    sm = StateMachine(1, [])
    sm.store.apply(PutRequest(key=b"/app/x", value=b"1"), 1)
    sm.store.apply(PutRequest(key=b"other", value=b"2"), 2)
    for i, cmd in enumerate([
        auth.UserAddRequest("root", bcrypt.hashpw(b"rootpw", bcrypt.gensalt(4))),
        auth.UserGrantRoleRequest("root", "root"), auth.RoleAddRequest("app"),
        auth.RoleGrantPermissionRequest("app", auth.Permission(auth.PermType.READWRITE, b"/app/", b"/app0")),
        auth.UserAddRequest("alice", bcrypt.hashpw(b"alicepw", bcrypt.gensalt(4))),
        auth.UserGrantRoleRequest("alice", "app"), auth.AuthEnableRequest(),
    ]):
        sm.auth.apply(cmd, 10 + i)
    converted = tmp_path / "auth.db"
    converted.write_bytes(etcd_backup.machine_to_etcd_backup(sm))
    restored = tmp_path / "etcd-restored"
    rc, out = _ctl("", "snapshot", "restore", str(converted), "--data-dir", str(restored))
    assert rc == 0, out
    etcd = etcd_factory(restored)
    rc, out = _ctl(etcd.endpoint, "--user", "alice:alicepw", "get", "/app/x", "--print-value-only")
    assert (rc, out.strip()) == (0, "1"), out
    rc, out = _ctl(etcd.endpoint, "--user", "alice:alicepw", "get", "other")
    assert rc != 0 and "permission denied" in out, out
    rc, out = _ctl(etcd.endpoint, "get", "other")
    assert rc != 0 and "user name is empty" in out, out  # auth stayed enabled
    rc, out = _ctl(etcd.endpoint, "--user", "root:rootpw", "role", "get", "app")
    assert rc == 0 and "[/app/, /app0) (prefix /app/)" in out, out


def test_restore_refuses_a_damaged_etcd_backup_clearly(tmp_path: Path) -> None:
    sm = StateMachine(1, [])
    sm.store.apply(PutRequest(key=b"k", value=b"v"), 1)
    data = etcd_backup.machine_to_etcd_backup(sm)
    bad = tmp_path / "bad.db"
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    done = _conclave("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "x"))
    assert done.returncode == 1 and "checksum" in done.stderr and "Traceback" not in done.stderr
    started = time.monotonic()
    torn = tmp_path / "torn.db"
    torn.write_bytes(data[: len(data) // 2])
    done = _conclave("snapshot", "status", str(torn))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 60


def test_status_table_narrows_for_a_hash_with_leading_zero_nibbles() -> None:
    # what etcdctl 3.4 printed for a backup whose hash is 0x0698e6f6 (seen in a CI run, where the
    # fixed 8-wide column this replaced made the comparison above fail)
    from conclave.cli.snapshot import status_table

    assert status_table(0x698E6F6, 10, 18, 20 * 1024) == "\n".join([
        "+---------+----------+------------+------------+",
        "|  HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |",
        "+---------+----------+------------+------------+",
        "| 698e6f6 |       10 |         18 |      20 kB |",
        "+---------+----------+------------+------------+",
    ])
