"""etcd v3 backups: read one into a Conclave state machine, and write one from it.

Theory of operation
-------------------
``etcdctl snapshot save`` against etcd writes its bbolt backend (``storage/bbolt.py``) followed
by a SHA-256 of it. What Conclave needs from its buckets, and what it writes back:

* ``key``: one entry per stored revision; the key is the revision (main u64 BE, ``_``, sub u64
  BE, and a trailing ``t`` for a deletion), the value an ``mvccpb.KeyValue`` (fields 1 key,
  2 create_revision, 3 mod_revision, 4 version, 5 value, 6 lease);
* ``lease``: lease id u64 BE -> ``leasepb.Lease`` (1 ID, 2 TTL);
* ``meta``: ``consistent_index`` (u64 BE, the raft index applied), ``finishedCompactRev`` and
  ``scheduledCompactRev`` (revision keys), ``term`` (etcd 3.5+);
* ``auth`` (``authEnabled`` one byte, ``authRevision`` u64 BE), ``authUsers`` (name ->
  ``authpb.User``: 1 name, 2 bcrypt password hash, 3 roles, 4 options{1 no_password}) and
  ``authRoles`` (name -> ``authpb.Role``: 1 name, 2 permissions{1 type, 2 key, 3 range_end});
  (imported into the machine's ``AuthStore`` as they are: the hashes are bcrypt in both);
* ``members``/``members_removed``/``cluster``/``alarm``: a restore builds a NEW cluster, so
  members are written for etcd's tools (``etcdctl snapshot restore`` replaces them) and not read.

The current revision of an imported store is the highest of the key bucket's revisions and the
compact revisions (a compaction may have removed the newest deletion). A written backup holds
every record the Conclave store keeps, so ``etcdctl snapshot status`` reports the same revision
and ``etcdctl snapshot restore`` + ``etcd`` serve the same keys, leases and history.

The protobuf messages are five flat ones; they are (de)coded here with the varint/length wire
rules, so the server layer needs no generated code. Every malformed field raises ``BackupError``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from conclave.kv.auth import AuthStore, Permission, PermType, Role, User
from conclave.kv.mvcc import Store
from conclave.kv.types import KeyValue
from conclave.machine import StateMachine
from conclave.server.backup import BackupError
from conclave.storage import bbolt

DIGEST = 32
REV = struct.Struct(">Q")
U64 = struct.Struct(">Q")
CLUSTER_VERSION = b"3.4.0"


@dataclass(slots=True)
class EtcdUser:
    name: str
    password_hash: bytes
    roles: list[str]
    no_password: bool = False


@dataclass(slots=True)
class EtcdRole:
    name: str
    permissions: list[tuple[int, bytes, bytes]]  # (authpb type READ 0 / WRITE 1 / READWRITE 2, key, range_end)


@dataclass(slots=True)
class EtcdAuth:
    enabled: bool = False
    revision: int = 0
    users: list[EtcdUser] = field(default_factory=list)
    roles: list[EtcdRole] = field(default_factory=list)


@dataclass(slots=True)
class EtcdBackup:
    store: Store
    consistent_index: int
    term: int
    auth: EtcdAuth


def looks_like_etcd_backup(data: bytes) -> bool:
    return bbolt.looks_like_bbolt(data)


def strip_digest(data: bytes) -> bytes:
    """The bbolt file without etcd's trailing SHA-256, checked when it is there."""
    if len(data) % 512 == DIGEST:
        body, digest = data[:-DIGEST], data[-DIGEST:]
        if hashlib.sha256(body).digest() != digest:
            raise BackupError("etcd backup checksum mismatch: the file is corrupt (sha256 of the database differs)")
        return body
    return data


# ---------------------------------------------------------------------- protobuf wire (flat messages)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise BackupError("malformed protobuf varint in the backup")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise BackupError("malformed protobuf field (length past the end) in the backup")
            yield number, data[pos:pos + size]
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise BackupError(f"unsupported protobuf wire type {wire} in the backup")
    if pos != len(data):
        raise BackupError("malformed protobuf message in the backup")


def _int64(v: int | bytes) -> int:
    if isinstance(v, bytes):
        raise BackupError("a protobuf integer field holds bytes")
    return v - (1 << 64) if v >= 1 << 63 else v


