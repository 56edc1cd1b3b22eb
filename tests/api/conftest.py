"""Fixtures for the gRPC edge: the fake backend served by a real gRPC server on 127.0.0.1.

The engine is the default one (``CONCLAVE_GRPC_ENGINE``, else ``auto``: the compiled edge when it
is built, else grpc.aio). A test marked ``both_engines`` runs once on the default engine and once
on the python engine, so the portable fallback stays correct too.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest

from conclave.api import edge_server
from conclave.api.grpc_server import EtcdGrpcServer, start_etcd_server
from conclave.api.stubs import EtcdStub

from .fake_backend import FakeBackend


class ServedBackend:
    """A FakeBackend behind a grpc.aio server whose event loop runs in a background thread."""

    def __init__(self, engine: str | None = None, **server_kwargs: Any) -> None:
        self.engine = edge_server.choose_engine(engine or default_engine())
        self.backend = FakeBackend()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="etcd-api-test-loop", daemon=True)
        self.thread.start()
        start: Any = edge_server.start_edge_server if self.engine == "rust" else start_etcd_server
        try:
            self.server: EtcdGrpcServer = self.run(start(self.backend, "127.0.0.1", 0, **server_kwargs))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
            raise
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


def default_engine() -> str:
    return os.environ.get("CONCLAVE_GRPC_ENGINE", "auto")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_engines: run on the default gRPC engine and on the python engine")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_engines") is None or "served" not in metafunc.fixturenames:
        return
    default = edge_server.choose_engine(default_engine())
    engines = [default] if default == "python" else [default, "python"]
    metafunc.parametrize("served", engines, indirect=True, ids=[f"{e}-engine" for e in engines])


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[ServedBackend]:
    s = ServedBackend(getattr(request, "param", None))
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
