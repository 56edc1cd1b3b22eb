"""The docs' promises: the model example in docs/checker.md runs, and the JSON format doc's example loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from verify_histories import op

from conclave.verify.checker import Verdict, check_operations
from conclave.verify.formats import load
from conclave.verify.history import Status

DOCS = Path(__file__).resolve().parents[2] / "docs"


def code_blocks(name: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / name).read_text(), re.S)


def test_counter_model_example_works() -> None:
    (source,) = [b for b in code_blocks("checker.md", "python") if "class Counter" in b]
    scope: dict[str, Any] = {}
    exec(compile(source, "docs/checker.md", "exec"), scope)
    counter = scope["Counter"]()
    ops = [
        op(0, 0, "add", 2, None, Status.OK, 0, 4),
        op(1, 1, "add", 3, None, Status.OK, 1, 5),
        op(2, 2, "read", None, 3, Status.OK, 2, 3),  # only the second add had happened
    ]
    assert check_operations(ops, counter).verdict is Verdict.LINEARIZABLE
    ops.append(op(3, 2, "read", None, 3, Status.OK, 6, 7))  # both adds returned: 5, not 3
    result = check_operations(ops, counter)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert "read returned 3 but the counter is 5" in result.failing[0].blocked[0].reason


def test_json_example_loads() -> None:
    (example,) = code_blocks("history-format.md", "json")
    ops = load(example, "history-format.md").operations
    assert [(o.f, o.status.value) for o in ops] == [("write", "ok"), ("read", "ok"), ("cas", "fail"), ("write", "info")]
