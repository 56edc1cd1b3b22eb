"""Process-level composition: one member = a ``Node`` plus its client-facing listeners.

A sharded member (``--shards`` / ``--shard-split-keys``, or a data dir created so) runs a
``server/groups.MemberGroups`` instead of one Node, served through ``server/sharded.ShardedBackend``;
its HTTP router also answers ``GET /conclave/shards`` (the JSON ``conclave shards`` reads).

``serve_forever`` runs until SIGTERM/SIGINT (graceful: stop accepting, fsync, close,
exit 0) or until the member is removed from the cluster (exit 0, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from typing import Any

from conclave.server.config import ConfigError, ServerConfig, parse_url
from conclave.storage.base import CorruptionError

log = logging.getLogger("conclave.runner")


class Member:
    """A running member: the node and the client listeners in front of it."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.node: Any = None
        self.groups: Any = None  # server/groups.MemberGroups on a sharded member
        self.sharded: Any = None  # its server/sharded.ShardedBackend (closed before the groups stop)
        self.grpc_server: Any = None
        self.native_server: Any = None
        self.http_router: Any = None  # api.http.HttpRouter: the JSON gateway, /version, /metrics, /health...
        self.http_server: Any = None  # the --listen-client-http-urls listener
        self.metrics_servers: list[Any] = []  # the --listen-metrics-urls listeners

    async def start(self) -> None:
        from conclave.api.edge_server import IMPORT_ERROR, choose_engine
        from conclave.api.gateway import gateway_router
        from conclave.api.grpc_server import GRPC_OVERHEAD_BYTES
        from conclave.api.health import Health, register_routes
        from conclave.api.http import HttpRouter, not_found, start_http_server
        from conclave.api.rpcmetrics import RpcMetrics
        from conclave.cli import tls_listeners
        from conclave.server import tls
        from conclave.server.backend import NodeBackend
        from conclave.server.node import Node

        try:
            engine = choose_engine(self.cfg.grpc_engine)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(str(exc)) from None
        tls.validate_config(self.cfg)  # `conclave serve` did already; a ServerConfig built in code may not have
        tls.prepare_auto_tls(self.cfg)  # before the node: the peer transport needs its files too
        tls.warn_unused(self.cfg)
        client_tls = tls.client_settings(self.cfg)
        # What the chosen engine cannot enforce is refused before anything listens.
        secure = [self.cfg.client_url_is_tls(u) for u in self.cfg.listen_client_urls]
        tls_kw: dict[str, Any] = {}
        if engine == "rust" and any(secure):
            from conclave.api.edge_server import EdgeServer

            tls_kw = tls_listeners.edge_kwargs(client_tls, secure, EdgeServer.__init__)
        elif any(secure):
            tls_listeners.python_engine_refusals(client_tls)
        from conclave.server import datadir

        splits = datadir.shard_split(self.cfg)  # fixed at creation: a different --shards is refused here
        backend: Any
        if splits:
            from conclave.server.groups import MemberGroups
            from conclave.server.sharded import ShardedBackend

            self.groups = MemberGroups(self.cfg, splits)
            self.node = self.groups.meta
            await self.groups.start()
            backend = ShardedBackend(self.groups)
            backend.start_cross_shard(self.cfg.data_dir)
            self.sharded = backend
        else:
            self.node = Node(self.cfg)
            await self.node.start()
            backend = NodeBackend(self.node)
        registry = self.node.metrics.registry
        rpc_metrics = RpcMetrics(registry, extensive=self.cfg.metrics == "extensive")
        health = Health(backend, timeout_s=self.cfg.request_timeout_s, registry=registry)
        self.http_router = gateway_router(backend)
        register_routes(self.http_router, health)
        if self.groups is not None:
            self.http_router.add("/conclave/shards", _shards_route(backend))
        self.metrics_router = HttpRouter()  # --listen-metrics-urls: metrics and health only, as etcd's
        register_routes(self.metrics_router, health)
        http_urls = self.cfg.listen_client_http_urls
        if engine == "rust":
            from conclave.api.edge_server import EdgeServer

            hps = [parse_url(u, "listen-client-urls") for u in self.cfg.listen_client_urls]
            addrs = [(hp.host, hp.port) for hp in hps]
            try:
                # HTTP/1.1 beside gRPC on the client port, unless it has its own URLs (as etcd 3.5).
                http_handler = not_found if http_urls else self.http_router
                self.grpc_server = EdgeServer(backend, addrs, max_request_bytes=self.cfg.max_request_bytes,
                                              http_handler=http_handler, rpc_metrics=rpc_metrics, **tls_kw)  # fmt: skip
            except ValueError as exc:  # unreadable TLS files
                raise ConfigError(str(exc)) from None
            log.info("gRPC engine: rust (compiled edge)")
        else:
            import grpc

            from conclave.api.grpc_server import etcd_handlers, server_options

            if IMPORT_ERROR:
                log.warning(
                    "gRPC engine: python (grpc.aio), because the compiled edge is not built (%s); "
                    "`make edge` builds it where a Rust toolchain is installed", IMPORT_ERROR)
            else:
                log.info("gRPC engine: python (grpc.aio)")
            interceptors: list[Any] = [rpc_metrics.interceptor()]
            if any(secure) and (client_tls.crl_file or client_tls.allowed_hostnames):
                interceptors.append(tls_listeners.ClientCertCheck(client_tls).interceptor())
            self.grpc_server = grpc.aio.server(options=server_options(self.cfg.max_request_bytes),
                                               interceptors=interceptors)  # fmt: skip
            self.grpc_server.add_generic_rpc_handlers(etcd_handlers(backend))
            for url in self.cfg.listen_client_urls:
                hp = parse_url(url, "listen-client-urls")
                if self.cfg.client_url_is_tls(url):
                    creds = tls_listeners.grpc_credentials(client_tls)
                    bound = self.grpc_server.add_secure_port(f"{hp.host}:{hp.port}", creds)
                else:
                    bound = self.grpc_server.add_insecure_port(f"{hp.host}:{hp.port}")
                if bound == 0:
                    raise ConfigError(f"--listen-client-urls: cannot listen on {hp}")
            await self.grpc_server.start()
            if not http_urls:
                log.info("JSON gateway: not served (the python engine cannot share the gRPC port; "
                         "give --listen-client-http-urls)")
        if http_urls:
            hps = [parse_url(u, "listen-client-http-urls") for u in http_urls]
            limit = self.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES  # as the edge's, for both ports
            self.http_server = await start_http_server(self.http_router, [(hp.host, hp.port) for hp in hps],
                                                       max_body_bytes=limit)  # fmt: skip
            log.info("JSON gateway and /version on %s", ",".join(http_urls))
        if self.cfg.listen_native_urls:
            try:
                from conclave.api.native import start_native_server
            except ImportError:
                log.warning("native protocol listener is not available in this build")
            else:
                native_ssl = None
                if any(self.cfg.client_url_is_tls(u) for u in self.cfg.listen_native_urls):
                    native_ssl = tls.ContextSource(client_tls, server=True).listening_context()
                self.native_server = await start_native_server(
                    backend, self.cfg, ssl=native_ssl, peer_check=tls_listeners.native_peer_check(client_tls))
        if self.cfg.listen_metrics_urls:
            hps = [parse_url(u, "listen-metrics-urls") for u in self.cfg.listen_metrics_urls]
            try:
                self.metrics_servers.append(
                    await start_http_server(self.metrics_router, [(hp.host, hp.port) for hp in hps]))
            except OSError as exc:
                raise ConfigError(f"--listen-metrics-urls: cannot listen: {exc}") from None
            log.info("metrics and health on %s", ",".join(self.cfg.listen_metrics_urls))
        log.info("member %s (%x) serving clients on %s", self.cfg.name, self.node.member_id,
                 ",".join(self.cfg.listen_client_urls))

    async def stop(self) -> None:
        for srv in self.metrics_servers:
            await srv.stop()
        if self.native_server is not None:
            self.native_server.close()
        if self.http_server is not None:
            await self.http_server.stop()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)
        if self.sharded is not None:
            await self.sharded.close()
        if self.groups is not None:
            await self.groups.stop()
        elif self.node is not None:
            await self.node.stop()


