"""Sweeps on Ray: the only module that imports ray.

Ray 2.60 runs Train V2, so a Tune function trainable builds and fits one `TorchTrainer` per
trial (DDP over `resources.workers` workers, or a fraction of a GPU for one worker); the
workers run `rp_tune.trial.train.run_trial` and report every epoch with `ray.train.report`, and
`TuneReportCallback` carries those reports to Tune. The Train run is named after the trial's
run key and stored beside the Tune experiment, so a trial that Tune restarts (after a driver
crash and `--resume`) finds its own checkpoints. Worker crashes are retried by Train
(`FailureConfig(max_failures)`) from the last checkpoint; trial crashes by Tune.

Every config is expanded and validated before Ray starts (`rp_tune.planning.plan`, which imports no
Ray), so a bad value stops the sweep with one message and nothing started or written. A
trial's identity is the run key stored when the sweep started, handed to its workers: a
newer release that added config fields resumes the trial from its own checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rp_tune.config import ConfigError, TrialConfig, from_flat, run_key, trial_epochs
from rp_tune.core import storage as store
from rp_tune.core.errors import SweepError
from rp_tune.core.layout import GROUP_PREFIX
from rp_tune.core.provenance import CODE_DIFF_FILE, code_state
from rp_tune.planning.capacity import (
    default_concurrency,
    local_gpu_capacity,
    max_cluster_resources,
    read_autoscaling_config,
    resolve_gpus,
    startup_concurrency,
)
from rp_tune.planning.plan import (
    SweepSummary,
    TrialOutcome,
    check_not_held,
    check_resume,
    driver_lock,
    plan_trials,
    stored_outcome,
    trial_cost,
    trial_status,
)
from rp_tune.planning.progress import Progress
from rp_tune.planning.records import (
    TRIALS_FILE,
    all_results,
    copy_reused_trials,
    stored_trials,
    write_member_records,
    write_summary,
    write_trial_entries,
)
from rp_tune.planning.space import space_params
from rp_tune.trial.groups import describe_units, is_unit, plan_units
from rp_tune.trial.metrics import ITERATION, metric

log = logging.getLogger(__name__)
console = logging.getLogger("rp_tune.console")  # the sweep's own lines; run_sweep.py shows them


# --------------------------------------------------------------------------------------------
# Expansion and validation (no Ray)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Ray: the trainable, the worker loop, the sweep
# --------------------------------------------------------------------------------------------

FAULT_MARKER = "injected-fault-{key}"
GROUPS_DIR = "_groups"  # <train storage>/_groups/<group run key>.json: its members' entries
# <train storage>/_recurring_errors/<run_key>: why a trial failed in a way a retry repeats
RECURRING_ERRORS = "_recurring_errors"
RECURRING_TAG = "[rp_tune: recurs on retry]"


class RecurringTrialError(RuntimeError):
    """A trial failed in a way every retry repeats (its data is missing or corrupt where it
    ran, its config cannot train): not a crash, so never retried."""


def _message_after(text: str, marker: str) -> str | None:
    """The message that follows `marker` in an error's text: its first line and its indented
    continuation lines (a DataError's layout and fixes), without Ray's traceback after them;
    None if the marker is not there."""
    if marker not in text:
        return None
    lines = text[text.rindex(marker) + len(marker) :].strip().splitlines()
    return "\n".join(lines[:1] + [ln for ln in lines[1:3] if ln.startswith("  ")])


def _recurring_error_message(error: BaseException) -> str | None:
    """The message of a recurring error (DataError, ConfigError) carried by a worker's
    exception (wrapped by Ray), or None."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        message = _message_after(str(e), RECURRING_TAG)
        if message is not None:
            return message
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
        stack += list(getattr(e, "worker_failures", {}).values())
        stack += [getattr(e, "controller_failure", None)]
    return None


def error_summary(error: BaseException, limit: int = 1000) -> str:
    """What a failed trial's error says, without Ray's wrapper lines: a data error's whole
    message, else the last `SomethingError: ...` line of the text, else its first line."""
    seen: set[int] = set()
    e: Any = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e) is RecurringTrialError:  # not Ray's RayTaskError(RecurringTrialError) wrapper
            return str(e)[:limit]
        e = getattr(e, "cause", None) or e.__cause__
    return error_text_summary(str(error), limit) or repr(error)[:limit]


def error_text_summary(text: str, limit: int = 1000) -> str:
    """The same for an error's text (Tune's error file of a trial): our tagged message, else
    the last `SomethingError: ...` line, else the first line; "" for no text."""
    for marker in ("RecurringTrialError: ", RECURRING_TAG):
        message = _message_after(text, marker)
        if message is not None:
            return message[:limit]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*: ", ln)]
    return (raised[-1] if raised else lines[0] if lines else "")[:limit]


