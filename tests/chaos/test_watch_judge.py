"""The watch workload's own checks, on made-up segments: progress notifications (bookmarks) and gaps."""

from __future__ import annotations

import time

from conclave.chaos.workload import Recorder, WatchWorkload

REF = [(10, "watch/k1", "1"), (11, "watch/k2", "2"), (12, "watch/k1", "3"), (14, "watch/k3", "4")]


def judge(items: list[tuple[str, int, str, str]], start: int = 10) -> list[str]:
    w = WatchWorkload(endpoints=["x"], native_endpoints=["y"], recorder=Recorder(time.monotonic()))
    w.reference = list(REF)  # type: ignore[attr-defined]
    w.ref_start = 10  # type: ignore[attr-defined]
    w.bookmarked = {7: [(start, items)]}
    return w.judge([]).violations


def ev(i: int) -> tuple[str, int, str, str]:
    r, k, v = REF[i]
    return ("e", r, k, v)


def test_a_truthful_bookmark_passes() -> None:
    assert judge([ev(0), ev(1), ("p", 11, "", ""), ev(2), ev(3), ("p", 14, "", "")]) == []
    assert judge([("p", 13, "", ""), ev(3)], start=13) == []  # nothing committed in [13, 13]


def test_an_event_below_a_bookmark_that_arrives_after_it_is_a_violation() -> None:
    found = judge([ev(0), ("p", 12, "", ""), ev(1), ev(2)])
    assert any("after a progress notification at 12" in v for v in found), found


def test_a_bookmark_past_a_missing_event_is_a_violation() -> None:
    found = judge([ev(0), ev(2), ("p", 12, "", "")])  # revision 11 was never delivered
    assert any("progress notification at 12 after 2 events" in v for v in found), found
    assert any("events differ" in v for v in found), found
