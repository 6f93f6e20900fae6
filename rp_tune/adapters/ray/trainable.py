"""Tune's function trainable and Ray Train's worker loops: one `TorchTrainer` per trial
(DDP over `resources.workers` workers, or a fraction of a GPU for one worker), named after the
trial's run key and stored beside the Tune experiment, so a trial Tune restarts finds its own
checkpoints; the workers run `rp_tune.trial.train.run_trial` (or a fused trial group) and
report every epoch with `ray.train.report`. Worker crashes are retried by Train from the last
readable checkpoint; an error that recurs on retry stops the trial with its message."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rp_tune.adapters.ray.toy import toy_trial
from rp_tune.config import ConfigError, from_flat, run_key
from rp_tune.core import storage as store
from rp_tune.trial.metrics import ITERATION, metric

log = logging.getLogger(__name__)
console = logging.getLogger("rp_tune.console")  # the sweep's own lines; run_sweep.py shows them


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

    from rp_tune.trial.checkpoints import CheckpointError, read_checkpoint

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


# Its name is in every sweep Tune stored: Tuner.restore refuses a trainable of another name,
# so renaming it would strand every interrupted sweep.
def _tune_trial(config: dict[str, Any], plan: Mapping[str, str] | None = None) -> None:
    """Tune function trainable: builds and fits the trial's TorchTrainer (Train V2).
    config["trial"]: the run key (a group: its members' keys, their file); plan: run key ->
    flat config as JSON (a group's: its first member's); older sweeps' configs hold it."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = config["trial"]
    marker = store.join(config["train_storage"], RECURRING_ERRORS, trial["run_key"])
    if store.exists(marker):  # Tune's retry of a trial that cannot succeed: fail at once
        raise RecurringTrialError(store.read_text(marker))
    own = (trial.get("members") or [trial["run_key"]])[0]
    flat = trial.get("flat") or json.loads((plan or {})[own])  # a search's probe: its own
    if config.get("toy_noise") is not None:  # testing: a known curve, no Train run
        return toy_trial(trial["run_key"], flat, config["toy_noise"], trial.get("group_file"))
    cfg = from_flat(flat)
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
            "flat": flat,
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
