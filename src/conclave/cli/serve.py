"""`conclave serve`: run one cluster member, with etcd's flag names."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from conclave.kv.validation import DEFAULT_MAX_REQUEST_BYTES
from conclave.machine import rules
from conclave.server.config import (
    SHARDS_MAX,
    ConfigError,
    ServerConfig,
    env_default,
    parse_initial_cluster,
    parse_list,
    parse_split_keys,
    parse_urls,
)

# (flag, metavar, default as text, help). Every flag can also be set as CONCLAVE_<FLAG>.
FLAGS: tuple[tuple[str, str, str | None, str], ...] = (
    ("name", "NAME", "default", "human-readable name of this member"),
    ("data-dir", "DIR", None, "path to the data directory (default: <name>.conclave)"),
    ("listen-client-urls", "URLS", "http://127.0.0.1:2379", "URLs to listen on for client (etcd gRPC) traffic"),
    ("advertise-client-urls", "URLS", None, "client URLs to advertise to the cluster (default: listen URLs)"),
    ("listen-peer-urls", "URLS", "http://127.0.0.1:2380", "URLs to listen on for peer traffic"),
    ("initial-advertise-peer-urls", "URLS", None, "this member's peer URLs to advertise (default: listen URLs)"),
    ("initial-cluster", "NAME=URL,...", None,
     "initial cluster configuration for bootstrapping (default: <name>=<initial-advertise-peer-urls>)"),
    ("initial-cluster-state", "new|existing", "new", "'new' to bootstrap a cluster, 'existing' to join one"),
    ("initial-cluster-token", "TOKEN", "conclave-cluster", "initial cluster token, part of member and cluster ids"),
    ("listen-native-urls", "URLS", "", "URLs to listen on for Conclave's native client protocol (default: none)"),
    ("listen-client-http-urls", "URLS", "",
     "URLs to listen on for HTTP only client traffic: the JSON gateway (/v3/...) and /version; once set, "
     "--listen-client-urls serve gRPC only (default: none: HTTP/1.1 shares the client port on the rust "
     "engine; the python engine serves HTTP only here)"),
    ("heartbeat-interval", "MS", "100", "time (in milliseconds) of a heartbeat interval"),
    ("election-timeout", "MS", "1000", "time (in milliseconds) for an election to timeout"),
    ("snapshot-count", "N", "10000", "number of committed entries that trigger a snapshot"),
    ("max-request-bytes", "BYTES", str(DEFAULT_MAX_REQUEST_BYTES), "maximum client request size in bytes"),
    ("quota-backend-bytes", "BYTES", str(rules.DEFAULT_QUOTA_BACKEND_BYTES),
     "raise the NOSPACE alarm when the store exceeds this size"),
    ("max-snapshots", "N", "5", "maximum number of snapshot files to retain (0 is unlimited)"),
    ("max-wals", "N", "5", "maximum number of WAL files to retain (0 is unlimited)"),
    ("max-learners", "N", "1", "maximum number of learners in the cluster"),
    ("grpc-engine", "auto|rust|python", "auto",
     "etcd gRPC engine: rust = the compiled edge (Rust), python = grpc.aio (no compiler needed), "
     "auto = rust when the edge is built, else python (the log says which runs)"),
    ("cert-file", "FILE", "",
     "path to the client server TLS cert file (serves the https:// client URLs) (default: none)"),
    ("key-file", "FILE", "", "path to the client server TLS key file (default: none)"),
    ("client-cert-auth", "BOOL", "false", "enable client cert authentication (needs --trusted-ca-file)"),
    ("trusted-ca-file", "FILE", "", "path to the client server TLS trusted CA cert file (default: none)"),
    # Auth (users, roles and permissions: docs/security.md)
    ("auth-token", "simple|jwt,...", "simple",
     "token type: 'simple' (random, member-local, TTL --auth-token-ttl) or "
     "'jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m' (signed; a member with only pub-key verifies)"),
    ("auth-token-ttl", "SECONDS", "300", "lifetime of a simple token after its last use"),
    ("bcrypt-cost", "N", "10", "bcrypt cost for hashing passwords (4..31)"),
    ("client-crl-file", "FILE", "", "path to the client certificate revocation list file (default: none)"),
    ("client-cert-allowed-hostname", "NAMES", "",
     "comma list of SAN hostnames a client certificate must match one of (default: none)"),
    ("auto-tls", "BOOL", "false", "client TLS using a self-signed certificate in <data-dir>/fixtures/client"),
    ("peer-cert-file", "FILE", "", "path to the peer server TLS cert file, also presented when dialling peers "
     "(serves the https:// peer URLs) (default: none)"),
    ("peer-key-file", "FILE", "", "path to the peer server TLS key file (default: none)"),
    ("peer-client-cert-auth", "BOOL", "false", "require peers to present a certificate signed by "
     "--peer-trusted-ca-file (refused at the handshake, before any Raft message)"),
    ("peer-trusted-ca-file", "FILE", "", "path to the peer server TLS trusted CA file (default: none)"),
    ("peer-cert-allowed-cn", "CNS", "", "comma list of common names a peer certificate must have one of "
     "(default: none)"),
    ("peer-cert-allowed-hostname", "NAMES", "", "comma list of SAN hostnames a peer certificate must match one of "
     "(default: none)"),
    ("peer-auto-tls", "BOOL", "false", "peer TLS using a self-signed certificate in <data-dir>/fixtures/peer"),
    ("peer-crl-file", "FILE", "", "path to the peer certificate revocation list file (default: none)"),
    ("self-signed-cert-validity", "YEARS", "1", "validity of the --auto-tls and --peer-auto-tls certificates"),
    ("cipher-suites", "SUITES", "", "comma list of TLS1.2 cipher suites (Go names, e.g. "
     "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) for client and peer ports (default: OpenSSL's)"),
    ("tls-min-version", "TLS1.2|TLS1.3", "TLS1.2", "minimum TLS version on client and peer ports"),
    ("tls-max-version", "TLS1.2|TLS1.3", "", "maximum TLS version on client and peer ports (default: none)"),
    ("listen-metrics-urls", "URLS", "",
     "additional plain-HTTP URLs serving /metrics, /health, /livez and /readyz (default: none; the client "
     "port serves them too)"),
    ("metrics", "basic|extensive", "basic",
     "metrics level: extensive adds the per-RPC grpc_server_handling_seconds histograms"),
    ("shards", "K", None, "split the key space into K ranges, each its own Raft group on every member "
     "(fixed when the cluster is created; K-1 split keys are taken evenly from 0-9A-Za-z, e.g. K=3 splits "
     "at K and f; give --shard-split-keys for your own key layout) (default: 1)"),
    ("shard-split-keys", "KEYS", None, "comma list of split keys, e.g. a,m,t: 4 shards [,a) [a,m) [m,t) [t,); "
     "exclusive with --shards (default: none)"),
    ("log-level", "LEVEL", "info", "debug, info, warn or error"),
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run one cluster member (etcd's flags; each also settable as CONCLAVE_<FLAG>)",
        description="Run one Conclave member. Flags follow etcd's names; every flag can also be set "
        "in the environment as CONCLAVE_<FLAG_NAME>, e.g. CONCLAVE_DATA_DIR. Once the data dir exists "
        "it says who the member is: the bootstrap flags --initial-cluster, --initial-cluster-token "
        "and --initial-cluster-state are then ignored (with a warning naming them), as etcd does.",
    )
    for flag, metavar, default, text in FLAGS:
        # The built-in default is shown (etcd's --help does too); a CONCLAVE_<FLAG> value overrides it.
        shown = f"{text} (default: {default})" if default and "(default:" not in text else text
        if metavar == "BOOL":  # `--flag` alone means true, as etcd's boolean flags
            p.add_argument(f"--{flag}", metavar=metavar, nargs="?", const="true",
                           default=env_default(flag, default), help=shown)  # fmt: skip
            continue
        p.add_argument(f"--{flag}", metavar=metavar, default=env_default(flag, default), help=shown)
    p.set_defaults(func=run)


def _int(args: argparse.Namespace, flag: str) -> int:
    raw = getattr(args, flag.replace("-", "_"))
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"--{flag}: expected an integer, got {raw!r}") from None


def _bool(args: argparse.Namespace, flag: str) -> bool:
    raw = str(getattr(args, flag.replace("-", "_"))).strip().lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"--{flag}: expected true or false, got {raw!r}")


def _shard_args(args: argparse.Namespace) -> dict[str, Any]:
    shards = getattr(args, "shards", None)
    splits = getattr(args, "shard_split_keys", None)
    if shards is not None and str(shards).strip() and splits is not None and str(splits).strip():
        raise ConfigError("--shards and --shard-split-keys are mutually exclusive: give one "
                          "(K split keys make K+1 shards)")
    out: dict[str, Any] = {}
    if shards is not None and str(shards).strip():
        k = _int(args, "shards")
        if not 1 <= k <= SHARDS_MAX:
            raise ConfigError(f"--shards must be between 1 and {SHARDS_MAX}, got {k}")
        out["shards"] = k
    if splits is not None and str(splits).strip():
        out["shard_split_keys"] = parse_split_keys(str(splits))
    return out


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    listen_client = parse_urls(args.listen_client_urls, "listen-client-urls")
    listen_peer = parse_urls(args.listen_peer_urls, "listen-peer-urls")
    adv_peer = (
        parse_urls(args.initial_advertise_peer_urls, "initial-advertise-peer-urls")
        if args.initial_advertise_peer_urls
        else []
    )
    cfg = ServerConfig(
        name=args.name,
        data_dir=args.data_dir or "",
        listen_client_urls=listen_client,
        advertise_client_urls=(
            parse_urls(args.advertise_client_urls, "advertise-client-urls") if args.advertise_client_urls else []
        ),
        listen_peer_urls=listen_peer,
        initial_advertise_peer_urls=adv_peer,
        initial_cluster=parse_initial_cluster(args.initial_cluster) if args.initial_cluster else {},
        initial_cluster_state=args.initial_cluster_state,
        initial_cluster_token=args.initial_cluster_token,
        listen_native_urls=(
            parse_urls(args.listen_native_urls, "listen-native-urls") if args.listen_native_urls else []
        ),
        listen_client_http_urls=(
            parse_urls(args.listen_client_http_urls, "listen-client-http-urls") if args.listen_client_http_urls else []
        ),
        heartbeat_interval_ms=_int(args, "heartbeat-interval"),
        election_timeout_ms=_int(args, "election-timeout"),
        snapshot_count=_int(args, "snapshot-count"),
        max_request_bytes=_int(args, "max-request-bytes"),
        quota_backend_bytes=_int(args, "quota-backend-bytes"),
        max_snapshots=_int(args, "max-snapshots"),
        max_wals=_int(args, "max-wals"),
        max_learners=_int(args, "max-learners"),
        grpc_engine=str(args.grpc_engine).strip().lower(),
        cert_file=args.cert_file or "",
        key_file=args.key_file or "",
        client_cert_auth=_bool(args, "client-cert-auth"),
        trusted_ca_file=args.trusted_ca_file or "",
        auth_token=str(args.auth_token).strip(),
        auth_token_ttl=_int(args, "auth-token-ttl"),
        bcrypt_cost=_int(args, "bcrypt-cost"),
        client_crl_file=args.client_crl_file or "",
        client_cert_allowed_hostname=parse_list(args.client_cert_allowed_hostname),
        auto_tls=_bool(args, "auto-tls"),
        peer_cert_file=args.peer_cert_file or "",
        peer_key_file=args.peer_key_file or "",
        peer_trusted_ca_file=args.peer_trusted_ca_file or "",
        peer_client_cert_auth=_bool(args, "peer-client-cert-auth"),
        peer_cert_allowed_cn=parse_list(args.peer_cert_allowed_cn),
        peer_cert_allowed_hostname=parse_list(args.peer_cert_allowed_hostname),
        peer_auto_tls=_bool(args, "peer-auto-tls"),
        peer_crl_file=args.peer_crl_file or "",
        self_signed_cert_validity=_int(args, "self-signed-cert-validity"),
        cipher_suites=parse_list(args.cipher_suites),
        tls_min_version=str(args.tls_min_version or "TLS1.2").strip(),
        tls_max_version=str(args.tls_max_version or "").strip(),
        listen_metrics_urls=(
            parse_urls(args.listen_metrics_urls, "listen-metrics-urls") if args.listen_metrics_urls else []
        ),
        metrics=str(args.metrics).strip().lower(),
        **_shard_args(args),
    )
    cfg.validate()
    from conclave.server.tls import validate_config  # cryptography parses the certificates

    validate_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    import logging

    level = {"debug": logging.DEBUG, "warn": logging.WARNING, "error": logging.ERROR}.get(
        str(args.log_level).lower(), logging.INFO
    )
    logging.basicConfig(level=level, format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"conclave serve: {exc}", file=sys.stderr)
        return 2
    import os

    # Snapshots are serialised in a forked child that never touches gRPC: gRPC's fork handlers
    # are not needed (and only log that they were skipped).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    if cfg.cipher_suites:
        from conclave.server.tls import openssl_cipher_list

        # grpc python reads its TLS1.2 cipher list once, from the environment, when it loads: this is
        # how --cipher-suites reaches the python gRPC engine (server/tls.py maps the names).
        os.environ["GRPC_SSL_CIPHER_SUITES"] = openssl_cipher_list(cfg.cipher_suites)
    from conclave.cli.runner import serve_forever

    return serve_forever(cfg)
