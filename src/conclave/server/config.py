"""Server configuration: etcd's flag names, their validation, and member/cluster ids.

Every flag can also come from the environment as ``CONCLAVE_<FLAG_NAME>`` (upper case,
dashes as underscores), the way etcd reads ``ETCD_<FLAG>``. A flag on the command line
wins over the environment. Bad values raise ``ConfigError`` with one clear sentence.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from conclave.kv.validation import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS
from conclave.machine.rules import DEFAULT_QUOTA_BACKEND_BYTES


class ConfigError(ValueError):
    """A flag value that cannot be used; the message says which and why."""


# The data dir's record of who the member is (server/datadir.py). Once it exists the bootstrap
# flags are ignored, as etcd ignores them once its data dir exists.
MEMBER_FILE = "member.json"
# The data dir's record of the key-range split a sharded cluster was created with (server/groups.py);
# absent for a one-group cluster, whose data dir keeps the layout it always had.
SHARDS_FILE = "shards.json"
SHARDS_MAX = 64
# --shards K without split keys: K-1 split points taken evenly from this alphabet (digits, upper
# case, lower case: the characters keys usually start with), e.g. K=3 splits at "K" and "f".
SPLIT_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def derive_split_keys(shards: int) -> list[bytes]:
    """The K-1 split keys ``--shards K`` uses: evenly spaced one-character keys of SPLIT_ALPHABET."""
    n = len(SPLIT_ALPHABET)
    return [SPLIT_ALPHABET[i * n // shards].encode() for i in range(1, shards)]


def parse_split_keys(value: str) -> list[bytes]:
    """``a,m,t`` -> [b"a", b"m", b"t"]: non-empty, distinct, strictly increasing (byte order)."""
    keys = [k.encode() for k in value.split(",")]
    if not value.strip() or any(not k for k in keys):
        raise ConfigError(f"--shard-split-keys: empty split key in {value!r} (give e.g. a,m,t)")
    for a, b in itertools.pairwise(keys):
        if not a < b:
            raise ConfigError(f"--shard-split-keys: keys must be distinct and in increasing byte order, "
                              f"but {a.decode()!r} comes before {b.decode()!r}")
    if len(keys) + 1 > SHARDS_MAX:
        raise ConfigError(f"--shard-split-keys: at most {SHARDS_MAX - 1} split keys ({SHARDS_MAX} shards)")
    return keys


# What etcd 3.4 reports for an empty backend (its bbolt file before the first key: `etcdctl
# endpoint status` says 20 kB, dbSizeInUse 16384). Conclave's store estimates only its records;
# Maintenance.Status adds this floor so sizes read as etcd's do (never "0 B" on a fresh member).
BACKEND_EMPTY_BYTES = 20480
BACKEND_EMPTY_IN_USE_BYTES = 16384


def reported_db_size(store_bytes: int, store_bytes_in_use: int) -> tuple[int, int]:
    """(dbSize, dbSizeInUse) as Maintenance.Status reports them for a store of these sizes."""
    return BACKEND_EMPTY_BYTES + store_bytes, BACKEND_EMPTY_IN_USE_BYTES + store_bytes_in_use


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# Flags whose URLs may be https://: the client and native ports' TLS (--cert-file, --key-file)
# and the peer port's (--peer-cert-file, --peer-key-file). server/tls.py builds the contexts.
TLS_URL_FLAGS = (
    "listen-client-urls", "advertise-client-urls", "listen-native-urls",
    "listen-peer-urls", "initial-advertise-peer-urls", "initial-cluster", "peer-urls",
)  # fmt: skip


def is_tls_url(url: str) -> bool:
    return url.strip().lower().startswith("https://")


def parse_list(value: str | None) -> list[str]:
    """A comma list flag (etcd's --cipher-suites, --peer-cert-allowed-cn...): blanks dropped."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_url(url: str, flag: str) -> HostPort:
    """Parse ``http://host:port`` (the scheme may be omitted)."""
    raw = url.strip()
    if not raw:
        raise ConfigError(f"--{flag}: empty URL")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--{flag}: cannot parse URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https", "unix", "tcp"):
        raise ConfigError(f"--{flag}: URL scheme must be http or https, got {url!r}")
    if parts.scheme == "https" and flag not in TLS_URL_FLAGS:
        raise ConfigError(f"--{flag}: TLS is not supported yet ({url!r}); use http://")
    if not parts.hostname or port is None:
        raise ConfigError(f"--{flag}: URL needs a host and a port, got {url!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"--{flag}: URL must not have a path, got {url!r}")
    return HostPort(parts.hostname, port)


def parse_urls(value: str, flag: str) -> list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"--{flag}: at least one URL is required")
    for u in urls:
        parse_url(u, flag)
    return [u if "://" in u else "http://" + u for u in urls]


def parse_initial_cluster(value: str) -> dict[str, list[str]]:
    """``name1=http://a:2380,name2=http://b:2380`` -> {name: [peer urls]}."""
    members: dict[str, list[str]] = {}
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--initial-cluster: expected name=url, got {item!r}")
        parse_url(url, "initial-cluster")
        members.setdefault(name.strip(), []).append(url.strip() if "://" in url else "http://" + url.strip())
    if not members:
        raise ConfigError("--initial-cluster: no members given")
    return members


def member_id(peer_urls: list[str], cluster_token: str) -> int:
    """A deterministic 64-bit member id from the peer URLs and the cluster token (as etcd does)."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + cluster_token).encode()).digest()
    mid = int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF
    return mid or 1


def cluster_id(member_ids: list[int], cluster_token: str) -> int:
    digest = hashlib.sha1((",".join(str(m) for m in sorted(member_ids)) + cluster_token).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1


@dataclass(slots=True)
class ServerConfig:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    advertise_client_urls: list[str] = field(default_factory=list)
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2380"])
    initial_advertise_peer_urls: list[str] = field(default_factory=list)
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "conclave-cluster"
    listen_native_urls: list[str] = field(default_factory=list)
    # etcd 3.5's --listen-client-http-urls: plain HTTP only (JSON gateway, /version, /health...);
    # once set, the client URLs serve gRPC only, as in etcd.
    listen_client_http_urls: list[str] = field(default_factory=list)
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    snapshot_count: int = 10_000
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # the limits' defaults live with the rules
    quota_backend_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    max_snapshots: int = 5
    max_wals: int = 5
    max_learners: int = 1
    request_timeout_ms: int = 0  # 0 = derived: 5 s + 2 election timeouts, as etcd
    fsync: bool = True
    grpc_engine: str = "auto"  # auto | rust | python (conclave.api.edge_server.choose_engine)
    # TLS on the client port, etcd's flags: https:// client URLs are served with this cert and key;
    # with client_cert_auth, clients must present a certificate signed by trusted_ca_file.
    cert_file: str = ""
    key_file: str = ""
    client_cert_auth: bool = False
    trusted_ca_file: str = ""
    # Auth (etcd's flags): token scheme (server/auth_tokens.py), simple tokens' TTL, bcrypt's cost.
    auth_token: str = "simple"
    auth_token_ttl: int = 300
    bcrypt_cost: int = 10
    client_crl_file: str = ""
    client_cert_allowed_hostname: list[str] = field(default_factory=list)
    auto_tls: bool = False
    # TLS on the peer port: https:// peer URLs are served and dialled with this cert and key (both
    # ways, as etcd); with peer_client_cert_auth, a peer must present a cert signed by the CA.
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    peer_cert_allowed_cn: list[str] = field(default_factory=list)
    peer_cert_allowed_hostname: list[str] = field(default_factory=list)
    peer_auto_tls: bool = False
    peer_crl_file: str = ""
    self_signed_cert_validity: int = 1  # years, for --auto-tls / --peer-auto-tls
    cipher_suites: list[str] = field(default_factory=list)  # Go names; empty = OpenSSL's defaults
    tls_min_version: str = "TLS1.2"
    tls_max_version: str = ""  # "" = no maximum
    # Whether the cert files came from the flags (False once auto-TLS filled them in).
    explicit_client_cert: bool = field(init=False, default=False)
    explicit_peer_cert: bool = field(init=False, default=False)
    # Metrics (etcd's flags): the same /metrics and health routes on extra plain-HTTP listeners;
    # "extensive" adds the per-RPC handling-time histograms.
    listen_metrics_urls: list[str] = field(default_factory=list)
    metrics: str = "basic"
    # Shards (server/groups.py, docs/shards.md): 0 = not given (one group for a new data dir, the
    # recorded split on restart); K > 1 splits the key space at shard_split_keys (derived when empty).
    shards: int = 0
    shard_split_keys: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.explicit_client_cert = bool(self.cert_file)
        self.explicit_peer_cert = bool(self.peer_cert_file)
        if not self.data_dir:
            self.data_dir = f"{self.name}.conclave"
        if not self.advertise_client_urls:
            self.advertise_client_urls = list(self.listen_client_urls)
        if not self.initial_advertise_peer_urls:
            self.initial_advertise_peer_urls = list(self.listen_peer_urls)
        if not self.initial_cluster:
            self.initial_cluster = {self.name: list(self.initial_advertise_peer_urls)}

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("--name must not be empty")
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError(
                f"--initial-cluster-state must be 'new' or 'existing', got {self.initial_cluster_state!r}"
            )
        if self.bootstrapped:
            pass  # the data dir says who this member is; --initial-cluster is not read (datadir.recover)
        elif self.name not in self.initial_cluster:
            raise ConfigError(
                f"--initial-cluster has no member named {self.name!r} (the value of --name); "
                f"it lists {sorted(self.initial_cluster)}"
            )
        elif sorted(self.initial_cluster[self.name]) != sorted(self.initial_advertise_peer_urls):
            mine = sorted(self.initial_cluster[self.name])
            raise ConfigError(
                f"--initial-cluster gives {self.name!r} peer URLs {mine}, but "
                f"--initial-advertise-peer-urls is {sorted(self.initial_advertise_peer_urls)}"
            )
        if self.grpc_engine not in ("auto", "rust", "python"):
            raise ConfigError(f"--grpc-engine must be auto, rust or python, got {self.grpc_engine!r}")
        if self.metrics not in ("basic", "extensive"):
            raise ConfigError(f"--metrics must be 'basic' or 'extensive', got {self.metrics!r}")
        self._validate_tls()
        self._validate_auth()
        self._validate_shards()
        if self.heartbeat_interval_ms <= 0:
            raise ConfigError("--heartbeat-interval must be > 0 (milliseconds)")
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms:
            raise ConfigError(
                "--election-timeout should be at least 5 times --heartbeat-interval "
                f"({self.election_timeout_ms} < 5 x {self.heartbeat_interval_ms})"
            )
        if self.election_timeout_ms > 50_000:
            raise ConfigError("--election-timeout is too long: maximum is 50000 ms")
        for flag, value in (
            ("snapshot-count", self.snapshot_count),
            ("max-request-bytes", self.max_request_bytes),
            ("quota-backend-bytes", self.quota_backend_bytes),
        ):
            if value <= 0:
                raise ConfigError(f"--{flag} must be > 0, got {value}")
        for flag, urls in (
            ("listen-client-urls", self.listen_client_urls),
            ("advertise-client-urls", self.advertise_client_urls),
            ("listen-peer-urls", self.listen_peer_urls),
            ("initial-advertise-peer-urls", self.initial_advertise_peer_urls),
            ("listen-native-urls", self.listen_native_urls),
            ("listen-metrics-urls", self.listen_metrics_urls),
            ("listen-client-http-urls", self.listen_client_http_urls),
        ):
            for u in urls:
                parse_url(u, flag)

    def _validate_shards(self) -> None:
        if self.shards < 0 or self.shards > SHARDS_MAX:
            raise ConfigError(f"--shards must be between 1 and {SHARDS_MAX}, got {self.shards}")
        if self.shard_split_keys and self.shards and self.shards != len(self.shard_split_keys) + 1:
            raise ConfigError("--shards and --shard-split-keys are mutually exclusive "
                              "(K split keys make K+1 shards)")
        if self.shard_split_keys:
            parse_split_keys(",".join(k.decode() for k in self.shard_split_keys))

    def split_keys(self) -> list[bytes] | None:
        """The split the flags ask for (``[]``: one group), or None when no shard flag was given."""
        if self.shard_split_keys:
            return list(self.shard_split_keys)
        if self.shards:
            return derive_split_keys(self.shards)
        return None

    def _validate_auth(self) -> None:
        from conclave.server.auth_tokens import TokenConfigError, provider_from_flag

        if not 4 <= self.bcrypt_cost <= 31:  # bcrypt's MinCost and MaxCost, as etcd checks
            raise ConfigError(f"--bcrypt-cost must be between 4 and 31, got {self.bcrypt_cost}")
        if self.auth_token_ttl <= 0:
            raise ConfigError(f"--auth-token-ttl must be > 0 seconds, got {self.auth_token_ttl}")
        try:
            provider_from_flag(self.auth_token, self.auth_token_ttl)
        except TokenConfigError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_tls(self) -> None:
        for family, cert, key, ca, auth, auto in (
            ("", self.cert_file, self.key_file, self.trusted_ca_file, self.client_cert_auth, self.auto_tls),
            ("peer-", self.peer_cert_file, self.peer_key_file, self.peer_trusted_ca_file,
             self.peer_client_cert_auth, self.peer_auto_tls),
        ):  # fmt: skip
            if bool(cert) != bool(key):
                raise ConfigError(f"--{family}cert-file and --{family}key-file must be given together")
            if auth and not ca:
                raise ConfigError(f"--{family}client-cert-auth needs --{family}trusted-ca-file "
                                  f"(the CA that signs {'peer' if family else 'client'} certificates)")  # fmt: skip
            if not cert and not auto:
                urls = (
                    [("listen-client-urls", u) for u in self.listen_client_urls]
                    + [("listen-native-urls", u) for u in self.listen_native_urls]
                    if not family
                    else [("listen-peer-urls", u) for u in self.listen_peer_urls]
                )
                for flag, u in urls:
                    if is_tls_url(u):
                        raise ConfigError(
                            f"--{flag}: {u} needs TLS: give --{family}cert-file and --{family}key-file"
                            f" (or --{family}auto-tls)"
                        )
        if self.client_crl_file and not self.client_cert_auth:
            raise ConfigError("--client-crl-file needs --client-cert-auth (it checks client certificates)")
        if self.client_cert_allowed_hostname and not self.client_cert_auth:
            raise ConfigError("--client-cert-allowed-hostname needs --client-cert-auth (it checks client certificates)")
        if (self.peer_cert_allowed_cn or self.peer_cert_allowed_hostname) and not self.peer_client_cert_auth:
            raise ConfigError("--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-client-cert-auth")
        if self.self_signed_cert_validity <= 0:
            raise ConfigError(f"--self-signed-cert-validity must be > 0 (years), got {self.self_signed_cert_validity}")
        # The files, versions and suites are checked by server/tls.py's validate_config (it parses
        # certificates with cryptography; `conclave serve` runs it right after this).

    def client_url_is_tls(self, url: str) -> bool:
        return is_tls_url(url)

    @property
    def client_tls(self) -> bool:
        """Whether any client-facing listener (gRPC or native) is https://."""
        return any(is_tls_url(u) for u in self.listen_client_urls + self.listen_native_urls)

    @property
    def peer_tls(self) -> bool:
        return any(is_tls_url(u) for u in self.listen_peer_urls + self.initial_advertise_peer_urls)

    @property
    def bootstrapped(self) -> bool:
        """True when the data dir already belongs to a member (its bootstrap flags are ignored)."""
        return (Path(self.data_dir) / MEMBER_FILE).exists()

    @property
    def election_ticks(self) -> int:
        return max(2, self.election_timeout_ms // self.heartbeat_interval_ms)

    @property
    def request_timeout_s(self) -> float:
        if self.request_timeout_ms:
            return self.request_timeout_ms / 1000
        return 5.0 + 2 * self.election_timeout_ms / 1000

    @property
    def member_id(self) -> int:
        return member_id(self.initial_advertise_peer_urls, self.initial_cluster_token)

    def initial_member_ids(self) -> dict[str, int]:
        return {name: member_id(urls, self.initial_cluster_token) for name, urls in self.initial_cluster.items()}

    @property
    def cluster_id(self) -> int:
        return cluster_id(list(self.initial_member_ids().values()), self.initial_cluster_token)


def env_default(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("CONCLAVE_" + flag.upper().replace("-", "_"), default)
