"""Planning a sweep without Ray: expand and validate a space, estimate it, read what the
sweep stored, and tabulate its outcome.

Everything here runs before (or without) Ray: `--dry-run`, `--status`, every bad-input path and
the summary table. `rp_tune.adapters.ray.sweep` is the Ray adapter built on it. A trial's
identity is
what the sweep stored in `<sweep>/trials.json` when it started (flat config and run key), so
a sweep resumes after an upgrade that added config fields with defaults.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rp_tune.config import (
    ConfigError,
    TrialConfig,
    config_differences,
    config_identity,
    gpus_unresolved,
    run_key,
    trial_epochs,
    trial_identity,
)
from rp_tune.core import storage as store
from rp_tune.core.errors import SweepError
from rp_tune.core.text import listed_trials
from rp_tune.planning.records import (
    TRIALS_FILE,
    all_results,
    interrupted_before_stored,
    is_finished,
    is_stored,
    last_result,
    stored_trials,
)

log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    run_key: str
    status: str  # finished | failed | unfinished (stopped part-way) | pending (never started)
    epoch: int
    epochs: int
    resumed_from_epoch: int
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    reused_from: str = ""  # the sweep under the same root that trained it, if reused


def stored_outcome(
    path: str, entry: Mapping[str, Any], folders: set[str] | None = None
) -> TrialOutcome:
    """A trial of the sweep that Tune did not run this time (finished before an --extend,
    reused from another sweep, or not started yet), from what its folder holds. `folders`:
    the sweep folder's names, listed once by a caller with many trials: a trial without a
    folder is pending, with nothing to read (10,000 reads of absent files made a Ctrl-C of
    a large sweep take seconds)."""
    trial_dir = store.join(path, entry["run_key"])
    absent = folders is not None and entry["run_key"] not in folders
    results = [] if absent else all_results(trial_dir)
    last = results[-1] if results else {}
    epochs = trial_epochs(entry["flat"])
    status = trial_status(last, epochs, errored=False) if last else "pending"
    metrics = {k: v for k, v in last.items() if not k.startswith(("config", "_"))}
    if results:
        metrics.update(trial_cost(results, entry["flat"]))
    return TrialOutcome(
        entry["run_key"],
        status,
        int(last.get("epoch", 0) or 0),
        epochs,
        int(last.get("resumed_from_epoch", 0) or 0),
        metrics,
        error=str(last.get("member_failed", "")),
        reused_from=str(entry.get("reused_from", "")),
    )


@dataclass
class SweepSummary:
    name: str
    path: str
    trials: list[TrialOutcome]
    tracking_uri: str | None = None
    wall_seconds: float | None = None  # this driver's run of the sweep, start to end
    code: dict[str, Any] | None = None  # the commit and dirty flag (rp_tune.core.provenance)
    mlflow_url: str | None = None  # the sweep's trials compared in the MLflow UI

    def cost_line(self) -> str:
        """One line of what the sweep cost: this run's wall-clock, the trials' training,
        evaluation and retried time, and device-hours by kind."""
        from rp_tune.core.text import format_duration as d

        t = self.totals()
        hours = [
            f"{t[f'device_hours_{k}']:.3g} {k.upper()}-hours"
            for k in ("gpu", "cpu")
            if t[f"device_hours_{k}"] > 0
        ]
        return (
            f"cost: {d(t.get('sweep_wall_seconds', 0.0))} wall for the sweep; trials "
            f"{d(t['train_seconds'])} training, {d(t['eval_seconds'])} evaluation, "
            f"{d(t['retry_seconds'])} retried, {d(t['wall_seconds'])} wall in all"
            + (f"; {', '.join(hours)}" if hours else "")
        )

    def totals(self) -> dict[str, float]:
        """The trials' costs summed (`cost_totals`), and this run's wall-clock."""
        out = cost_totals([t.metrics for t in self.trials])
        if self.wall_seconds is not None:
            out["sweep_wall_seconds"] = self.wall_seconds
        return out

    @property
    def finished(self) -> int:
        return sum(t.status == "finished" for t in self.trials)

    @property
    def failed(self) -> int:
        return sum(t.status == "failed" for t in self.trials)

    @property
    def unfinished(self) -> int:
        """Trials stopped part-way or never started (an interrupted sweep): --resume runs them."""
        return sum(t.status in ("unfinished", "pending") for t in self.trials)

    @property
    def resumed(self) -> int:
        return sum(t.resumed_from_epoch > 0 for t in self.trials)

    def table(self) -> str:
        """One row per trial: status, epoch, the registry's console columns (those some
        trial reported: `metrics.Metric.column`), the epoch it resumed from."""
        from rp_tune.trial.metrics import METRICS

        shown = [
            m
            for m in METRICS.values()
            if m.column and any(m.name in t.metrics for t in self.trials)
        ]
        if not shown:  # nothing finished yet: the usual columns, empty
            shown = [m for m in METRICS.values() if m.column and m.applies is None]
        widths = [max(len(m.column), 7) for m in shown]
        head = (
            f"{'run_key':<52} {'status':<10} {'epoch':>7} "
            + " ".join(f"{m.column:>{w}}" for m, w in zip(shown, widths))
            + f" {'resumed@':>8}"
        )
        rows = [head, "-" * len(head)]
        listed, unlisted = listed_trials(self.trials, lambda t: t.status)
        for t in sorted(listed, key=lambda t: t.run_key):
            values = [
                format(t.metrics[m.name], m.fmt)
                if isinstance(t.metrics.get(m.name), (int, float))
                else "-"
                for m in shown
            ]
            rows.append(
                f"{t.run_key:<52} {t.status:<10} {f'{t.epoch}/{t.epochs}':>7} "
                + " ".join(f"{v:>{w}}" for v, w in zip(values, widths))
                + f" {t.resumed_from_epoch or '-':>8}"
                + (f"  reused from {t.reused_from}" if t.reused_from else "")
            )
        if unlisted:
            rows.append(unlisted)
        reused = sum(bool(t.reused_from) for t in self.trials)
        rows.append(
            f"trials: {len(self.trials)}  finished: {self.finished}  failed: "
            f"{self.failed}  unfinished: {self.unfinished}  resumed from a checkpoint: "
            f"{self.resumed}" + (f"  reused from other sweeps: {reused}" if reused else "")
        )
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "path": self.path,
                "totals": self.totals(),
                "code": {k: v for k, v in (self.code or {}).items() if k != "diff"},
                "mlflow_url": self.mlflow_url,
                "trials": [t.__dict__ for t in self.trials],
            },
            indent=1,
            default=str,
        )


def trial_status(result: Mapping[str, Any] | None, epochs: int, errored: bool) -> str:
    m = result or {}
    if errored or m.get("member_failed"):  # a group member stopped alone (it diverged)
        return "failed"
    if is_finished(m, epochs):
        return "finished"
    return "unfinished"


# --------------------------------------------------------------------------------------------
# What the sweep stored when it started: the trials' identities
# --------------------------------------------------------------------------------------------


def trial_cost(results: Sequence[Mapping[str, Any]], flat: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial cost, from what Tune recorded of it (its results in order):

    wall_seconds: Tune's time_total_s at the last result (worker starts, checkpoints,
    retries included); retry_seconds: training and validation time of epochs reported and
    then trained again after a failure (a result superseded by a later one of the same or an
    earlier epoch; a finished trial's last epoch handed over again is no retry);
    device_hours: wall_seconds x the trial's devices / 3600, devices = workers x GPUs per
    worker, or workers x CPUs per worker for a CPU trial (device = "GPU" or "CPU"); a member
    of a trial group of K takes 1/K of its group's devices (its rows say `group_size`).
    {} when Tune recorded nothing.
    """
    rows = [r for r in results if isinstance(r.get("epoch"), (int, float))]
    if not rows:
        return {}
    kept: list[Mapping[str, Any]] = []
    lost = 0.0
    for r in rows:
        while kept and kept[-1]["epoch"] >= r["epoch"]:
            old = kept.pop()
            again = old["epoch"] == r["epoch"] and old.get("epoch_seconds") == r.get(
                "epoch_seconds"
            )
            if not again:
                lost += float(old.get("epoch_seconds", 0.0)) + float(old.get("val_seconds", 0.0))
        kept.append(r)
    wall = float(rows[-1].get("time_total_s", 0.0) or 0.0)
    workers = int(flat.get("resources.workers", 1) or 1)
    gpus = float(flat.get("resources.gpus_per_worker") or 0.0)
    per = gpus if gpus > 0 else float(flat.get("resources.cpus_per_worker", 1.0) or 1.0)
    share = 1.0 / max(int(rows[-1].get("group_size", 1) or 1), 1)
    return {
        "wall_seconds": wall,
        "retry_seconds": lost,
        "device_hours": wall * workers * per * share / 3600.0,
        "device": "GPU" if gpus > 0 else "CPU",
    }


