"""Tune callbacks on the driver: every trial event to the MLflow tracker, and one console
line per trial event with a progress line. Their classes are built on first use (so that
planning imports no Ray) and once: Tune pickles them by their import path."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rp_tune.adapters.ray.trainable import error_text_summary
from rp_tune.config import trial_epochs
from rp_tune.planning.plan import (
    trial_cost,
    trial_status,
)
from rp_tune.planning.records import (
    all_results,
)

log = logging.getLogger(__name__)
console = logging.getLogger("rp_tune.console")  # the sweep's own lines; run_sweep.py shows them


def _result_trial(
    trial: Mapping[str, Any], result: Mapping[str, Any], flats: dict[str, dict]
) -> tuple[str, dict]:
    """(run key, flat config) of the trial a Tune result is of: the Tune trial's own, or for
    a trial group the member the row names (its config from `flats`, the sweep's entries)."""
    key = str(result.get("run_key") or trial["run_key"])
    if key not in (trial.get("members") or ()):
        key = trial["run_key"]
    return key, trial_flat(key, trial, flats)


def trial_flat(key: str, trial: Mapping[str, Any], flats: dict[str, dict]) -> dict:
    """A trial's flat config: the sweep's entry; a trial group's member the searcher made
    while the sweep ran (a search's), from the group's members file (kept in `flats`);
    Tune's config held it in a sweep stored before Tune's config named run keys only (a
    group's own: its first member's)."""
    if key not in flats and trial.get("group_file") and key in (trial.get("members") or ()):
        import json

        from rp_tune.core import storage as store

        for m in json.loads(store.read_text(trial["group_file"])):
            flats.setdefault(m["run_key"], m["flat"])
    if key in flats:
        return flats[key]
    return trial["flat"]


def _trial_ends(
    trial: Any, flats: dict[str, dict]
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(run key, flat config, last result with its cost) of each trial a Tune trial trained:
    itself, or every member of its group (each from its own rows of the group's results)."""
    t = trial.config["trial"]
    local = getattr(trial, "local_path", None)
    results = all_results(local) if local and os.path.isdir(local) else []
    group = "members" in t
    out = []
    for key in t.get("members") or [t["run_key"]]:
        flat = trial_flat(key, t, flats)
        rows = [r for r in results if r.get("run_key") == key] if group else results
        last = dict(rows[-1]) if rows else ({} if group else dict(trial.last_result or {}))
        # its wall-clock, retries and device-hours: Tune's local record of the trial
        last.update(trial_cost(rows or ([last] if last else []), flat))
        out.append((key, flat, last))
    return out


def forget_statistics(trial: Any) -> None:
    """Drops Tune's per-metric statistics of an ended trial (min, max, mean and the last 5
    and 10 values of every number it reported: ~19 KB per trial in the experiment state,
    which Tune rewrites whole, finished trials included). Nothing in rp_tune reads them: the
    summary and the report read the trials' last results and their rows."""
    metadata = getattr(trial, "run_metadata", None)
    if metadata is not None and getattr(metadata, "metric_analysis", None):
        metadata.metric_analysis = {}  # its own setattr drops its cached JSON
        metadata.metric_n_steps = {}


def _make_tracking_callback() -> type:
    """TrackingCallback, built on first use so that importing this module (planning, dry
    runs, bad-input paths) does not import Ray; `__getattr__` below caches it under its own
    name, so Tune's pickle of the run config finds it by reference."""
    from ray.tune import Callback

    class TrackingCallback(Callback):
        """A Tune callback on the driver that hands every trial event to the MLflow tracker.

        Tune pickles its run config into the experiment (tuner.pkl); the tracker (a thread and a
        queue) is left out, and `run_sweep` attaches a live one again on --resume.
        """

        def __init__(self, tracker: Any, flats: dict[str, dict] | None = None) -> None:
            self.tracker = tracker
            self.flats = {} if flats is None else flats  # run key -> flat config, every trial
            self._ended: set[str] = set()  # group members ended failed by this driver

        def __getstate__(self) -> dict[str, Any]:
            return {"tracker": None, "flats": {}, "_ended": set()}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.tracker is not None:
                key, flat = _result_trial(trial.config["trial"], result, self.flats)
                self.tracker.trial_result(key, flat, dict(result))
                if result.get("member_failed") and key not in self._ended:  # a member stopped
                    self._ended.add(key)
                    self.tracker.trial_end(
                        key, flat, dict(result), "failed", str(result["member_failed"])
                    )

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.tracker is not None:
                for key, flat, last in _trial_ends(trial, self.flats):
                    if last.get("member_failed"):
                        continue  # ended when it failed
                    status = trial_status(last, trial_epochs(flat), errored=False)
                    self.tracker.trial_end(key, flat, last, status)

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.tracker is not None:
                error = ""
                if trial.error_file and os.path.isfile(trial.error_file):
                    error = Path(trial.error_file).read_text()[-2000:]
                for key, flat, last in _trial_ends(trial, self.flats):
                    if not last.get("member_failed"):
                        self.tracker.trial_end(key, flat, last, "failed", error)

    TrackingCallback.__module__ = __name__
    TrackingCallback.__qualname__ = "TrackingCallback"
    return TrackingCallback


def _make_console_callback() -> type:
    """ConsoleCallback, built on first use (see `_make_tracking_callback`)."""
    from ray.tune import Callback

    class ConsoleCallback(Callback):
        """One console line per trial event and a progress line every so often
        (`rp_tune.planning.progress.Progress`), on the logger `rp_tune.console`."""

        def __init__(self, progress: Any, flats: dict[str, dict] | None = None) -> None:
            self.progress = progress
            self.flats = {} if flats is None else flats  # run key -> flat config, every trial
            self._seen: set[str] = set()

        def __getstate__(self) -> dict[str, Any]:
            return {"progress": None, "flats": {}, "_seen": set()}

        def _keys(self, trial) -> list[str]:
            t = trial.config["trial"]
            return list(t.get("members") or [t["run_key"]])

        def on_trial_start(self, iteration, trials, trial, **info):
            for key in self._keys(trial):
                if self.progress is not None and key not in self.progress.epochs:
                    # a search's probe: the searcher made it just now
                    flat = trial_flat(key, trial.config["trial"], self.flats)
                    self.progress.epochs[key] = trial_epochs(flat)
                self._seen.discard(key)  # its first result says whether it resumed
                if self.progress is not None and key not in self.progress.failed:
                    self.progress.running.add(key)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.progress is None:
                return
            key, _ = _result_trial(trial.config["trial"], result, self.flats)
            if result.get("member_failed"):
                if key not in self.progress.failed:
                    message = str(result["member_failed"])
                    console.info(self.progress.ended(key, {}, "failed", message))
                return
            if key not in self._seen:
                self._seen.add(key)
                console.info(self.progress.started(key, int(result.get("resumed_from_epoch", 0))))
            if result.get("checkpoints_skipped"):
                console.info(
                    "         %s: passed over the checkpoint(s) that do not read back: %s",
                    key,
                    result["checkpoints_skipped"],
                )
            self.progress.result(key, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.progress is not None:
                for key, flat, last in _trial_ends(trial, self.flats):
                    if not last.get("member_failed"):
                        status = trial_status(last, trial_epochs(flat), errored=False)
                        console.info(self.progress.ended(key, last, status))
            forget_statistics(trial)  # the console's callback is in every sweep

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.progress is not None:
                error = ""
                if trial.error_file and os.path.isfile(trial.error_file):
                    error = error_text_summary(Path(trial.error_file).read_text())
                for key, _, last in _trial_ends(trial, self.flats):
                    if not last.get("member_failed"):
                        console.info(self.progress.ended(key, {}, "failed", error))
            forget_statistics(trial)

        def on_step_end(self, iteration, trials, **info):
            if self.progress is not None and self.progress.due():
                console.info(self.progress.line())

    ConsoleCallback.__module__ = __name__
    ConsoleCallback.__qualname__ = "ConsoleCallback"
    return ConsoleCallback


_LAZY = {"TrackingCallback": _make_tracking_callback, "ConsoleCallback": _make_console_callback}


def __getattr__(name: str) -> Any:
    """The lazily built callback classes, built once: the driver's explicit calls and
    unpickling (attribute access) must see the same class, or a restored sweep's unpickled
    callbacks would not be recognized (and replaced) as such."""
    if name in _LAZY:
        if name not in globals():
            globals()[name] = _LAZY[name]()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def callback_class(name: str) -> type:
    """TrackingCallback or ConsoleCallback: the one class of that name (built on first use)."""
    return __getattr__(name)
