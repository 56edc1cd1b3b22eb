"""`conclave check`: is a recorded history linearizable?

Reads the history file (or stdin for "-"), runs the pure checker of
``conclave.verify`` with a wall-clock deadline, prints the explanation and, as
its last line, exactly one of ``linearizable`` / ``not linearizable`` /
``unknown``; the exit status is 0, 1 or 2 (2 also for unreadable input).
Partitions (keys) are checked in ``--jobs`` worker processes when there are
several; each gets an equal share of ``--max-memory`` and the common deadline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Hashable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conclave.verify.checker import Limits, PartitionResult
    from conclave.verify.history import Operation

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
        "--time-limit",
        "--timeout",
        dest="timeout",
        type=float,
        metavar="SECONDS",
        help="give up with 'unknown' after this long (default: none)",
    )
    p.add_argument(
        "--max-memory",
        type=float,
        default=1024,
        metavar="MIB",
        help="memory bound: give up with 'unknown' once the search (caches, stacks, carried states; estimated) "
        "holds this many MiB; the loaded history comes on top (default 1024)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        default=1,
        help="check partitions (keys) in N worker processes, at most one per partition (default 1: all in this "
        "process; worth it only when some keys take long to check, since histories and results are copied)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conclave.verify.checker import check, combine, partitions
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
    for option, value in (("time-limit", args.timeout), ("max-memory", args.max_memory), ("jobs", args.jobs)):
        if value is not None and not value > 0:
            print(f"conclave check: --{option} must be positive", file=sys.stderr)
            print("unknown")
            return 2
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    memory = int(args.max_memory * (1 << 20))
    try:
        model = model_named(args.model)
        history = load(text, source, args.format)
        parts = partitions(history.operations, model, source)
        jobs = min(args.jobs, len(parts))
        if jobs <= 1:
            result = check(history, model, _limits(deadline, memory))
        else:
            work = [(args.model, key, kept, ignored, deadline, memory // jobs) for key, kept, ignored in parts]
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                result = combine(model, list(pool.map(_check_part, work)))
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


def _limits(deadline: float | None, memory: int) -> Limits:
    from conclave.verify.checker import Limits

    def should_stop() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    # Every key gets its verdict: a failing key does not stop the others.
    return Limits(should_stop=should_stop, memory_bytes_max=memory, stop_at_first_failure=False)


def _check_part(work: tuple[str, Hashable, list[Operation], list[Operation], float | None, int]) -> PartitionResult:
    """One partition, in a worker process (monotonic time is the machine's, shared with the parent)."""
    from conclave.verify.checker import check_partition
    from conclave.verify.model import model_named

    model_name, key, kept, ignored, deadline, memory = work
    return check_partition(key, kept, ignored, model_named(model_name), _limits(deadline, memory))
