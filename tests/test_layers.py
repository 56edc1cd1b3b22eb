"""The layers of docs/architecture.md, enforced: every import in src/conclave is parsed and checked.

Each module belongs to a layer (its package under ``conclave``; a few api modules form the shared
gRPC codec); a layer may import only the layers drawn below it. Imports inside functions count
too (a lazy import is still a dependency), except those under ``if TYPE_CHECKING:``. On top of the
layer table, the module graph must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "conclave"

# The gRPC codec part of api: message classes, the one protobuf <-> domain mapping, stubs. The
# client speaks gRPC with them; they import no server and no transport.
API_CODEC = {"conclave.api.pb", "conclave.api.convert", "conclave.api.stubs", "conclave.api.gen",
             "conclave.api.protogen"}

COMPILED = {"conclave._edge"}

# layer -> the layers it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "raft": set(),
    "kv": set(),
    "verify": set(),
    "version": set(),
    "machine": {"raft", "kv"},
    "storage": {"raft"},
    "wire": {"kv", "version"},
    "api.codec": {"wire", "kv", "version"},
    "api": {"api.codec", "edge", "wire", "kv", "version"},  # api.edge_server drives the compiled edge
    "edge": set(),  # conclave._edge (Rust): moves bytes, imports nothing of Python
    "server": {"raft", "storage", "machine", "kv", "wire", "version"},
    "client": {"api.codec", "wire", "kv", "version"},
    "sim": {"raft", "machine", "kv", "storage", "verify"},
    "loadgen": {"client", "api.codec", "wire", "kv", "version"},
    "chaos": {"client", "api.codec", "wire", "kv", "verify", "version"},
    "lab": {"sim", "raft", "machine", "kv", "verify"},
    "shards": {"raft", "machine", "kv", "storage", "wire", "server", "version"},
}
# cli is the composition root: it may import every layer; nothing imports cli.
ROOT_LAYERS = {"cli", "main", "root"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if any(module == c or module.startswith(c + ".") for c in API_CODEC):
        return "api.codec"
    parts = module.split(".")
    if len(parts) == 1:
        return "root"  # conclave/__init__.py: the public re-exports of the client
    if parts[1] == "__main__":
        return "main"
    if parts[1] == "_edge":
        return "edge"
    return parts[1]


def resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
    path = SRC / Path(*name.split("."))
    # a compiled extension (conclave._edge) counts as a module whether or not it is built here
    return path.with_suffix(".py").exists() or path.is_dir() or name in COMPILED


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    module = module_name(path)
    skip = _type_checking_nodes(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, path.name == "__init__.py", node)
            # ``from conclave.api import pb`` depends on the submodule conclave.api.pb (the package's
            # __init__ holds only a docstring); ``from conclave.kv import errors`` likewise.
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
            found += [(node.lineno, s) for s in subs] if subs else [(node.lineno, target)]
    return [(ln, t) for ln, t in found if t == "conclave" or t.startswith("conclave.")]


def sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "gen" not in p.relative_to(PKG).parts)


def violations(module: str, targets: list[tuple[int, str]]) -> list[str]:
    """The imports of ``module`` that go against the layer table, one line each."""
    mine = layer_of(module)
    bad = []
    for line, target in targets:
        theirs = layer_of(target)
        if target == "conclave":
            if mine not in ROOT_LAYERS:
                bad.append(f"{module}:{line}: imports the package root (which loads the client)")
        elif theirs in ROOT_LAYERS and mine not in ROOT_LAYERS:
            bad.append(f"{module}:{line}: imports {target} (the composition root)")
        elif theirs != mine and mine not in ROOT_LAYERS and theirs not in ALLOWED.get(mine, set()):
            bad.append(f"{module}:{line}: ({mine}) imports {target} ({theirs})")
    return bad


def test_the_table_refuses_what_the_drawing_forbids() -> None:
    assert violations("conclave.server.node", [(1, "conclave.api.grpc_server")])
    assert violations("conclave.client.native", [(1, "conclave.server.node")])
    assert violations("conclave.client.native", [(1, "conclave.api.native")])
    assert violations("conclave.raft.node", [(1, "conclave.kv.mvcc")])
    assert violations("conclave.server.backend", [(1, "conclave")])
    assert violations("conclave.api.native", [(1, "conclave.cli.main")])
    assert not violations("conclave.client.grpc_transport", [(1, "conclave.api.pb"), (2, "conclave.wire.native")])
    assert not violations("conclave.cli.runner", [(1, "conclave.api.grpc_server"), (2, "conclave.server.node")])


def test_every_import_follows_the_layers() -> None:
    bad = []
    for path in sources():
        bad += violations(module_name(path), imports_of(path))
    assert not bad, "imports against the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_every_package_has_a_layer() -> None:
    packages = {layer_of(module_name(p)) for p in sources()}
    unknown = packages - set(ALLOWED) - ROOT_LAYERS
    assert not unknown, f"packages with no place in the layer table: {sorted(unknown)}"


def test_no_import_cycles() -> None:
    modules = {module_name(p): p for p in sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for _, target in imports_of(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package's __init__ importing its own submodules is not a cycle of the design
            if target and target != name and not target.startswith(name + "."):
                deps.add(target)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
