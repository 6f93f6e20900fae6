"""Small text helpers shared by the console, planning and the report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def format_duration(seconds: float) -> str:
    """5h12m, 3m20s, 45s; 2d3h beyond a day."""
    s = int(round(max(seconds, 0.0)))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


PENDING_LISTED = 20  # a trial table lists pending trials one by one up to this many


def listed_trials(
    trials: list[Any], status_of: Callable[[Any], str]
) -> tuple[list[Any], str | None]:
    """The trials a console table lists, and the line that stands for those it does not:
    past `PENDING_LISTED` pending trials (never started), none of them is listed (a stopped
    sweep of 10,000 trials would print 10,000 rows of dashes)."""
    pending = sum(status_of(t) == "pending" for t in trials)
    if pending <= PENDING_LISTED:
        return trials, None
    shown = [t for t in trials if status_of(t) != "pending"]
    return shown, f"... and {pending:,} pending trials (not started yet), not listed"
