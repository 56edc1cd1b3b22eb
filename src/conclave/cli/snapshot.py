"""`conclave snapshot restore|status|convert`: rebuild a data directory from a backup (etcdutl's role).

A backup comes from `etcdctl snapshot save` (Maintenance.Snapshot) against any member, of
Conclave (Conclave's format, ``server/backup.py``) or of etcd (a bbolt file,
``server/etcd_backup.py``): both are accepted. `convert` turns one format into the other, so
a Conclave backup can go to etcd's own tools (`etcdctl snapshot status|restore`).
`restore` writes a brand-new data directory for ONE member of a NEW cluster (new member
and cluster ids from --initial-cluster and the token) whose state machine starts from the
backup; run it once per member with the same --initial-cluster, then start the members
with `conclave serve` and the same flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="restore a data directory from a backup, or describe a backup")
    ss = p.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")
    r = ss.add_parser("restore", help="build a new member data dir from a backup file (like etcdutl snapshot restore)")
    r.add_argument("file", help="backup file written by `etcdctl snapshot save`")
    r.add_argument("--data-dir", required=True, help="data directory to create (must not exist or be empty)")
    r.add_argument("--name", default="default", help="name of the member this data dir is for")
    r.add_argument("--initial-cluster", default=None, help="name=peerURL,... of the NEW cluster")
    r.add_argument("--initial-cluster-token", default="conclave-cluster", help="token of the NEW cluster")
    r.add_argument("--initial-advertise-peer-urls", default=None, help="this member's peer URLs")
    r.set_defaults(func=restore)
    s = ss.add_parser("status", help="print a backup's revision, key count, size and hash")
    s.add_argument("file")
    s.add_argument("-w", "--write-out", default="simple", choices=["simple", "json", "table"])
    s.set_defaults(func=status)
    c = ss.add_parser("convert", help="rewrite a backup in etcd's format (bbolt) or in Conclave's",
                      description="Rewrite a backup file: --to etcd gives a bbolt file that etcd's own tools read "
                      "(etcdctl snapshot status / restore); --to conclave gives Conclave's format. The input may "
                      "be either format.")
    c.add_argument("file", help="backup to read (Conclave or etcd format)")
    c.add_argument("output", help="file to write (must not exist)")
    c.add_argument("--to", required=True, choices=["etcd", "conclave"], help="format of the output")
    c.set_defaults(func=convert)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _read(path: str) -> tuple[bytes, int, int]:
    """(state image, raft index, raft term) of a backup of either format."""
    from conclave.server.backup import decode_backup
    from conclave.server.etcd_backup import etcd_backup_to_machine, looks_like_etcd_backup

    data = Path(path).read_bytes()
    if looks_like_etcd_backup(data):
        sm, index, term = etcd_backup_to_machine(data)
        return sm.snapshot(), index, term
    return decode_backup(data)


def convert(args: argparse.Namespace) -> int:
    from conclave.machine import ImageError, StateMachine
    from conclave.server.backup import BackupError, encode_backup
    from conclave.server.etcd_backup import machine_to_etcd_backup

    out = Path(args.output)
    try:
        if out.exists():
            raise BackupError(f"{out} exists; not overwriting it")
        state, index, term = _read(args.file)
        sm = StateMachine.restore(state, index=index)
        data = machine_to_etcd_backup(sm) if args.to == "etcd" else encode_backup(state, index, term)
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out)
    except (OSError, BackupError, ImageError, ValueError) as exc:
        print(f"conclave snapshot convert: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.to} format, revision {sm.store.revision}, {len(sm.store)} keys, raft index {index})")
    return 0


def restore(args: argparse.Namespace) -> int:
    from conclave.machine import ImageError, Member, StateMachine
    from conclave.raft.types import ConfState, HardState, Snapshot, SnapshotMeta
    from conclave.server.backup import BackupError
    from conclave.server.config import ConfigError, ServerConfig, parse_initial_cluster, parse_urls
    from conclave.storage.wal import DiskStorage

    try:
        state, index, term = _read(args.file)
        adv = parse_urls(args.initial_advertise_peer_urls, "initial-advertise-peer-urls") if (
            args.initial_advertise_peer_urls) else ["http://127.0.0.1:2380"]
        cfg = ServerConfig(
            name=args.name, data_dir=args.data_dir, initial_advertise_peer_urls=adv,
            listen_peer_urls=adv,
            initial_cluster=parse_initial_cluster(args.initial_cluster) if args.initial_cluster else {},
            initial_cluster_token=args.initial_cluster_token,
        )
        cfg.validate()
        old = StateMachine.restore(state, index=index)
    except (OSError, BackupError, ConfigError, ImageError) as exc:
        print(f"conclave snapshot restore: {exc}", file=sys.stderr)
        return 1
    data_dir = Path(args.data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        print(f"conclave snapshot restore: data dir {data_dir} exists and is not empty", file=sys.stderr)
        return 1
    data_dir.mkdir(parents=True, exist_ok=True)
    ids = cfg.initial_member_ids()
    # The backup's store and auth store (users, roles, enabled) in a NEW cluster: new members and
    # cluster id; the once-only table of the old cluster's members does not carry over (their ids
    # and sequence numbers mean nothing here).
    members = [Member(ids[n], n, list(urls)) for n, urls in cfg.initial_cluster.items()]
    fresh = StateMachine(cfg.cluster_id, members, store=old.store, applied_index=index, auth=old.auth)
    image = fresh.snapshot()
    conf = ConfState(voters=frozenset(ids.values()))
    storage = DiskStorage(data_dir)
    storage.save_bootstrap(conf)
    storage.save(HardState(term=term, vote=0, commit=index), [], Snapshot(SnapshotMeta(index, term, conf), image))
    storage.sync()
    storage.close()
    import json

    (data_dir / "member.json").write_text(json.dumps({
        "name": cfg.name, "member_id": cfg.member_id, "cluster_id": cfg.cluster_id,
        "token": cfg.initial_cluster_token, "members": [],
    }))
    print(f"restored snapshot (raft index {index}) into {data_dir} for member {cfg.name} ({cfg.member_id:x}) "
          f"of new cluster {cfg.cluster_id:x}")
    return 0


def status(args: argparse.Namespace) -> int:
    import json

    from conclave.machine import StateMachine
    from conclave.server.backup import BackupError
    from conclave.server.etcd_backup import etcd_status, looks_like_etcd_backup

    try:
        data = Path(args.file).read_bytes()
        if looks_like_etcd_backup(data):  # etcd's figures, as `etcdctl snapshot status` computes them
            st = etcd_status(data)
            h, revision, total, size = st.hash, st.revision, st.total_key, st.total_size
            row: dict[str, int] = {"hash": h, "revision": revision, "totalKey": total, "totalSize": size}
        else:
            state, index, _term = _read(args.file)
            store = StateMachine.restore(state, index=index).store
            h, revision, total, size = store.hash_kv(0)[0], store.revision, len(store), len(data)
            row = {"hash": h, "revision": revision, "totalKey": total, "totalSize": size, "raftIndex": index}
    except (OSError, BackupError, ValueError) as exc:
        print(f"conclave snapshot status: {exc}", file=sys.stderr)
        return 1
    if args.write_out == "json":
        print(json.dumps(row, separators=(",", ":")))
    elif args.write_out == "table":
        print(status_table(h, revision, total, size))
    else:
        print(f"{h:x}, {revision}, {total}, {_size(size)}")
    return 0


def status_table(h: int, revision: int, total: int, size: int) -> str:
    """``snapshot status -w table`` as etcdctl's tablewriter draws it: each column as wide as its
    widest cell, headers centred, cells right-aligned (a hash with leading zero nibbles is printed
    without them, so its column narrows)."""
    headers = ("HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE")
    cells = (f"{h:x}", str(revision), str(total), _size(size))
    widths = [max(len(a), len(b)) for a, b in zip(headers, cells, strict=True)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "|" + "|".join(f" {a:^{w}} " for a, w in zip(headers, widths, strict=True)) + "|"
    row = "|" + "|".join(f" {b:>{w}} " for b, w in zip(cells, widths, strict=True)) + "|"
    return "\n".join([line, head, line, row, line])


def _size(n: int) -> str:
    """etcdctl's humanize.Bytes: SI units, one decimal below 10 (24576 -> "25 kB")."""
    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    import math

    e = min(math.floor(math.log(n, 1000)), len(units) - 1)
    value = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{value:.1f} {units[e]}" if value < 10 else f"{value:.0f} {units[e]}"
