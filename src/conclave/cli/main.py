"""`conclave`: the command-line entry point and composition root.

Each subcommand lives in its own module under ``conclave.cli`` and exposes
``register(subparsers)``; heavy imports happen inside the handlers so that
``conclave --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Order is the order shown in --help.
SUBCOMMAND_MODULES = (
    "conclave.cli.serve",
    "conclave.cli.up",
    "conclave.cli.shards",
    "conclave.cli.snapshot",
    "conclave.cli.sim",
    "conclave.cli.check",
    "conclave.cli.lab",
    "conclave.cli.bench",
    "conclave.cli.client",
    "conclave.cli.chaos",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conclave",
        description="Conclave: a Raft-replicated, linearizable key-value store that speaks the etcd v3 API.",
    )
    from conclave import __version__

    parser.add_argument("--version", action="version", version=f"conclave {__version__}",
                        help="print the version and exit")
    from conclave.cli.client import add_global_flags

    add_global_flags(parser)  # etcdctl's global flags (--endpoints, --user, --cacert ...) before a command
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from conclave.cli.client import normalize_bool_flags

    parser = build_parser()
    args = parser.parse_args(normalize_bool_flags(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`conclave ... | head`): stop quietly, as a Unix filter does.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
