"""Conclave: a fault-tolerant coordination service (Raft + MVCC key-value store, etcd v3 API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conclave.version import __version__

if TYPE_CHECKING:
    from conclave.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the server or the pure cores does not load the client.
    if name in ("Client", "AsyncClient"):
        import conclave.client

        return getattr(conclave.client, name)
    raise AttributeError(f"module 'conclave' has no attribute {name!r}")
