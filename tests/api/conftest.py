"""Fixtures for the gRPC edge: the fake backend served by a real grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest

from conclave.api.grpc_server import EtcdGrpcServer, start_etcd_server
from conclave.api.stubs import EtcdStub

from .fake_backend import FakeBackend


class ServedBackend:
    """A FakeBackend behind a grpc.aio server whose event loop runs in a background thread."""

    def __init__(self, **server_kwargs: Any) -> None:
        self.backend = FakeBackend()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="etcd-api-test-loop", daemon=True)
        self.thread.start()
        # CONCLAVE_GRPC_ENGINE=rust runs these same tests on the compiled edge.
        start: Any = start_etcd_server
        if os.environ.get("CONCLAVE_GRPC_ENGINE", "python") in ("rust", "auto"):
            from conclave.api import edge_server

            if edge_server.choose_engine(os.environ["CONCLAVE_GRPC_ENGINE"]) == "rust":
                start = edge_server.start_edge_server
        self.server: EtcdGrpcServer = self.run(start(self.backend, "127.0.0.1", 0, **server_kwargs))
        self.endpoint = self.server.endpoint
        self.backend.client_urls = (f"http://{self.endpoint}",)
        self.channel = grpc.insecure_channel(self.endpoint)

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call_in_loop(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper())

    def stub(self, service: str) -> EtcdStub:
        return EtcdStub(self.channel, service)

    def close(self) -> None:
        self.channel.close()
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[ServedBackend]:
    s = ServedBackend()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def served_module() -> Iterator[ServedBackend]:
    s = ServedBackend()
    try:
        yield s
    finally:
        s.close()
