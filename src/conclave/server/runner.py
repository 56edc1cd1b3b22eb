"""Process-level composition: one member = a ``Node`` plus its client-facing listeners.

``serve_forever`` runs until SIGTERM/SIGINT (graceful: stop accepting, fsync, close,
exit 0) or until the member is removed from the cluster (exit 0, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from typing import Any

from conclave.server.config import ConfigError, ServerConfig, parse_url
from conclave.storage.base import CorruptionError

log = logging.getLogger("conclave.runner")


class Member:
    """A running member: the node and the client listeners in front of it."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.node: Any = None
        self.grpc_server: Any = None
        self.native_server: Any = None

    async def start(self) -> None:
        from conclave.server.backend import NodeBackend
        from conclave.server.node import Node

        self.node = Node(self.cfg)
        await self.node.start()
        backend = NodeBackend(self.node)
        from conclave.api.edge_server import IMPORT_ERROR, choose_engine

        try:
            engine = choose_engine(self.cfg.grpc_engine)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(str(exc)) from None
        if engine == "rust":
            from conclave.api.edge_server import EdgeServer

            hps = [parse_url(u, "listen-client-urls") for u in self.cfg.listen_client_urls]
            addrs = [(hp.host, hp.port) for hp in hps]
            self.grpc_server = EdgeServer(backend, addrs, max_request_bytes=self.cfg.max_request_bytes)
            log.info("gRPC engine: rust (compiled edge)")
        else:
            import grpc

            from conclave.api.grpc_server import etcd_handlers, server_options

            if IMPORT_ERROR:
                log.info("gRPC engine: python (grpc.aio); the compiled edge is not built: %s", IMPORT_ERROR)
            else:
                log.info("gRPC engine: python (grpc.aio)")
            self.grpc_server = grpc.aio.server(options=server_options(self.cfg.max_request_bytes))
            self.grpc_server.add_generic_rpc_handlers(etcd_handlers(backend))
            for url in self.cfg.listen_client_urls:
                hp = parse_url(url, "listen-client-urls")
                bound = self.grpc_server.add_insecure_port(f"{hp.host}:{hp.port}")
                if bound == 0:
                    raise ConfigError(f"--listen-client-urls: cannot listen on {hp}")
            await self.grpc_server.start()
        if self.cfg.listen_native_urls:
            try:
                from conclave.api.native import start_native_server
            except ImportError:
                log.warning("native protocol listener is not available in this build")
            else:
                self.native_server = await start_native_server(backend, self.cfg)
        log.info("member %s (%x) serving clients on %s", self.cfg.name, self.node.member_id,
                 ",".join(self.cfg.listen_client_urls))

    async def stop(self) -> None:
        if self.native_server is not None:
            self.native_server.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)
        if self.node is not None:
            await self.node.stop()


GC_THRESHOLDS = (20_000, 10, 100)
GC_FREEZE_INTERVAL_S = 1.0


async def _gc_freezer() -> None:
    """Keep the cyclic garbage collector off the store.

    The store holds millions of long-lived, acyclic objects (key revisions, events). Left to
    itself, CPython's full collections rescan all of them: in a 3-member run that was 12 pauses
    of up to 330 ms in 5 s and a third of the CPU. Moving what survived to the permanent
    generation every second (``gc.freeze``) makes every collection scan only young objects;
    memory is still freed by reference counting, only cycles among frozen objects are kept.
    """
    while True:
        await asyncio.sleep(GC_FREEZE_INTERVAL_S)
        gc.freeze()


async def _main(cfg: ServerConfig) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    freezer = asyncio.ensure_future(_gc_freezer())
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
