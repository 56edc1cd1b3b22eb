"""The recipes sit on the client and the Lock/Election services beside the gRPC edge, with no import cycle.

Every import is read from the source (module level and inside functions alike, TYPE_CHECKING
blocks included), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import conclave

SRC = Path(conclave.__file__).parent


def imported(module: str) -> set[str]:
    """Every module ``module`` names in an import statement (``from a import b`` gives a and a.b)."""
    tree = ast.parse((SRC / (module.removeprefix("conclave.").replace(".", "/") + ".py")).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_client_never_imports_the_recipes() -> None:
    assert "conclave.client.recipes" not in imported("conclave.client.aio")
    assert "conclave.client.aio" in imported("conclave.client.recipes")  # recipes are built on the client


def test_lock_and_election_services_never_import_the_grpc_edge() -> None:
    for module in ("conclave.api.lock", "conclave.api.election", "conclave.api.recipes"):
        assert not {n for n in imported(module) if n.startswith("conclave.api.grpc_server")}, module


def test_the_public_async_client_has_the_recipes() -> None:
    from conclave.client import AsyncClient, CoreClient, Election, Lock

    assert issubclass(AsyncClient, CoreClient)
    assert AsyncClient.lock.__annotations__["return"] in ("Lock", Lock)
    assert AsyncClient.election.__annotations__["return"] in ("Election", Election)
    assert not hasattr(CoreClient, "lock")