def _bytes(v: int | bytes) -> bytes:
    if not isinstance(v, bytes):
        raise BackupError("a protobuf bytes field holds an integer")
    return v


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc(fields: list[tuple[int, int | bytes]]) -> bytes:
    """Fields in order, proto3 style: zero integers and empty bytes are left out."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bytes):
            if value:
                out += _enc_varint(number << 3 | 2) + _enc_varint(len(value)) + value
        elif value:
            out += _enc_varint(number << 3) + _enc_varint(value)
    return bytes(out)


def decode_kv(data: bytes) -> KeyValue:
    f: dict[int, int | bytes] = {}
    for n, v in _fields(data):
        f[n] = v
    return KeyValue(_bytes(f.get(1, b"")), _int64(f.get(2, 0)), _int64(f.get(3, 0)), _int64(f.get(4, 0)),
                    _bytes(f.get(5, b"")), _int64(f.get(6, 0)))


def encode_kv(kv: KeyValue) -> bytes:
    return _enc([(1, kv.key), (2, kv.create_revision), (3, kv.mod_revision), (4, kv.version),
                 (5, kv.value), (6, kv.lease)])


def rev_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    return REV.pack(main) + b"_" + REV.pack(sub) + (b"t" if tombstone else b"")


def parse_rev_key(k: bytes) -> tuple[int, int, bool]:
    if len(k) not in (17, 18) or k[8:9] != b"_" or (len(k) == 18 and k[17:] != b"t"):
        raise BackupError(f"key bucket entry {k!r} is not an etcd revision")
    return REV.unpack_from(k, 0)[0], REV.unpack_from(k, 9)[0], len(k) == 18


# ---------------------------------------------------------------------- etcd -> Conclave


def read_etcd_backup(data: bytes) -> EtcdBackup:
    """Parse an etcd v3 backup (with or without its digest). Raises BackupError."""
    try:
        buckets = bbolt.read_buckets(strip_digest(data))
    except bbolt.BboltError as exc:
        raise BackupError(f"not an etcd backup: {exc}") from None
    if b"key" not in buckets or b"meta" not in buckets:
        raise BackupError("not an etcd backup: a bbolt file without etcd's 'key' and 'meta' buckets")
    meta = dict(buckets[b"meta"])

    def u64(name: bytes) -> int:
        raw = meta.get(name)
        if raw is None:
            return 0
        if len(raw) != 8:
            raise BackupError(f"meta {name.decode()} is {len(raw)} bytes, not 8")
        return int(U64.unpack(raw)[0])

    def rev(name: bytes) -> int:
        raw = meta.get(name)
        return parse_rev_key(raw)[0] if raw else 0

    compact = rev(b"finishedCompactRev") if b"finishedCompactRev" in meta else -1  # -1: never compacted
    revision = max(1, compact, rev(b"scheduledCompactRev"))
    per_key: dict[bytes, list[tuple[int, int, KeyValue | None]]] = {}
    for k, v in buckets[b"key"]:
        main, sub, tomb = parse_rev_key(k)
        kv = decode_kv(v)
        if not kv.key:
            raise BackupError(f"revision {main}.{sub} holds no key")
        revision = max(revision, main)
        per_key.setdefault(kv.key, []).append((main, sub, None if tomb else KeyValue(
            kv.key, kv.create_revision, main, kv.version, kv.value, kv.lease)))
    leases: dict[int, int] = {}
    for k, v in buckets.get(b"lease", []):
        f = dict(_fields(v))
        lid = _int64(f.get(1, 0))
        if len(k) != 8 or lid != int(U64.unpack(k)[0]) or lid <= 0:
            raise BackupError(f"lease bucket entry {k.hex()} does not match its lease")
        leases[lid] = _int64(f.get(2, 0))
    for key, recs in per_key.items():
        last = recs[-1][2]
        if last is not None and last.lease and last.lease not in leases:
            # etcd drops such attachments on restore too (the lease expired before the backup)
            recs[-1] = (recs[-1][0], recs[-1][1], KeyValue(key, last.create_revision, last.mod_revision,
                                                          last.version, last.value, 0))
    try:
        store = Store.load(revision, compact, sorted(per_key.items()), leases)
    except ValueError as exc:
        raise BackupError(f"etcd backup records are inconsistent: {exc}") from None
    return EtcdBackup(store, u64(b"consistent_index"), u64(b"term") or 1, _read_auth(buckets))


def _read_auth(buckets: dict[bytes, bbolt.Items]) -> EtcdAuth:
    auth = EtcdAuth()
    meta = dict(buckets.get(b"auth", []))
    auth.enabled = meta.get(b"authEnabled", b"\0")[:1] == b"\1"
    if len(meta.get(b"authRevision", b"")) == 8:
        auth.revision = int(U64.unpack(meta[b"authRevision"])[0])
    for _, v in buckets.get(b"authUsers", []):
        name, pw, roles, no_pw = b"", b"", [], False
        for n, x in _fields(v):
            if n == 1:
                name = _bytes(x)
            elif n == 2:
                pw = _bytes(x)
            elif n == 3:
                roles.append(_bytes(x).decode())
            elif n == 4:
                no_pw = any(k == 1 and bool(val) for k, val in _fields(_bytes(x)))
        auth.users.append(EtcdUser(name.decode(), pw, roles, no_pw))
    for _, v in buckets.get(b"authRoles", []):
        rname, perms = b"", []
        for n, x in _fields(v):
            if n == 1:
                rname = _bytes(x)
            elif n == 2:
                p = dict(_fields(_bytes(x)))
                perms.append((_int64(p.get(1, 0)), _bytes(p.get(2, b"")), _bytes(p.get(3, b""))))
        auth.roles.append(EtcdRole(rname.decode(), perms))
    return auth


def auth_store_of(a: EtcdAuth) -> AuthStore:
    """Conclave's auth store holding etcd's users (with their bcrypt hashes), roles and flag."""
    store = AuthStore()
    for r in a.roles:
        perms = sorted((Permission(PermType(t), k, e) for t, k, e in r.permissions),
                       key=lambda p: (p.key, p.range_end))
        store.roles[r.name] = Role(r.name, tuple(perms))
    for u in a.users:
        store.users[u.name] = User(u.name, u.password_hash, tuple(sorted(u.roles)), u.no_password)
    store.enabled = a.enabled
    store.revision = max(a.revision, 1) if (a.users or a.roles or a.enabled) else a.revision
    return store


def etcd_auth_of(store: AuthStore) -> EtcdAuth:
    return EtcdAuth(
        store.enabled, store.revision,
        [EtcdUser(u.name, u.password_hash, list(u.roles), u.no_password) for u in store.users.values()],
        [EtcdRole(r.name, [(int(p.perm_type), p.key, p.range_end) for p in r.permissions])
         for r in store.roles.values()],
    )


def etcd_backup_to_machine(data: bytes) -> tuple[StateMachine, int, int]:
    """(state machine, raft index, raft term) of an etcd backup, for ``snapshot restore``:
    its keys, history, leases and its auth store (users, roles, permissions, enabled)."""
    backup = read_etcd_backup(data)
    sm = StateMachine(0, [], store=backup.store, applied_index=backup.consistent_index)
    sm.auth = auth_store_of(backup.auth)
    return sm, backup.consistent_index, backup.term


# ---------------------------------------------------------------------- Conclave -> etcd


def machine_to_etcd_backup(sm: StateMachine, auth: EtcdAuth | None = None) -> bytes:
    """An etcd v3 backup (bbolt + SHA-256) of this state machine, as ``etcdctl snapshot save``
    would have written it from an etcd holding the same data (its auth store included)."""
    store = sm.store
    keys: list[tuple[bytes, bytes]] = []
    for key, recs in store.history_rows():
        for main, sub, kv in recs:
            if kv is None:
                keys.append((rev_key(main, sub, True), encode_kv(KeyValue(key))))
            else:
                keys.append((rev_key(main, sub), encode_kv(kv)))
    leases = [(U64.pack(i), _enc([(1, i), (2, ttl)])) for i, ttl in store.lease_table().items()]
    meta = [(b"consistent_index", U64.pack(sm.applied_index))]
    if store.compact_revision >= 0:
        meta += [(b"finishedCompactRev", rev_key(store.compact_revision, 0)),
                 (b"scheduledCompactRev", rev_key(store.compact_revision, 0))]
    members = [(f"{m.id:x}".encode(), json.dumps({"id": m.id, "peerURLs": list(m.peer_urls),
                                                  **({"name": m.name} if m.name else {}),
                                                  **({"clientURLs": list(m.client_urls)} if m.client_urls else {})},
                                                 separators=(",", ":")).encode())
               for m in sorted(sm.members.values(), key=lambda m: m.id) if not m.is_learner]
    a = auth or etcd_auth_of(sm.auth)
    auth_meta = [(b"authRevision", U64.pack(a.revision))]
    if a.enabled:
        auth_meta.append((b"authEnabled", b"\1"))
    users = [(u.name.encode(), _enc([(1, u.name.encode()), (2, u.password_hash)])
              + b"".join(_enc([(3, r.encode())]) for r in u.roles)
              + (_enc([(4, _enc([(1, 1)]))]) if u.no_password else b""))
             for u in sorted(a.users, key=lambda u: u.name)]
    roles = [(r.name.encode(), _enc([(1, r.name.encode())])
              + b"".join(_enc([(2, _enc([(1, t), (2, k), (3, e)]))]) for t, k, e in r.permissions))
             for r in sorted(a.roles, key=lambda r: r.name)]
    db = bbolt.write_buckets({
        b"alarm": [], b"auth": auth_meta, b"authRoles": roles, b"authUsers": users,
        b"cluster": [(b"clusterVersion", CLUSTER_VERSION)], b"key": keys, b"lease": leases,
        b"members": members, b"members_removed": [], b"meta": meta,
    })
    return db + hashlib.sha256(db).digest()



# ---------------------------------------------------------------------- etcdctl snapshot status


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    hash: int
    revision: int
    total_key: int
    total_size: int


def etcd_status(data: bytes) -> EtcdStatus:
    """What ``etcdctl snapshot status`` prints for this etcd backup: the CRC-32C of every bucket
    name, key and value in order, the last key revision, the number of entries, the db size."""
    db = strip_digest(data)
    try:
        buckets = bbolt.read_buckets(db)
        size = bbolt.database_size(db)
    except bbolt.BboltError as exc:
        raise BackupError(f"not an etcd backup: {exc}") from None
    crc, revision, total = 0, 0, 0
    for name in sorted(buckets):
        crc = crc32c(name, crc)
        for k, v in buckets[name]:
            crc = crc32c(v, crc32c(k, crc))
            if name == b"key":
                revision = parse_rev_key(k)[0]
            total += 1
    return EtcdStatus(crc, revision, total, size)