def _shards_route(backend: Any) -> Any:
    """``GET /conclave/shards``: this member's view of every group, as JSON (``conclave shards``)."""
    import json

    async def handler(method: str, path: str, headers: Any, body: Any) -> Any:
        rows = await backend.shard_table()
        return 200, [("content-type", "application/json")], json.dumps(rows[0]).encode()

    return handler


GC_THRESHOLDS = (20_000, 10, 100)
GC_FREEZE_INTERVAL_S = 0.0
"""Default seconds between ``gc.freeze`` calls (env CONCLAVE_GC_FREEZE_INTERVAL_S; 0: never)."""
GC_FULL_INTERVAL_S = 30.0
"""With periodic freezing: seconds between full collections of the frozen objects
(env CONCLAVE_GC_FULL_INTERVAL_S; 0: never, the old freeze-only policy)."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: not a number of seconds: {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name}: must be >= 0, got {raw!r}")
    return value


def full_collection() -> tuple[int, float]:
    """Collect cycles among frozen objects too: (unreachable objects found, pause in seconds)."""
    started = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found, time.perf_counter() - started


def gc_after_start() -> None:
    """The default policy: freeze once what start-up built (modules, the restored store, replay).

    Why not freeze every second any more: the store's records are packed ``bytes`` (not tracked
    by the cyclic GC), so full collections no longer rescan the key space, and a periodic freeze
    keeps every cycle that lived a second (cancelled tasks and their tracebacks, closed streams)
    out of the collector for good: bench/soak.py measured +92 MB in 10 minutes of churn that way
    (bench/README.md). What start-up built is long-lived and acyclic, so freezing it once costs
    nothing and keeps it out of CPython's own (amortised) full collections.
    """
    gc.collect()
    gc.freeze()


async def _gc_freezer(freeze_interval_s: float, full_interval_s: float) -> None:
    """The previous policy, kept behind CONCLAVE_GC_FREEZE_INTERVAL_S for comparisons.

    Freezes the survivors of every ``freeze_interval_s``; every ``full_interval_s`` the
    permanent generation is unfrozen and collected once (one full pause, logged), which bounds
    how long cyclic garbage lives; 0 disables that (freeze only: such garbage is kept forever).
    """
    loop = asyncio.get_running_loop()
    next_full = loop.time() + full_interval_s
    while True:
        await asyncio.sleep(freeze_interval_s)
        if full_interval_s > 0 and loop.time() >= next_full:
            found, pause = full_collection()
            log.info("gc: full collection freed %d unreachable objects in %.0f ms (%d objects frozen)",
                     found, pause * 1000, gc.get_freeze_count())
            next_full = loop.time() + full_interval_s
        else:
            gc.freeze()


async def _main(cfg: ServerConfig) -> int:
    try:
        freeze_interval = _env_seconds("CONCLAVE_GC_FREEZE_INTERVAL_S", GC_FREEZE_INTERVAL_S)
        full_interval = _env_seconds("CONCLAVE_GC_FULL_INTERVAL_S", GC_FULL_INTERVAL_S)
    except ConfigError as exc:
        print(f"conclave serve: {exc}", file=sys.stderr)
        return 1
    gc.set_threshold(*GC_THRESHOLDS)
    freezer = asyncio.ensure_future(asyncio.sleep(0))
    if freeze_interval > 0:
        freezer = asyncio.ensure_future(_gc_freezer(freeze_interval, full_interval))
    member = Member(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await member.start()
    except (ConfigError, CorruptionError, OSError) as exc:
        print(f"conclave serve: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await member.stop()
        return 1
    if freeze_interval <= 0:
        gc_after_start()
    removed = asyncio.ensure_future(member.node.stopped.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({removed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    reason = member.node.stop_reason
    fatal = member.node.fatal
    freezer.cancel()
    await member.stop()
    if reason:
        print(f"conclave serve: {reason}", file=sys.stderr)
    if fatal:
        return 1
    log.info("stopped cleanly")
    return 0


def serve_forever(cfg: ServerConfig) -> int:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_main(cfg))
