"""``Client``: the synchronous client, the same surface as ``AsyncClient``.

Theory of operation: each ``Client`` owns one private event loop running in a daemon thread
and one ``AsyncClient`` living on it. Every method call is shipped to that loop and waited for;
objects the async client hands out (locks, sessions, watches, recipes, transaction builders) come
back wrapped in :class:`SyncProxy`, which does the same for their methods, turns ``async with``
into ``with`` and async iterators into plain iterators. So there is exactly one implementation
of the protocol logic, and sync users get threads-safe calls (the loop serialises them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any

from conclave.client.recipes import AsyncClient


class _Loop:
    """An event loop in a daemon thread; ``run(coro)`` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="conclave-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if threading.current_thread() is self.thread:
            raise RuntimeError("a sync Client cannot be called from its own loop; use AsyncClient there")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(concurrent.futures.CancelledError, Exception):
                    fut.result(timeout=5)
            raise

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self.run(run())

    def stop(self) -> None:
        if self.loop.is_running() and threading.current_thread() is not self.thread:
            async def cancel_all() -> None:
                # Background work (session keep-alives, watches) ends with the client.
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=5)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


def _wrap(runner: _Loop, result: Any) -> Any:
    if getattr(type(result), "_sync_wrap", False):
        return SyncProxy(runner, result)
    if hasattr(result, "__anext__"):
        return SyncIterator(runner, result)
    return result


class SyncIterator:
    """A plain iterator over an async iterator living on the client's loop."""

    def __init__(self, runner: _Loop, aiter: Any) -> None:
        self._runner = runner
        self._aiter = aiter

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await self._aiter.__anext__()
            except StopAsyncIteration:
                return False, None

        ok, item = self._runner.run(step())
        if not ok:
            raise StopIteration
        return item

    def close(self) -> None:
        aclose = getattr(self._aiter, "aclose", None)
        if aclose is not None and not self._runner.loop.is_closed():
            self._runner.run(aclose())
        close = getattr(self._aiter, "close", None)
        if close is not None and aclose is None:
            self._runner.call(close)

    def __enter__(self) -> SyncIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncProxy:
    """Synchronous view of an async object: coroutine methods run on the client's loop."""

    def __init__(self, runner: _Loop, target: Any) -> None:
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            def call(*args: Any, **kwargs: Any) -> Any:
                return _wrap(self._runner, self._runner.run(attr(*args, **kwargs)))

            call.__doc__ = attr.__doc__
            return call
        if inspect.isasyncgenfunction(attr):
            def agen(*args: Any, **kwargs: Any) -> Any:
                return SyncIterator(self._runner, attr(*args, **kwargs))

            agen.__doc__ = attr.__doc__
            return agen
        if callable(attr) and not isinstance(attr, type):
            def plain(*args: Any, **kwargs: Any) -> Any:
                return _wrap(self._runner, self._runner.call(lambda: attr(*args, **kwargs)))

            plain.__doc__ = attr.__doc__
            return plain
        return attr

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | {n for n in dir(self._target) if not n.startswith("_")})

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __enter__(self) -> Any:
        enter = getattr(self._target, "__aenter__", None)
        if enter is None:
            raise TypeError(f"{type(self._target).__name__} is not a context manager")
        result = self._runner.run(enter())
        return self if result is self._target else _wrap(self._runner, result)

    def __exit__(self, *exc: Any) -> None:
        self._runner.run(self._target.__aexit__(*exc))

    def __iter__(self) -> Iterator[Any]:
        return SyncIterator(self._runner, self._target.__aiter__())

    def __repr__(self) -> str:
        return f"<sync {self._target!r}>"


class Client(SyncProxy):
    """The synchronous Conclave client: ``Client(endpoints=["127.0.0.1:2381"])``.

    Same methods as :class:`~conclave.client.recipes.AsyncClient` (``get``, ``put``, ``delete``,
    ``get_prefix``, ``range``, ``transaction``/``txn``, ``watch``, ``lease``, ``session``,
    ``members``, ``status``, ``compact``, ``lock``, ``election``, ``counter``, ``queue``,
    ``broadcast``, ``barrier``, ``double_barrier``, ``claim_unique`` ...), without ``await``.
    ``protocol="grpc"`` speaks the etcd v3 API instead of the native protocol. ``user``/``password``
    log every connection in (re-authenticating by itself when a token expires); ``ca_file``,
    ``cert_file``/``key_file`` and ``insecure_skip_tls_verify`` (or ``https://`` endpoints) turn
    TLS on, for both protocols.
    """

    def __init__(
        self,
        endpoints: Iterable[str] | str | None = None,
        protocol: str = "native",
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        discover: bool = True,
        *,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure_skip_tls_verify: bool = False,
        tls: bool | None = None,
    ) -> None:
        aio = AsyncClient(endpoints, protocol=protocol, timeout=timeout, connect_timeout=connect_timeout,
                          discover=discover, user=user, password=password, ca_file=ca_file, cert_file=cert_file,
                          key_file=key_file, insecure_skip_tls_verify=insecure_skip_tls_verify, tls=tls)
        super().__init__(_Loop(), aio)

    @property
    def aio(self) -> AsyncClient:
        """The underlying AsyncClient (lives on this client's private loop)."""
        target: AsyncClient = self._target
        return target

    def close(self) -> None:
        runner: _Loop = self._runner
        if not runner.loop.is_closed() and runner.loop.is_running():
            runner.run(self._target.close())
        runner.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
