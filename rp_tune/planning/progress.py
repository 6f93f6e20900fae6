"""What a sweep is doing, without Ray: every trial's state read from storage (`--status`), the
progress line with its ETA, and the console's one line per event.

A trial's state comes from what the sweep keeps anyway: `trials.json` (every trial, stored at
the start), each trial folder's `result.json` (one line per reported epoch, written by Tune),
Tune's newest `experiment_state-*.json` (which trials errored or are running) and the driver's
lease (whether a driver holds the sweep now, so that "running" means running).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rp_tune.config import trial_epochs
from rp_tune.core import storage as store
from rp_tune.core.text import format_duration, listed_trials
from rp_tune.planning.records import is_finished, last_result, member_group, stored_trials
from rp_tune.trial.metrics import METRICS, metric

STATUSES = ("finished", "running", "failed", "stopped", "pending")
# Tune's trial statuses, as it saves them in experiment_state-*.json
_TUNE_ERROR, _TUNE_RUNNING = "ERROR", "RUNNING"


@dataclass
class TrialState:
    run_key: str
    status: str  # one of STATUSES; stopped: started, not running now, not done
    epoch: int
    epochs: int
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # training time reported so far (Tune's time_total_s)


def _tune_statuses(path: str) -> dict[str, str]:
    """run key -> Tune's status, from its newest experiment state ({} if none or unreadable:
    Tune may be rewriting it)."""
    try:
        names = sorted(n for n in store.list_names(path) if n.startswith("experiment_state-"))
        if not names:
            return {}
        data = json.loads(store.read_text(store.join(path, names[-1])))
        trials = [json.loads(entry[0]) for entry in data.get("trial_data", [])]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}
    return {t.get("relative_logdir", ""): t.get("status", "") for t in trials}


def sweep_status(path: str, driver_alive: bool) -> list[TrialState]:
    """Every trial of the sweep at `path` (a folder or URI) and where it stands.

    FileNotFoundError naming the path if no sweep was started there."""
    entries = stored_trials(path)
    if not entries:
        raise FileNotFoundError(f"no sweep at {path} (no trials.json)")
    tune = _tune_statuses(path)
    out = []
    for entry in entries:
        key, epochs = entry["run_key"], trial_epochs(entry["flat"])
        folder = store.join(path, key)
        last = last_result(folder)
        epoch = int(last.get("epoch", 0) or 0)
        tune_key = member_group(folder) or key  # a group member: its group's Tune trial
        if is_finished(last, epochs):
            status = "finished"
        elif tune.get(tune_key) == _TUNE_ERROR or last.get("member_failed"):
            status = "failed"
        elif not last and tune.get(tune_key) != _TUNE_RUNNING:
            status = "pending"
        else:
            status = "running" if driver_alive else "stopped"
        metrics = {k: v for k, v in last.items() if metric(k) is not None}
        seconds = float(last.get("time_total_s", 0.0) or 0.0)
        out.append(TrialState(key, status, epoch, epochs, metrics, seconds))
    return out


def counts(states: Sequence[TrialState]) -> dict[str, int]:
    return {s: sum(t.status == s for t in states) for s in STATUSES}


def status_table(states: Sequence[TrialState]) -> str:
    """One row per trial (status, epoch, validation and test accuracy, density), then the
    totals by status."""
    head = (
        f"{'run_key':<52} {'status':<9} {'epoch':>7} {'val_acc':>7} {'test_acc':>8} {'density':>7}"
    )
    rows = [head, "-" * len(head)]
    order = {s: i for i, s in enumerate(STATUSES)}
    listed, unlisted = listed_trials(list(states), lambda t: t.status)
    for t in sorted(listed, key=lambda t: (order[t.status], t.run_key)):

        def num(k: str, fmt: str, m: Mapping[str, Any] = t.metrics) -> str:
            return format(m[k], fmt) if isinstance(m.get(k), (int, float)) else "-"

        rows.append(
            f"{t.run_key:<52} {t.status:<9} {f'{t.epoch}/{t.epochs}':>7} "
            f"{num('val_acc', '.4f'):>7} {num('test_acc', '.4f'):>8} "
            f"{num('achieved_density', '.4f'):>7}"
        )
    if unlisted:
        rows.append(unlisted)
    c = counts(states)
    rows.append(f"trials: {len(states)}  " + "  ".join(f"{s}: {c[s]}" for s in STATUSES))
    return "\n".join(rows)


def eta_seconds(epoch_seconds: Sequence[float], epochs_left: int, concurrency: int) -> float | None:
    """Time to finish: mean measured seconds per epoch x epochs still to train (over all
    trials, started or not) / trials running at once. None before any epoch was measured."""
    if not epoch_seconds or epochs_left <= 0:
        return None if not epoch_seconds else 0.0
    mean = sum(epoch_seconds) / len(epoch_seconds)
    return mean * epochs_left / max(concurrency, 1)


class Progress:
    """The driver's view of a sweep for the console, fed by the Tune callback: one line per
    event (`started`, `finished`, `failed`, ...) and, at most every `every_s` seconds, the
    progress line `[37/828 done, 8 running, 1 failed | best val_acc 0.912 (key) | ETA 5h12m]`.
    """

    def __init__(
        self,
        epochs: Mapping[str, int],
        concurrency: int,
        metric: str = "val_acc",
        every_s: float = 30.0,
        clock=time.monotonic,
    ) -> None:
        self.epochs = dict(epochs)  # run key -> epochs, every trial of the sweep
        self.concurrency = concurrency
        self.metric = metric
        self.every_s = every_s
        self.clock = clock
        self.done: dict[str, int] = {}  # run key -> epochs trained (reported)
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.epoch_seconds: list[float] = []
        self._last_line = -math.inf

    # --- events ---------------------------------------------------------------------------
    def finished_before(self, keys: Iterable[str]) -> None:
        """Trials the sweep holds finished already (kept by --extend, reused from another
        sweep): done from the start, no epochs left."""
        for key in keys:
            self.finished.add(key)
            self.done[key] = self.epochs.get(key, 0)

    def started(self, key: str, resumed_from: int = 0) -> str:
        self.running.add(key)
        self.failed.discard(key)
        if resumed_from:
            self.done[key] = max(self.done.get(key, 0), resumed_from)
            return f"resumed  {key} at epoch {resumed_from}/{self.epochs.get(key, '?')}"
        return f"started  {key}"

    def result(self, key: str, result: Mapping[str, Any]) -> None:
        epoch = int(result.get("epoch", 0) or 0)
        if epoch > self.done.get(key, 0):
            self.done[key] = epoch
            seconds = result.get("time_this_iter_s")
            if isinstance(seconds, (int, float)) and seconds > 0:
                self.epoch_seconds.append(float(seconds))
        value = result.get(self.metric)
        m = METRICS.get(self.metric)
        if isinstance(value, (int, float)) and m is not None:
            better = self.best is None or (
                value > self.best[0] if m.better != "lower" else value < self.best[0]
            )
            if better:
                self.best = (float(value), key)

    def ended(self, key: str, result: Mapping[str, Any], status: str, error: str = "") -> str:
        self.running.discard(key)
        if status == "finished":
            self.finished.add(key)
            self.done[key] = self.epochs.get(key, self.done.get(key, 0))
            shown = [
                f"{m.column} {result[m.name]:{m.fmt}}"
                for m in METRICS.values()
                if m.column and isinstance(result.get(m.name), (int, float))
            ]
            return f"finished {key}  " + "  ".join(shown)
        if status == "failed":
            self.failed.add(key)
            first = error.strip().splitlines()[-1][:300] if error.strip() else "no message"
            return f"failed   {key}  {first}"
        return f"stopped  {key} at epoch {self.done.get(key, 0)}/{self.epochs.get(key, '?')}"

    # --- the progress line ----------------------------------------------------------------
    def line(self) -> str:
        total = len(self.epochs)
        parts = [
            f"{len(self.finished)}/{total} done, {len(self.running)} running, "
            f"{len(self.failed)} failed"
        ]
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best[0]:.4f} ({self.best[1]})")
        left = sum(
            max(e - self.done.get(k, 0), 0) for k, e in self.epochs.items() if k not in self.failed
        )
        eta = eta_seconds(self.epoch_seconds, left, self.concurrency)
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA after 1st epoch")
        return "[" + " | ".join(parts) + "]"

    def due(self) -> bool:
        """True at most every `every_s` seconds: time for a progress line."""
        now = self.clock()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            return True
        return False