def _stop_on_recurring_error():
    """A Train callback on the controller: a worker's recurring error ends the run at once.

    Ray Train retries every worker error up to FailureConfig.max_failures; an error raised
    by a callback is a controller error, which it does not retry. A corrupt dataset on a node,
    or a config that cannot train, would fail the same way on every attempt, so retrying only
    wastes the worker starts.
    """
    from ray.train import UserCallback

    class StopOnRecurringError(UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            for error in worker_exceptions.values():
                message = _recurring_error_message(error)
                if message is not None:
                    raise RecurringTrialError(f"{RECURRING_TAG} {message}")

    return StopOnRecurringError()


def _train_loop(
    loop_config: dict[str, Any], before_report: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """Runs in every Ray Train worker: one trial, resuming from Train's latest checkpoint.

    before_report(metrics): called on every rank before each epoch's report (tests inject
    faults there: `_train_loop_with_fault`)."""
    import ray.train
    import ray.train.torch

    from rp_tune.data import DataError
    from rp_tune.trial.train import run_trial

    cfg = from_flat(loop_config["flat"])
    key = loop_config.get("run_key") or run_key(cfg)  # as stored when the sweep started
    world = ray.train.get_context().get_world_size()
    checkpoint = _latest_train_checkpoint(loop_config)
    device = ray.train.torch.get_device()
    system = _system_metrics(loop_config, device)
    with tempfile.TemporaryDirectory(prefix="rp_tune-") as tmp:
        resume, resumed_from, skipped = None, 0, []
        if checkpoint is not None:
            resume, resumed_from, skipped = _readable_checkpoint(checkpoint, Path(tmp))

        def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
            if before_report is not None:
                before_report(metrics)
            report = _report_row(metrics)
            report["resumed_from_epoch"] = resumed_from
            if skipped:  # once, with the first report: the console says what was passed over
                report["checkpoints_skipped"] = "; ".join(skipped)
                skipped.clear()
            report["run_key"] = key
            if system is not None:
                report.update(system.epoch())
            ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
            ray.train.report(report, checkpoint=ckpt)

        wrap = None
        if world > 1:

            def wrap(m):
                return ray.train.torch.prepare_model(m, move_to_device=False)

        try:
            run_trial(
                cfg,
                Path(tmp) / "run",
                key=key,
                save_weights=bool(loop_config.get("save_weights")),
                resume=resume,
                on_epoch=on_epoch,
                device=device,
                wrap_model=wrap,
            )
        except (DataError, ConfigError) as e:  # tagged: the controller tells it from a crash
            raise type(e)(f"{RECURRING_TAG} {e}") from None
        finally:
            if system is not None:
                system.stop()


def _system_metrics(loop_config: Mapping[str, Any], device: Any) -> Any:
    """The rank-0 worker's system-metrics sampler (`tracking.SystemMetrics`), started, where
    the sweep's --system-metrics asks for one on this device; else None."""
    import ray.train

    from rp_tune.adapters.mlflow.tracking import SystemMetrics, system_metrics_on

    setting = loop_config.get("system_metrics") or "auto"
    if ray.train.get_context().get_world_rank() != 0:
        return None
    if not system_metrics_on(setting, getattr(device, "type", str(device))):
        return None
    return SystemMetrics().start()


def _train_loop_with_fault(loop_config: dict[str, Any]) -> None:
    """The worker loop of a sweep run with --inject-fault EPOCH (fault-tolerance tests): the
    rank-0 worker of each trial SIGKILLs itself once, at that epoch, before reporting it."""
    import ray.train

    fault = loop_config["fault"]
    key = loop_config["run_key"]
    rank = ray.train.get_context().get_world_rank()

    def kill_once(metrics: dict[str, Any]) -> None:
        marker = store.join(fault["dir"], FAULT_MARKER.format(key=key))
        if metrics["epoch"] != fault["epoch"] or rank != 0 or store.exists(marker):
            return
        store.write_text(marker, str(os.getpid()))
        # Crash mid-epoch, as a real fault would: Train collects reports on its health-check
        # poll (2 s), so give it time to register the last one.
        time.sleep(fault.get("delay_s", 6.0))
        log.warning(
            "injected fault: SIGKILL to training worker %d at epoch %d", os.getpid(), fault["epoch"]
        )
        os.kill(os.getpid(), signal.SIGKILL)

    loop = _group_loop if loop_config.get("group_file") else _train_loop
    loop(loop_config, before_report=kill_once)


def _report_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What of a trial's epoch row goes to Tune: numbers and strings; a per-event series
    (`rp_tune.trial.metrics.step_series`: GraNet's density after each update) as JSON text."""
    out = {}
    for k, v in metrics.items():
        m = metric(k)
        if isinstance(v, (list, tuple)) and m is not None and m.step == ITERATION:
            out[k] = json.dumps(v)
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out[k] = v
    return out


def _group_loop(
    loop_config: dict[str, Any], before_report: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """Runs in the one Ray Train worker of a trial group (`rp_tune.trial.fused`): its members
    trained as one fused model, resuming from the group's latest checkpoint.

    Once per epoch it reports to Train one row per member (`members`) with one checkpoint
    holding every member's checkpoint folder (`members/<run key>/`) and the members stopped
    so far (`failed.json`); `_group_report_callback` hands Tune each member's row on its own.
    A member stopped before (it diverged) stays stopped when the group resumes."""
    import shutil

    import ray.train
    import ray.train.torch

    from rp_tune.core.layout import FAILED_MEMBERS_FILE, MEMBERS_DIR
    from rp_tune.data import DataError
    from rp_tune.trial.fused import read_group_checkpoint, run_group

    unit = loop_config["run_key"]
    # the members' entries, written by the driver beside the Train runs: Tune copies its
    # config into every result row, and a group's K entries in it would grow K rows per epoch
    members = json.loads(store.read_text(loop_config["group_file"]))
    checkpoint = _latest_train_checkpoint(loop_config)
    device = ray.train.torch.get_device()
    system = _system_metrics(loop_config, device)
    with tempfile.TemporaryDirectory(prefix="rp_tune-group-") as tmp:
        resume, resumed_from, skipped = None, 0, []
        if checkpoint is not None:
            resume, resumed_from, skipped = _readable_checkpoint(
                checkpoint, Path(tmp), reader=lambda f: read_group_checkpoint(f)[0]
            )
        failed: dict[str, str] = read_group_checkpoint(resume)[1] if resume else {}
        alive = [m for m in members if m["run_key"] not in failed]
        if not alive:
            return
        keys = [m["run_key"] for m in alive]
        rows: list[tuple[int, dict[str, Any], Path | None]] = []
        stopped: list[tuple[int, str]] = []
        sent: list[Path] = []

        def on_group_epoch(epoch: int) -> None:
            folder = Path(tmp) / f"report-{epoch:04d}"
            shutil.rmtree(folder, ignore_errors=True)
            saved = [(i, f) for i, _, f in rows if f is not None]
            for i, f in saved:  # hard links: the member folders are not copied
                shutil.copytree(f, folder / MEMBERS_DIR / keys[i], copy_function=os.link)
            failed.update({keys[i]: message for i, message in stopped})
            common = {"resumed_from_epoch": resumed_from, "group": unit, "group_size": len(members)}
            if system is not None:  # the group's one worker: the same machine for every member
                common.update(system.epoch())
            out = [{**_report_row(row), **common, "run_key": keys[i]} for i, row, _ in rows]
            out += [
                {"run_key": keys[i], "epoch": epoch, "member_failed": message, **common}
                for i, message in stopped
            ]
            if skipped and out:
                out[0]["checkpoints_skipped"] = "; ".join(skipped)
                skipped.clear()
            report: dict[str, Any] = {"epoch": epoch, "run_key": unit, "members": out}
            if before_report is not None:
                before_report(report)
            ckpt = None
            if saved and len(saved) == len(rows):  # every member saved this epoch
                folder.mkdir(parents=True, exist_ok=True)
                (folder / FAILED_MEMBERS_FILE).write_text(json.dumps(failed))
                ckpt = ray.train.Checkpoint.from_directory(str(folder))
            ray.train.report(report, checkpoint=ckpt)
            rows.clear()
            stopped.clear()
            for old in sent:  # uploaded by the report before this one
                shutil.rmtree(old, ignore_errors=True)
            sent[:] = [folder]

        try:
            run_group(
                [from_flat(m["flat"]) for m in alive],
                [Path(tmp) / "run" / k for k in keys],
                keys=keys,
                resume=None if resume is None else [resume / MEMBERS_DIR / k for k in keys],
                on_epoch=lambda i, row, f: rows.append((i, row, f)),
                on_failure=lambda i, message: stopped.append((i, message)),
                on_group_epoch=on_group_epoch,
                device=device,
                save_weights=bool(loop_config.get("save_weights")),
            )
        except (DataError, ConfigError) as e:  # tagged: the controller tells it from a crash
            raise type(e)(f"{RECURRING_TAG} {e}") from None
        finally:
            if system is not None:
                system.stop()


def _group_report_callback() -> Any:
    """Tune's `TuneReportCallback` for a trial group: each of a group report's member rows
    reaches Tune as a result of its own, with the member's checkpoint folder inside the
    group's checkpoint as its `checkpoint_path`."""
    import posixpath

    from ray.tune.integration.ray_train import TuneReportCallback

    from rp_tune.core.layout import MEMBERS_DIR

    class GroupReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            for row in metrics[0].get("members", []):
                row = dict(row)
                if checkpoint is not None and not row.get("member_failed"):
                    row["checkpoint_path"] = posixpath.join(
                        checkpoint.path, MEMBERS_DIR, row["run_key"]
                    )
                super().after_report(run_context, [row], None)

    return GroupReportCallback()


def _checkpoint_folders(fs: Any, parent: str) -> list[str]:
    """The `checkpoint_<date>` folders of a Train run folder, oldest first ([] if none)."""
    import posixpath

    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    return sorted(
        (
            i.path.rstrip("/")
            for i in infos
            if i.type == pafs.FileType.Directory
            and posixpath.basename(i.path.rstrip("/")).startswith("checkpoint_")
        ),
        key=posixpath.basename,
    )


def _latest_train_checkpoint(loop_config: Mapping[str, Any]) -> Any:
    """The checkpoint Train hands this run, or else the newest one its workers wrote without
    registering it (`_unregistered_checkpoint`); None for a first start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("run_dir"):
        checkpoint = _unregistered_checkpoint(loop_config["run_dir"])
    return checkpoint


def _unregistered_checkpoint(run_dir: str) -> Any:
    """The newest checkpoint folder of a Train run that registered none (its workers wrote
    one after their driver died), as a Checkpoint; None if there is none."""
    import pyarrow.fs as pafs
    import ray.train

    try:
        fs, path = (
            pafs.FileSystem.from_uri(run_dir)
            if store.is_uri(run_dir)
            else (pafs.LocalFileSystem(), run_dir)
        )
        found = _checkpoint_folders(fs, path)
    except OSError:
        return None
    return ray.train.Checkpoint(found[-1], filesystem=fs) if found else None


def _readable_checkpoint(
    checkpoint: Any, tmp: Path, reader: Callable[[Path], int] | None = None
) -> tuple[Path | None, int, list[str]]:
    """(local folder, epoch, the newer ones passed over) of the newest of the trial's
    checkpoints that reads back.

    Candidates are every checkpoint folder of the Train run, newest first: the one Train
    hands over, and beside it any older one, or a newer one a worker finished writing after
    its driver stopped (Train never registered it, but it is whole: `read_checkpoint`
    checks it). A damaged one (a truncated state.pt, a bad masks file) is reported by path
    and passed over. None reads: the trial starts again from the beginning.
    reader(folder) -> epoch: checks a local checkpoint folder (default: a trial's, by
    `read_checkpoint`; a trial group's: `rp_tune.trial.fused.read_group_checkpoint`).
    """
    import posixpath

    import ray.train

    from rp_tune.trial.train import CheckpointError, read_checkpoint

    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    try:
        found = set(_checkpoint_folders(fs, posixpath.dirname(path)))
    except OSError:
        found = set()
    candidates = sorted(found | {path}, key=posixpath.basename, reverse=True)
    skipped: list[str] = []
    for i, candidate in enumerate(candidates):
        ckpt = checkpoint if candidate == path else ray.train.Checkpoint(candidate, filesystem=fs)
        try:
            local = Path(ckpt.to_directory(str(tmp / f"restored-{i}")))
            epoch = reader(local) if reader is not None else int(read_checkpoint(local)["epoch"])
        except (CheckpointError, OSError) as e:
            log.warning("checkpoint %s cannot be read (%s); trying the one before it", candidate, e)
            skipped.append(f"{candidate} ({str(e).splitlines()[0][:200]})")
            continue
        if candidate != path:
            log.warning("resuming from checkpoint %s (Train handed over %s)", candidate, path)
        return local, epoch, skipped
    log.warning("no checkpoint of this trial reads back: starting it from the beginning")
    return None, 0, skipped


def _tune_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: builds and fits the trial's TorchTrainer (Train V2)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = config["trial"]
    marker = store.join(config["train_storage"], RECURRING_ERRORS, trial["run_key"])
    if store.exists(marker):  # Tune's retry of a trial that cannot succeed: fail at once
        raise RecurringTrialError(store.read_text(marker))
    cfg = from_flat(trial["flat"])
    r = cfg.resources
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker > 0:
        per_worker["GPU"] = r.gpus_per_worker
    group = trial.get("group_file")  # a trial group: one worker trains every member
    loop = _group_loop if group else _train_loop
    report = _group_report_callback() if group else TuneReportCallback()
    trainer = TorchTrainer(
        _train_loop_with_fault if config.get("fault") else loop,
        train_loop_config={
            "flat": trial["flat"],
            "run_key": trial["run_key"],
            "group_file": group,
            "save_weights": config.get("save_weights", False),
            "system_metrics": config.get("system_metrics", "auto"),
            "fault": config.get("fault"),
            "run_dir": store.join(config["train_storage"], f"train-{trial['run_key']}"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers, use_gpu=r.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial['run_key']}",
            storage_path=config["train_storage"],
            failure_config=ray.train.FailureConfig(max_failures=config["train_max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[report, _stop_on_recurring_error()],
        ),
    )
    try:
        trainer.fit()
    except Exception as e:
        message = _recurring_error_message(e)
        if message is None:
            raise
        store.write_text(marker, message)
        raise RecurringTrialError(message) from None


def _result_trial(
    trial: Mapping[str, Any], result: Mapping[str, Any], flats: Mapping[str, dict]
) -> tuple[str, dict]:
    """(run key, flat config) of the trial a Tune result is of: the Tune trial's own, or for
    a trial group the member the row names (its config from `flats`, the sweep's entries)."""
    key = str(result.get("run_key") or trial["run_key"])
    if key in (trial.get("members") or ()):
        return key, flats.get(key, trial["flat"])
    return trial["run_key"], trial["flat"]


def _trial_ends(
    trial: Any, flats: Mapping[str, dict]
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(run key, flat config, last result with its cost) of each trial a Tune trial trained:
    itself, or every member of its group (each from its own rows of the group's results)."""
    t = trial.config["trial"]
    local = getattr(trial, "local_path", None)
    results = all_results(local) if local and os.path.isdir(local) else []
    group = "members" in t
    out = []
    for key in t.get("members") or [t["run_key"]]:
        flat = flats.get(key, t["flat"]) if group else t["flat"]
        rows = [r for r in results if r.get("run_key") == key] if group else results
        last = dict(rows[-1]) if rows else ({} if group else dict(trial.last_result or {}))
        # its wall-clock, retries and device-hours: Tune's local record of the trial
        last.update(trial_cost(rows or ([last] if last else []), flat))
        out.append((key, flat, last))
    return out


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

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.progress is not None:
                error = ""
                if trial.error_file and os.path.isfile(trial.error_file):
                    error = error_text_summary(Path(trial.error_file).read_text())
                for key, _, last in _trial_ends(trial, self.flats):
                    if not last.get("member_failed"):
                        console.info(self.progress.ended(key, {}, "failed", error))

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


@dataclass
class _Driver:
    """One driver's state while it runs a sweep: the options it was given, where the sweep
    lives, and what its steps make (the lock, the tracker, the trials' configs by run key)."""

    configs: Sequence[TrialConfig]
    name: str
    storage: str
    space: str
    tracking_uri: str | None
    tracking: bool
    experiment: str | None
    log_weights: bool
    resume: bool
    address: str | None
    max_concurrent: int | None
    train_max_failures: int
    tune_max_failures: int
    num_cpus: int | None
    inject_fault_epoch: int | None
    verbose: bool
    extend: bool
    reuse: bool
    group_size: int
    system_metrics: str
    root: str = ""
    path: str = ""
    train_storage: str = ""
    uri: str | None = None
    lock: Any = None
    tracker: Any = None
    flats: dict[str, dict] = field(default_factory=dict)  # run key -> flat config, all trials
    known: dict[str, int] = field(default_factory=dict)  # run key -> its epochs
    callbacks: list[Any] = field(default_factory=list)
    need_ray: bool = True
    ahead: Any = None  # the trial plan made before Ray, for the devices of this machine
    local: dict[str, float] = field(default_factory=dict)
    resolved: Sequence[TrialConfig] = ()


def run_sweep(
    configs: Sequence[TrialConfig],
    *,
    name: str,
    storage: str,
    space: str = "",
    tracking_uri: str | None = None,
    tracking: bool = True,
    experiment: str | None = None,
    log_weights: bool = False,
    resume: bool = False,
    address: str | None = None,
    max_concurrent: int | None = None,
    train_max_failures: int = 3,
    tune_max_failures: int = 2,
    num_cpus: int | None = None,
    inject_fault_epoch: int | None = None,
    verbose: bool = False,
    extend: bool = False,
    reuse: bool = True,
    group_size: int = 1,
    system_metrics: str = "auto",
) -> SweepSummary:
    """Run (or, with resume=True, continue) a sweep; returns the per-trial outcome.

    system_metrics: `auto` (the default: on for trials that train on a GPU), `on` or `off`:
    the training workers' CPU, memory, disk, network and GPU metrics per epoch
    (`tracking.SystemMetrics`) in each trial's MLflow run; a --resume keeps the sweep's.

    group_size: train up to this many trials that differ only in sparsity and seeds as one
    fused trial group each (`rp_tune.trial.fused`); each stays its own trial in every record.

    extend: add `configs` to a finished sweep and train only those it does not hold.
    reuse: a trial whose config finished in another sweep under the same results root is
    taken from there, not trained again (`plan.plan_trials`).

    verbose: Ray's, Tune's and the training workers' own output on the console too; without
    it they go to Ray's session logs, and this module's log to `<sweep>/driver.log`."""
    d = _Driver(**locals())  # the options as given; the steps fill in the rest
    _refuse_a_bad_state(d)
    _plan_before_ray(d)
    started, code = time.time(), code_state()
    _take_the_lock(d)
    handler = _log_to_the_sweep(d)
    try:
        _start_or_join_ray(d)
        _start_tracking(d)
        tuner = _restore_tuner(d) if d.resume else _new_tuner(d)
        grid = tuner.fit() if tuner is not None else []
        outcomes = _collect_outcomes(d, grid)
        return _finish(d, outcomes, time.time() - started, code)
    finally:
        if d.tracker is not None:  # fit() or the summary raised (a second Ctrl-C, a crash)
            d.tracker.sweep_end({"interrupted": 1})
            d.tracker.close()  # what cannot be delivered goes to the pending file
        if handler is not None:
            for name_ in _LOGGED:
                logging.getLogger(name_).removeHandler(handler)
            handler.close()
        d.lock.release()


def _refuse_a_bad_state(d: _Driver) -> None:
    """SweepError, before anything is written: a bad option, a sweep another driver holds,
    storage that cannot be read, --resume without a sweep or --extend of an unfinished one,
    a new sweep where one exists, configs that are not the stored sweep's, a bad MLflow URI."""
    from ray import tune

    if d.system_metrics not in ("auto", "on", "off"):
        raise SweepError(f"--system-metrics {d.system_metrics!r} is invalid; valid: auto, on, off")
    d.root = store.resolve(d.storage)
    d.path = store.join(d.root, d.name)
    d.train_storage = store.join(d.root, f"{d.name}-train")
    d.lock = driver_lock(d.root, d.name)
    check_not_held(d.root, d.name)  # first: a sweep another driver starts may not restore
    try:
        can_restore = tune.Tuner.can_restore(d.path)
    except Exception as e:  # unreachable bucket, missing credentials, unknown scheme
        raise SweepError(f"--storage {d.storage!r} cannot be read: {e}") from None
    if d.resume and not can_restore:
        raise SweepError(f"--resume: no sweep to resume at {d.path}")
    # a sweep whose every trial was reused has its trials.json and no Tune experiment
    exists = can_restore or store.exists(store.join(d.path, TRIALS_FILE))
    if d.extend and not exists:
        raise SweepError(f"--extend: no sweep at {d.path} to extend; start it without --extend")
    if not d.resume and not d.extend and exists:
        raise SweepError(
            f"a sweep already exists at {d.path}: pass --resume to continue it, --extend to add "
            "trials to it, or --name to start another"
        )
    if d.extend:
        left = [t for t in stored_trials(d.path) if stored_outcome(d.path, t).status != "finished"]
        if left:
            raise SweepError(
                f"--extend: {len(left)} trials of the sweep at {d.path} are not finished "
                f"(e.g. {left[0]['run_key']}); --resume it first"
            )
    if d.resume:
        check_resume(d.path, d.configs)
    if d.tracking:
        from rp_tune.adapters.mlflow.tracking import default_tracking_uri

        try:
            d.uri = d.tracking_uri or default_tracking_uri(d.path)
        except ValueError as e:
            raise SweepError(str(e)) from None


def _plan_before_ray(d: _Driver) -> None:
    """Where every trial finished already (reused, or kept by --extend), a local sweep has
    nothing to train: it records the trials and ends without starting Ray."""
    if not d.resume and not (d.address or os.environ.get("RAY_ADDRESS")):
        d.local = {"CPU": float(d.num_cpus or os.cpu_count() or 1), **local_gpu_capacity()}
        d.resolved, _ = resolve_gpus(d.configs, d.local, "this machine")
        held = stored_trials(d.path) if d.extend else ()
        d.ahead = plan_trials(d.resolved, d.root, d.name, held, d.reuse)
        d.need_ray = bool(d.ahead.train)


def _take_the_lock(d: _Driver) -> None:
    try:
        d.lock.acquire()
    except store.LockHeld as e:
        raise SweepError(str(e)) from None
    except OSError as e:  # a read-only or unreachable store
        raise SweepError(f"--storage {d.storage!r}: cannot write the sweep's lock: {e}") from None


def _log_to_the_sweep(d: _Driver) -> logging.Handler | None:
    """This driver's own log, `<sweep>/driver.log`, beside the sweep's results (local)."""
    if store.is_uri(d.path):
        return None
    Path(d.path).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(str(Path(d.path, "driver.log")))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name_ in _LOGGED:
        logging.getLogger(name_).addHandler(handler)
    return handler


def _start_or_join_ray(d: _Driver) -> None:
    """Stop what a crashed driver's Ray left here, then a Ray of our own (local), the
    cluster at --address / RAY_ADDRESS, or none when nothing is left to train."""
    import ray

    dead = d.lock.previous or {}
    if dead.get("ray_session") and dead.get("host") == d.lock.host:
        stopped = stop_ray_session(dead["ray_session"])
        if stopped:
            log.info(
                "stopped %d processes left by the crashed driver's Ray (%s)",
                stopped,
                dead["ray_session"],
            )
    if d.resume:  # the data may have been fixed since: trials that failed on it try again
        for key in store.list_names(store.join(d.train_storage, RECURRING_ERRORS)):
            store.delete(store.join(d.train_storage, RECURRING_ERRORS, key))
    # `ray job submit` sets RAY_ADDRESS for its driver: join that cluster as with --address.
    d.address = d.address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if d.verbose else logging.ERROR
    if not d.need_ray:
        console.info("every trial of the sweep finished before: nothing to train, no Ray")
    elif d.address is None and not ray.is_initialized():
        # address="local": a new Ray of our own, never the cluster that
        # /tmp/ray/ray_current_cluster happens to name (another sweep's, a test run's)
        startups = _expected_startups(d.configs, d.num_cpus, d.max_concurrent)
        ray.init(
            address="local",
            _system_config=startups,
            num_cpus=d.num_cpus,
            include_dashboard=True,
            log_to_driver=d.verbose,
            logging_level=level,
        )
        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None:  # so that a successor can stop it if this driver is killed
            d.lock.update(ray_session=node.get_session_dir_path())
    elif not ray.is_initialized():
        ray.init(address=d.address, log_to_driver=d.verbose, logging_level=level)
    stop_on_sigterm()  # after ray.init, which sets its own SIGTERM handler
    if d.need_ray:
        console.info(
            "logs: Ray's and the training workers' in %s; this driver's in %s%s",
            _ray_logs_dir(),
            str(Path(d.path, "driver.log")) if not store.is_uri(d.path) else "the console",
            "" if d.verbose else " (-v shows them here)",
        )
    if not d.verbose:  # Tune's own reporter: its new one prints a box at any verbosity,
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic one none at 0


def _start_tracking(d: _Driver) -> None:
    """The sweep's MLflow tracker and the Tune callback that feeds it."""
    if d.uri is None:
        return
    from rp_tune.adapters.mlflow.tracking import SweepTracker

    embedded = d.uri.startswith("sqlite:")
    exp_name = d.experiment or d.space or d.name
    location = None
    if embedded and not store.is_uri(d.path):
        location = Path(d.root, "mlartifacts", exp_name).resolve().as_uri()
    d.tracker = SweepTracker(
        d.uri,
        exp_name,
        sweep_path=d.path,
        space=d.space or d.name,
        sweep_dir=d.path,
        artifact_location=location,
        space_params=space_params(d.configs),
        configs=d.configs,
    )
    d.callbacks.append(__getattr__("TrackingCallback")(d.tracker, d.flats))
    console.info("MLflow tracking at %s (experiment %r)", d.uri, d.tracker.experiment)


def _trainable(d: _Driver) -> Any:
    import ray
    from ray import tune

    if not d.need_ray:
        return None
    return tune.with_resources(_tune_trial, trial_driver_resources(ray.nodes()))


def _restore_tuner(d: _Driver) -> Any:
    """The interrupted sweep's Tuner, its unpickled callbacks (which lost their tracker and
    console) replaced by live ones; the trials as stored when it started."""
    from ray import tune

    for flag, given in (
        ("--log-weights", d.log_weights),
        ("--system-metrics", d.system_metrics != "auto"),
    ):
        if given:
            log.warning(
                "%s is set when a sweep starts and kept by --resume: this sweep keeps "
                "the setting it started with",
                flag,
            )
    tuner = tune.Tuner.restore(
        d.path, trainable=_trainable(d), resume_unfinished=True, resume_errored=True
    )
    run_config = tuner._local_tuner.get_run_config()
    entries = stored_trials(d.path)  # read once: trial epochs and configs
    d.known = {e["run_key"]: trial_epochs(e["flat"]) for e in entries}
    stored = [from_flat(e["flat"]) for e in entries]
    capacity = cluster_capacity(d.address is not None)
    concurrent = d.max_concurrent or default_concurrency(stored or d.configs, capacity)
    d.flats.update({e["run_key"]: e["flat"] for e in entries})
    d.callbacks.append(__getattr__("ConsoleCallback")(Progress(d.known, concurrent), d.flats))
    lazy = (__getattr__("TrackingCallback"), __getattr__("ConsoleCallback"))
    run_config.callbacks = [
        c for c in run_config.callbacks or [] if not isinstance(c, lazy)
    ] + d.callbacks
    run_config.verbose = 1 if d.verbose else 0
    console.info(
        "sweep %s: resuming %d trials, at most %d at a time, results in %s",
        d.name,
        len(d.known),
        concurrent,
        d.path,
    )
    return tuner


def _new_tuner(d: _Driver) -> Any:
    """A new sweep: the devices Ray has, the trials to train (others reused or kept), the
    trial groups, then a Tuner over them; None when every trial finished before."""
    from ray import tune

    if d.need_ray:
        capacity = cluster_capacity(d.address is not None)
        configs, gpu_choice = resolve_gpus(d.configs, capacity, "the Ray cluster")
        console.info("%s", gpu_choice)
        if d.ahead is not None and [c.to_flat() for c in configs] == [
            c.to_flat() for c in d.resolved
        ]:  # the local Ray chose the devices the plan assumed: no second scan
            trials = d.ahead
        else:
            held = stored_trials(d.path) if d.extend else ()
            trials = plan_trials(configs, d.root, d.name, held, reuse=d.reuse)
    else:
        capacity, configs, trials = d.local, d.resolved, d.ahead
    _record_the_plan(d, trials)
    entries = _units(d, trials)
    d.known = {e["run_key"]: trial_epochs(e["flat"]) for e in trials.entries}
    concurrent = d.max_concurrent or default_concurrency(configs, capacity)
    progress = Progress(d.known, concurrent)
    progress.finished_before(e["run_key"] for e in trials.kept + trials.reused)
    d.callbacks.append(__getattr__("ConsoleCallback")(progress, d.flats))
    if not entries:  # every trial finished before: nothing for Tune
        return None
    fault = None
    if d.inject_fault_epoch:
        fault = {"epoch": d.inject_fault_epoch, "dir": store.join(d.train_storage, "_faults")}
    param_space = {
        "trial": tune.grid_search(entries),
        "train_storage": d.train_storage,
        "train_max_failures": d.train_max_failures,
        "save_weights": d.log_weights,
        # measured for MLflow: nothing to measure for without tracking
        "system_metrics": d.system_metrics if d.uri is not None else "off",
        "fault": fault,
    }
    tuner = tune.Tuner(
        _trainable(d),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,
            trial_name_creator=lambda t: t.config["trial"]["run_key"],
            trial_dirname_creator=lambda t: t.config["trial"]["run_key"],
        ),
        run_config=tune.RunConfig(
            name=d.name,
            storage_path=d.root,
            failure_config=tune.FailureConfig(max_failures=d.tune_max_failures),
            callbacks=d.callbacks,
            verbose=1 if d.verbose else 0,
        ),
    )
    console.info(
        "sweep %s: %d trials, %d to train, at most %d at a time, results in %s",
        d.name,
        len(trials.entries),
        len(trials.train),
        concurrent,
        d.path,
    )
    return tuner


def _record_the_plan(d: _Driver, trials: Any) -> None:
    """The reused trials' records into this sweep, and trials.json: every trial's entry."""
    if trials.reused:  # their records join this sweep; their checkpoints stay
        copy_reused_trials(d.root, d.name, trials.reused)
        by = Counter(e["reused_from"] for e in trials.reused)
        console.info(
            "reused %d trials that finished in other sweeps under %s, not trained again: %s",
            len(trials.reused),
            d.root,
            ", ".join(f"{n} from {s}" for s, n in sorted(by.items())),
        )
        for e in trials.reused:
            log.info("reused %s from %s", e["run_key"], e["reused_from"])
    if d.extend:
        console.info(
            "sweep %s extended: %d new trials, %d finished before and kept",
            d.name,
            len(trials.entries) - len(trials.kept),
            len(trials.kept),
        )
    write_trial_entries(d.path, trials.entries)
    d.flats.update({e["run_key"]: e["flat"] for e in trials.entries})


def _units(d: _Driver, trials: Any) -> list[dict[str, Any]]:
    """What Tune trains: trials alone, and trial groups whose members' configs go to the
    group's worker through a file (in Tune's config they would repeat in every result row)."""
    entries, why_alone = plan_units(trials.train, d.group_size)
    if d.group_size > 1:
        console.info("%s", describe_units(entries, why_alone, d.group_size))
    for i, unit in enumerate(entries):
        if is_unit(unit):  # members' own folders, for status and report
            write_member_records(d.path, unit)
            group_file = store.join(d.train_storage, GROUPS_DIR, f"{unit['run_key']}.json")
            store.write_text(group_file, json.dumps(unit["members"], default=list))
            entries[i] = {
                "run_key": unit["run_key"],
                "flat": unit["flat"],
                "members": [m["run_key"] for m in unit["members"]],
                "group_file": group_file,
            }
    return entries


def _collect_outcomes(d: _Driver, grid: Any) -> list[TrialOutcome]:
    """Every trial's outcome: from Tune's results (a group's members from their own rows),
    then the stored trials Tune did not hold (finished before, reused, not started)."""
    outcomes = []
    for i, result in enumerate(grid):
        trial = (result.config or {}).get("trial")
        error = "" if result.error is None else error_summary(result.error)
        if trial is not None and is_unit(trial):  # a group: each member from its rows
            for member in trial["members"]:
                out = stored_outcome(d.path, {"run_key": member, "flat": d.flats[member]})
                if error and out.status != "finished" and not out.error:
                    out.status, out.error = "failed", error
                outcomes.append(out)
        elif trial is None:  # stopped before it started (Ctrl-C): Tune kept no config
            key = store.basename(result.path) if result.path else f"trial-{i}"
            if not key.startswith(GROUP_PREFIX):  # a group's members: pending, from trials.json
                status = "failed" if error else "pending"
                outcomes.append(TrialOutcome(key, status, 0, d.known.get(key, 0), 0, error=error))
        else:
            outcomes.append(_outcome(trial, result, error))
    seen = {t.run_key for t in outcomes}
    for e in stored_trials(d.path):  # finished before, reused, or not started by Tune yet
        if e["run_key"] not in seen:
            outcomes.append(stored_outcome(d.path, e))
    return outcomes


def _outcome(trial: Mapping[str, Any], result: Any, error: str) -> TrialOutcome:
    """A trial's outcome from its Tune result: its last metrics, and its wall-clock,
    retries and device-hours from all it reported."""
    epochs = trial_epochs(trial["flat"])
    m = dict(result.metrics or {})
    if result.path:
        m.update(trial_cost(all_results(result.path) or [m], trial["flat"]))
    return TrialOutcome(
        run_key=trial["run_key"],
        status=trial_status(m, epochs, errored=result.error is not None),
        epoch=int(m.get("epoch", 0) or 0),
        epochs=epochs,
        resumed_from_epoch=int(m.get("resumed_from_epoch", 0) or 0),
        metrics={k: v for k, v in m.items() if not k.startswith(("config", "_"))},
        error=error,
    )


def _finish(
    d: _Driver, outcomes: list[TrialOutcome], wall: float, code: dict[str, Any]
) -> SweepSummary:
    """summary.json (and the diff of a dirty checkout beside it), the sweep's end in MLflow
    with the summary as an artifact; the tracker closed once its events are delivered."""
    summary = SweepSummary(
        name=d.name,
        path=d.path,
        trials=outcomes,
        tracking_uri=d.uri,
        wall_seconds=wall,
        code=code,
        mlflow_url=d.tracker.link if d.tracker is not None else None,
    )
    if code["dirty"]:  # the commit alone does not say what ran: its diff beside it
        store.write_text(store.join(d.path, CODE_DIFF_FILE), code["diff"])
    write_summary(d.path, summary.to_json())
    if d.tracker is not None:
        with tempfile.TemporaryDirectory(prefix="rp_tune-summary-") as tmp:
            local = Path(tmp, "summary.json")  # MLflow logs local files; storage may be s3://
            local.write_text(summary.to_json())
            counts = {
                "total": len(outcomes),
                "finished": summary.finished,
                "failed": summary.failed,
                "unfinished": summary.unfinished,
                "resumed": summary.resumed,
            }
            d.tracker.sweep_end(counts, artifacts=[str(local)], totals=summary.totals())
            d.tracker.close()  # waits until the events (and this file) are delivered or saved
            d.tracker = None
    return summary


# loggers whose records also go to <sweep>/driver.log (the console's own does not propagate)
_LOGGED = ("rp_tune", "rp_tune.console", "ray")


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) stops the sweep as Ctrl-C does: it becomes
    the SIGINT that Tune handles by saving its state and returning, so the summary and the
    --resume command are printed. A second SIGTERM goes to the handler it replaced (Ray's:
    stop its processes and exit). Only from the main thread, where signals are handled."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, handler)


def _ray_logs_dir() -> str:
    """Where this Ray session keeps its processes' logs (the training workers' included)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None:
        return str(Path(node.get_session_dir_path(), "logs"))
    return "the Ray head node's /tmp/ray/session_latest/logs"


def stop_ray_session(session_dir: str) -> int:
    """SIGKILL what is left of a local Ray whose driver was killed; returns the count.

    A SIGKILLed driver takes only itself down: its GCS, raylet, dashboard and their agents
    run on. They carry the session folder (`/tmp/ray/session_<date>_<pid>`) in their
    command lines; each of them and every process under them is stopped.
    """
    import psutil

    name = os.path.basename(session_dir.rstrip("/"))
    if not name.startswith("session_"):
        return 0
    victims: dict[int, Any] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and any(name in a for a in p.info["cmdline"] or []):
                for q in [p, *p.children(recursive=True)]:
                    victims[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for q in victims.values():
        try:
            q.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    return len(victims)


HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource


def trial_driver_resources(nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """What one trial's driver (the Tune trainable and its Train controller) reserves.

    It only waits on its workers, so 0.01 CPU. Where the head node has a CPU, the driver is
    pinned there: the autoscaler never removes the head, so losing a worker node (spot
    preemption, scale-down, hardware) costs only that node's training workers, which Ray
    Train restarts elsewhere from the trial's last checkpoint; the trial itself lives on.
    """
    for node in nodes:
        res = node.get("Resources", {})
        if node.get("Alive") and HEAD_RESOURCE in res and res.get("CPU", 0) >= 1:
            return {"CPU": 0.01, HEAD_RESOURCE: 0.001}
    return {"CPU": 0.01}


def _expected_startups(
    configs: Sequence[TrialConfig], num_cpus: int | None, max_concurrent: int | None
) -> dict[str, int]:
    """Tell the local raylet how many worker processes this sweep starts at once.

    Without it a 2-core machine prints Ray's "8 PYTHON worker processes have been started
    ... 4x the maximum expected startup concurrency" on the console for a sweep of three
    trials, the normal shape of Train V2 (see `startup_concurrency`). A user's own
    RAY_worker_maximum_startup_concurrency wins; never below Ray's own default (the CPUs).
    Returns the local Ray's `_system_config`.
    """
    if "RAY_worker_maximum_startup_concurrency" in os.environ:
        return {}
    cpus = num_cpus or os.cpu_count() or 1
    capacity = {"CPU": float(cpus), **local_gpu_capacity()}
    resolved, _ = resolve_gpus(configs, capacity, "this machine")
    concurrent = max_concurrent or default_concurrency(resolved, capacity)
    expected = max(cpus, startup_concurrency(resolved, concurrent))
    return {"worker_maximum_startup_concurrency": expected}


def cluster_capacity(joined: bool) -> dict[str, float]:
    """Resources of the Ray cluster at its largest (see `max_cluster_resources`).

    When the sweep joined a cluster (`joined`, i.e. --address) and runs on a `ray up` head
    node, that node holds the autoscaler's config with every node type's resources; without
    it, an autoscaling cluster that starts with no GPU workers would run one trial at a time.
    """
    import ray

    current = ray.cluster_resources()
    autoscaling, cfg_path = read_autoscaling_config() if joined else (None, None)
    capacity = max_cluster_resources(current, autoscaling)
    if autoscaling:
        log.info(
            "autoscaling cluster (%s): up now %s, at most %s",
            cfg_path,
            {k: current.get(k, 0) for k in ("CPU", "GPU")},
            {k: capacity.get(k, 0) for k in ("CPU", "GPU")},
        )
    return capacity