COST_TOTALS = ("wall_seconds", "train_seconds", "eval_seconds", "retry_seconds", "device_hours")
GROUP_SHARED_COSTS = ("wall_seconds", "train_seconds", "retry_seconds")  # a group's, not a member's


def cost_totals(per_trial: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The sweep's totals of the trials' costs (those that have them), by device kind:
    device_hours_gpu and device_hours_cpu beside the seconds. The members of a trial group
    (`group` in their metrics) trained in one process at once: its training, retried and
    wall-clock seconds, which every member reports, count once (each member's evaluation and
    device-hours share are its own)."""
    out = {k: 0.0 for k in COST_TOTALS if k != "device_hours"}
    out["device_hours_gpu"] = out["device_hours_cpu"] = 0.0
    shared: dict[str, dict[str, float]] = {}
    for m in per_trial:
        group = m.get("group")
        for k in out:
            if not isinstance(m.get(k), (int, float)):
                continue
            if group and k in GROUP_SHARED_COSTS:
                once = shared.setdefault(str(group), {})
                once[k] = max(once.get(k, 0.0), float(m[k]))
            else:
                out[k] += float(m[k])
        if isinstance(m.get("device_hours"), (int, float)):
            out[f"device_hours_{str(m.get('device', 'CPU')).lower()}"] += float(m["device_hours"])
    for once in shared.values():
        for k, v in once.items():
            out[k] += v
    return out


@dataclass
class TrialPlan:
    """The trials of a sweep about to start: all of them as trials.json stores them, and
    which Tune trains now; the rest finished already, in this sweep before an --extend
    (`kept`) or in another sweep under the results root (`reused`: their entries name it)."""

    entries: list[dict[str, Any]]
    train: list[dict[str, Any]]
    kept: list[dict[str, Any]] = field(default_factory=list)
    reused: list[dict[str, Any]] = field(default_factory=list)


def finished_under(root: str, skip: str = "") -> dict[str, tuple[str, dict[str, Any]]]:
    """trial identity -> (sweep name, stored entry) of every finished trial of every sweep
    under a results root but `skip`; trials a sweep reused are found in the sweep that
    trained them."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if not store.exists(root):
        return out
    for sweep in store.list_names(root):
        base = store.join(root, sweep)
        if sweep == skip or not store.exists(store.join(base, TRIALS_FILE)):
            continue
        for e in stored_trials(base):
            if e.get("reused_from"):
                continue
            last = last_result(store.join(base, e["run_key"]))
            try:
                if is_finished(last, trial_epochs(e["flat"])):
                    out.setdefault(trial_identity(e["flat"]), (sweep, e))
            except ConfigError:  # a config this release no longer reads: not reusable
                continue
    return out


def plan_trials(
    configs: Sequence[TrialConfig],
    root: str,
    name: str,
    existing: Sequence[Mapping[str, Any]] = (),
    reuse: bool = True,
) -> TrialPlan:
    """Which of `configs` to train: those the sweep does not hold yet (`existing`: what it
    stored, every one finished, for --extend) and no other sweep under `root` finished
    (with reuse). Existing entries keep their run keys; a reused trial takes the run key its
    own sweep gave it, so one experiment has one name under a results root."""
    have = {trial_identity(e["flat"]): dict(e) for e in existing}
    others = finished_under(root, skip=name) if reuse else {}
    entries = [dict(e) for e in existing]
    train, reused = [], []
    for c in configs:
        flat = c.to_flat()
        ident = config_identity(c)
        if ident in have:
            continue
        have[ident] = {}
        if ident in others:
            sweep, e = others[ident]
            entry = {"flat": e["flat"], "run_key": e["run_key"], "reused_from": sweep}
            reused.append(entry)
        else:
            entry = {"flat": flat, "run_key": run_key(c)}
            train.append(entry)
        entries.append(entry)
    return TrialPlan(entries, train, kept=[dict(e) for e in existing], reused=reused)


LEASE_SUFFIX = ".driver.json"  # <root>/.<sweep name>.driver.json: the sweep's driver lease


def driver_lock(root: str, name: str) -> store.DriverLock:
    """The lease that lets one driver at a time hold the sweep `name` under `root`."""
    path = store.join(root, name)
    return store.DriverLock(store.join(root, f".{name}{LEASE_SUFFIX}"), f"the sweep at {path}")


def dead_drivers(root: str) -> dict[str, dict]:
    """The leases that killed drivers left under `root`, by sweep name: every sweep's, so
    that any command against the storage can stop what they left running. Leases of live
    drivers, and any that cannot be read, are not among them."""
    try:
        names = store.list_names(root)
    except OSError:
        return {}
    dead = {}
    for lease in names:
        if lease.startswith(".") and lease.endswith(LEASE_SUFFIX):
            name = lease[1 : -len(LEASE_SUFFIX)]
            try:
                left = driver_lock(root, name).check()
            except (store.LockHeld, OSError):
                continue
            if left:
                dead[name] = left
    return dead


def check_not_held(root: str, name: str) -> dict | None:
    """SweepError if another live driver holds the sweep (checked before anything else: a
    sweep that driver is starting may not be restorable yet); else the lease a killed driver
    left, or None."""
    try:
        return driver_lock(root, name).check()
    except store.LockHeld as e:
        raise SweepError(str(e)) from None
    except OSError as e:  # an unreadable lease is never taken for a free sweep
        raise SweepError(f"{root}: cannot read the lock of the sweep {name!r}: {e}") from None


def _extended(
    path: str, stored: Sequence[Mapping[str, Any]], configs: Sequence[TrialConfig]
) -> bool:
    """True when the sweep holds every one of `configs` and the trials it holds besides are
    finished: an --extend (or reuse) added them, and --resume with the extension's options
    continues what is left."""
    drop = gpus_unresolved(configs)
    held = {trial_identity(e["flat"], drop): e for e in stored}
    now = {trial_identity(c.to_flat(), drop) for c in configs}
    if not now <= set(held):
        return False
    for k, e in held.items():
        if k not in now and not e.get("reused_from"):
            last = last_result(store.join(path, e["run_key"]))
            if not is_finished(last, trial_epochs(e["flat"])):
                return False
    return True


def check_resume(
    path: str, configs: Sequence[TrialConfig], search: Mapping[str, Any] | None = None
) -> None:
    """--resume continues the trials the sweep at `path` stored, not others: a SweepError
    naming the keys that differ when the space or a --set now gives other configs (an
    override would otherwise be silently ignored), or when a stored config no longer reads.
    A matching-density search (`search`: its `search_record`) continues the same search."""
    from rp_tune.planning.matching_plan import check_search_resume, read_search

    try:
        if not is_stored(path):
            if interrupted_before_stored(path):  # stopped while planning: nothing to compare
                return
            raise SweepError(f"--resume: no sweep to resume at {path}")
        check_search_resume(path, search)
        if read_search(path) is not None:  # its probes are not the space's grid
            return
        stored = stored_trials(path)
        differ = config_differences([e["flat"] for e in stored], configs) if stored else []
        if differ and _extended(path, stored, configs):
            differ = []
    except ConfigError as e:  # a stored key this release no longer knows
        raise SweepError(f"--resume: the sweep at {path} stored a config {e}") from None
    except OSError as e:
        raise SweepError(f"--resume: cannot read the trials of the sweep at {path}: {e}") from None
    if differ:
        raise SweepError(
            f"--resume: the sweep at {path} was started with other trial configs; these "
            f"keys differ from what it stored: {', '.join(differ)}. Resume without the --set "
            "(or space edit) that changes them, or start another sweep with --name"
        )
