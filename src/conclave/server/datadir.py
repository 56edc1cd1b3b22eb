"""A member's identity as its data dir records it, and why the data dir wins over the flags.

Theory of operation
-------------------
``member.json`` in the data dir is written once, when the member bootstraps: its name, member id,
cluster id, the cluster token and the initial cluster it was founded with (and, for a member that
joined a running cluster, the members it learned about). From then on the data dir, not the
command line, says who the member is, as in etcd: ``--initial-cluster``, ``--initial-cluster-token``
and ``--initial-cluster-state`` are bootstrap flags and are ignored once the data dir exists (with
one warning naming the flags whose value differs, where etcd says nothing). ``--name`` is not a
bootstrap flag: a member restarted under another name keeps its id and publishes the new name, as
etcd does (``member list`` shows it).

The key-range split of a sharded cluster is fixed at creation too: ``shards.json`` records its split
keys (hex) when there is more than one group; a data dir without it is a one-group cluster (the
layout every existing data dir has). ``shard_split`` returns the split to run with and refuses a
restart whose ``--shards`` / ``--shard-split-keys`` ask for another one.

``recover`` reads the file and rewrites the bootstrap fields of the configuration to the data
dir's values, so every later use of them (member ids of ``member add``, the member table rebuilt
from the initial cluster) sees the cluster the data dir belongs to.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conclave.server.config import MEMBER_FILE, SHARDS_FILE, ConfigError, ServerConfig

log = logging.getLogger("conclave.datadir")


@dataclass(slots=True)
class Identity:
    """What ``member.json`` records."""

    name: str
    member_id: int
    cluster_id: int
    token: str
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)  # empty in files written before it
    members: list[Any] = field(default_factory=list)  # Member.to_wire() rows, for a member that joined


def meta_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / MEMBER_FILE


def read(data_dir: str | Path) -> Identity | None:
    """The identity recorded in ``data_dir``, or None when the data dir is new."""
    path = meta_path(data_dir)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return Identity(
            name=str(raw.get("name", "")),
            member_id=int(raw["member_id"]),
            cluster_id=int(raw["cluster_id"]),
            token=str(raw.get("token", "")),
            initial_cluster={str(k): [str(u) for u in v] for k, v in (raw.get("initial_cluster") or {}).items()},
            members=list(raw.get("members") or []),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"data dir {data_dir}: {MEMBER_FILE} is unreadable ({exc})") from None


def ignored_flags(cfg: ServerConfig, ident: Identity) -> list[str]:
    """The bootstrap flags whose value differs from what the data dir was founded with."""
    ignored = []
    if cfg.initial_cluster_token != ident.token:
        ignored.append(f"--initial-cluster-token={cfg.initial_cluster_token}")
    if ident.initial_cluster and _sorted(cfg.initial_cluster) != _sorted(ident.initial_cluster):
        ignored.append("--initial-cluster=" + ",".join(
            f"{name}={url}" for name, urls in cfg.initial_cluster.items() for url in urls))
    if cfg.initial_cluster_state == "existing" and not ident.members:
        # The data dir founded a cluster; "existing" would only have mattered for joining one.
        ignored.append("--initial-cluster-state=existing")
    return ignored


def recover(cfg: ServerConfig) -> Identity | None:
    """Read the data dir's identity; when there is one, make ``cfg``'s bootstrap fields agree with it."""
    ident = read(cfg.data_dir)
    if ident is None:
        return None
    ignored = ignored_flags(cfg, ident)
    if ignored:
        log.warning(
            "data dir %s already belongs to member %x of cluster %x: ignoring the bootstrap flags %s",
            cfg.data_dir, ident.member_id, ident.cluster_id, " ".join(ignored),
        )
    if ident.name and ident.name != cfg.name:
        log.warning("member %x was named %r; it is now %r (the new name is published to the cluster)",
                    ident.member_id, ident.name, cfg.name)
    cfg.initial_cluster_token = ident.token
    if ident.initial_cluster:
        # Keyed by the founding names: a renamed member finds itself by id, never by name.
        cfg.initial_cluster = {k: list(v) for k, v in ident.initial_cluster.items()}
    return ident


def _sorted(cluster: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    return sorted((name, sorted(urls)) for name, urls in cluster.items())


def shards_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / SHARDS_FILE


def _describe(splits: list[bytes]) -> str:
    if not splits:
        return "1 shard"
    return f"{len(splits) + 1} shards split at " + ",".join(k.decode(errors="backslashreplace") for k in splits)


def read_shards(data_dir: str | Path) -> list[bytes] | None:
    """The recorded split keys; [] for a bootstrapped one-group data dir; None for a new data dir."""
    path = shards_path(data_dir)
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            return [bytes.fromhex(str(k)) for k in raw["split_keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"data dir {data_dir}: {SHARDS_FILE} is unreadable ({exc})") from None
    return [] if meta_path(data_dir).exists() else None


def shard_split(cfg: ServerConfig) -> list[bytes]:
    """The split keys this member runs with: the data dir's, else the flags' (recorded now).

    A restart whose shard flags differ from what the cluster was created with is refused: the
    split is fixed at creation (the groups' logs own their ranges)."""
    recorded = read_shards(cfg.data_dir)
    asked = cfg.split_keys()
    if recorded is not None:
        if asked is not None and asked != recorded:
            raise ConfigError(
                f"data dir {cfg.data_dir} was created with {_describe(recorded)}; the shard split is fixed "
                f"at cluster creation, but the flags ask for {_describe(asked)} (drop --shards / "
                "--shard-split-keys or give the same value)")
        return recorded
    splits = asked or []
    if splits:
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        path = shards_path(cfg.data_dir)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"split_keys": [k.hex() for k in splits]}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return splits
