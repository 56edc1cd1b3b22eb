"""`conclave check`: is a recorded history linearizable?

Reads the history file (or stdin for "-"), runs the pure checker of
``conclave.verify`` with a wall-clock deadline, prints the explanation and, as
its last line, exactly one of ``linearizable`` / ``not linearizable`` /
``unknown``; the exit status is 0, 1 or 2 (2 also for unreadable input).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

EXIT = {"linearizable": 0, "not linearizable": 1, "unknown": 2}


def register(sub: Any) -> None:
    from conclave.verify.formats import FORMATS
    from conclave.verify.model import MODELS

    p = sub.add_parser(
        "check",
        help="check a recorded history for linearizability",
        description="Check a history of operations for linearizability. The last line printed is "
        "'linearizable' (exit 0), 'not linearizable' (exit 1) or 'unknown' (exit 2; also for unreadable input).",
    )
    p.add_argument("history", metavar="HISTORY", help="history file, or - for stdin")
    p.add_argument(
        "--model",
        required=True,
        choices=list(MODELS),
        help="; ".join(f"{m.name}: {m.summary}" for m in MODELS.values()),
    )
    p.add_argument("--format", choices=FORMATS, help="history format (default: detected from the content)")
    p.add_argument("--html", metavar="OUT", help="also write a self-contained HTML timeline of the check to OUT")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up with 'unknown' after this long (default: none)"
    )
    p.add_argument(
        "--max-memory",
        type=float,
        default=1024,
        metavar="MIB",
        help="memory bound: give up with 'unknown' once the search caches hold about this many MiB (default 1024)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conclave.verify.checker import Limits, check
    from conclave.verify.errors import VerifyError
    from conclave.verify.formats import load
    from conclave.verify.model import model_named
    from conclave.verify.report import render_text
    from conclave.verify.viewer import render_html

    try:
        if args.history == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            text, source = Path(args.history).read_text(encoding="utf-8"), args.history
    except (OSError, UnicodeDecodeError) as exc:
        print(f"conclave check: cannot read {args.history}: {exc}", file=sys.stderr)
        print("unknown")
        return 2
    for name in ("timeout", "max_memory"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            print(f"conclave check: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            print("unknown")
            return 2
    should_stop = None
    if args.timeout is not None:
        deadline = time.monotonic() + args.timeout
        should_stop = lambda: time.monotonic() >= deadline  # noqa: E731
    try:
        model = model_named(args.model)
        history = load(text, source, args.format)
        limits = Limits(should_stop=should_stop, memory_bytes_max=int(args.max_memory * (1 << 20)))
        result = check(history, model, limits)
    except VerifyError as exc:
        print(f"conclave check: {exc}", file=sys.stderr)
        print("unknown")
        return 2
    print(f"history: {source} ({history.format})")
    print(render_text(result, model))
    if args.html:
        try:
            Path(args.html).write_text(render_html(history, result, model), encoding="utf-8")
        except OSError as exc:
            print(f"conclave check: cannot write {args.html}: {exc}", file=sys.stderr)
        else:
            print(f"timeline written to {args.html}")
    verdict: str = result.verdict.value
    print(verdict)
    return EXIT[verdict]
