"""Planning a sweep without Ray: expand and validate a space, estimate it, read what the
sweep stored, and tabulate its outcome.

Everything here runs before (or without) Ray: `--dry-run`, `--status`, every bad-input path and
the summary table. `rp_tune.sweep` is the Ray adapter built on it. A trial's identity is
what the sweep stored in `<sweep>/trials.json` when it started (flat config and run key), so
a sweep resumes after an upgrade that added config fields with defaults.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from . import storage as store
from .config import (
    DYNAMIC_KEYS,
    NOT_HASHED,
    SCHEME_OPTION_KEYS,
    ConfigError,
    DataConfig,
    TrialConfig,
    from_flat,
    parse_set,
    run_key,
)
from .data import absolute_data_root
from .model_names import input_size
from .models import build_model

log = logging.getLogger(__name__)


def is_finished(metrics: Mapping[str, Any], epochs: int) -> bool:
    """The one rule for a finished trial: it reported its last epoch with its final metrics."""
    return int(metrics.get("epoch", 0) or 0) >= epochs and "test_acc" in metrics


class SweepError(ValueError):
    """A sweep cannot start: bad space, override or storage; nothing was started or written."""


def expand_space(
    space: str | ModuleType, overrides: Mapping[str, Any] | None = None, smoke: bool = False
) -> list[TrialConfig]:
    """Every trial config of a search space, validated; dense trials deduplicated.

    Precedence: the space's GRID and FIXED, then SMOKE (with smoke=True), then overrides. A list
    value is a grid axis; anything else is fixed. GRID may also be a list of such grids (the
    union of their products, e.g. widths that depend on the density). Density 1.0 is dense
    whatever the scheme, so it is run once per remaining point (scheme set to `uniform`).
    """
    from search_spaces import load_space

    if isinstance(space, ModuleType):
        module, space = space, space.__name__.rsplit(".", 1)[-1]
    else:
        try:
            module = load_space(space)
        except ValueError as e:
            raise SweepError(str(e)) from None
    grids = module.GRID if isinstance(module.GRID, list) else [module.GRID]
    configs: dict[str, TrialConfig] = {}
    for grid in grids:
        values: dict[str, Any] = {**module.FIXED, **grid}
        if smoke:
            values.update(module.SMOKE)
        values.update(overrides or {})
        for cfg in _grid_configs(space, values):
            configs.setdefault(run_key(cfg), cfg)
    if not configs:
        raise SweepError(f"search space {space!r} expands to no trials")
    return list(configs.values())


def _grid_configs(space: str, values: Mapping[str, Any]) -> list[TrialConfig]:
    """The Cartesian product of one grid's list values, validated, as trial configs."""
    axes = {k: v for k, v in values.items() if isinstance(v, list) and not _tuple_key(k)}
    fixed = {k: v for k, v in values.items() if k not in axes}
    out = []
    for point in itertools.product(*axes.values()):
        flat = {**fixed, **dict(zip(axes, point))}
        if float(flat.get("sparsity.density", 0.1)) == 1.0:
            flat["sparsity.scheme"] = "uniform"
            flat["sparsity.mode"] = "static"
            for key in SCHEME_OPTION_KEYS:  # meaningless for a dense net: one trial, not several
                flat.pop(key, None)
        # Ray workers do not run in this folder: a relative data root is made absolute here.
        flat["data.root"] = absolute_data_root(str(flat.get("data.root", DataConfig.root)))
        if flat.get("sparsity.mode", "static") == "static":
            for key in DYNAMIC_KEYS:  # meaningless for a fixed mask: one trial, not several
                flat.pop(key, None)
        try:
            out.append(from_flat(flat))
        except ConfigError as e:
            raise SweepError(f"search space {space!r}: {e}") from None
    return out


def _tuple_key(key: str) -> bool:
    """Keys whose single value is itself a list (e.g. train.milestones)."""
    return key in ("train.milestones", "evaluation.ood_sets")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings from --set (`config.parse_set`), a SweepError if malformed."""
    try:
        return parse_set(items)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def check_data_roots(configs: Sequence[TrialConfig]) -> None:
    """Every dataset any trial reads (training and OoD sets) is present and intact before Ray
    starts, downloaded once here where allowed (`rp_tune.data.ensure_datasets`); otherwise one
    SweepError naming the dataset, the root, the layout expected there and the fixes."""
    from .data import DataError, ensure_datasets

    try:
        ensure_datasets(configs)
    except DataError as e:
        raise SweepError(str(e)) from None


FULL_TRAINING_SETS = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "imagenet": 1_281_167}


def training_images(cfg: TrialConfig) -> int:
    """Images a trial trains on: its training set less the validation share."""
    full = FULL_TRAINING_SETS.get(cfg.data.name, cfg.data.synthetic_train)
    return int(full - round(full * cfg.data.val_fraction))


def check_trials_fit(configs: Sequence[TrialConfig]) -> None:
    """Refuse, before Ray starts, trials that would fail in every worker on every retry: a
    batch larger than the training shard (sizes of the full datasets), a data-free scheme
    whose plan keeps no weight in some layer (data-dependent ones are checked in the trial),
    per-layer overrides that name no layer of the model or do not fit the budget."""
    from .config import layer_density_map
    from .models import layer_specs
    from .sparsity import (
        SCHEMES,
        check_no_empty_layers,
        layer_densities,
        layer_overrides,
        scheme_options,
    )

    specs: dict[tuple[str, int], Any] = {}
    for cfg in configs:
        s = cfg.sparsity
        data_free = not SCHEMES[s.scheme].needs_model
        by_hand = s.layer_density or s.classifier_density is not None
        if s.density < 1.0 and ((data_free and not s.allow_empty_layers) or by_hand):
            key = (cfg.model.name, cfg.data.classes or 1000)
            if key not in specs:
                specs[key] = layer_specs(build_model(*key))
            try:
                overrides = layer_overrides(
                    specs[key], layer_density_map(s.layer_density), s.classifier_density
                )
                # a model-based scheme's ratios need the trial's data: check the budget only
                scheme, options = (s.scheme, scheme_options(s.scheme, s)) if data_free else (
                    "uniform", {})  # fmt: skip
                plan = layer_densities(scheme, specs[key], s.density, overrides=overrides,
                                       **options)  # fmt: skip
                if data_free and not s.allow_empty_layers:
                    check_no_empty_layers(plan)
            except ValueError as e:
                raise SweepError(f"trial {run_key(cfg)}: {e}") from None
        shard = training_images(cfg) // cfg.resources.workers
        if shard < cfg.train.batch_size:
            raise SweepError(
                f"train.batch_size={cfg.train.batch_size} is larger than the training shard "
                f"of {shard} images ({cfg.data.name}, {cfg.resources.workers} worker(s)) of "
                f"trial {run_key(cfg)}; valid: a batch <= {shard}"
            )


def estimate_gpu_hours(cfg: TrialConfig, tflops: float) -> float:
    """Training FLOPs of the dense net (3 x forward) / an assumed sustained rate.

    A rough planning number: sparse masks do not speed up dense kernels, so the dense count
    is the relevant one; `tflops` is the sustained rate per GPU the user expects.
    """
    from .metrics import layer_flops

    images = {cfg.data.name: training_images(cfg)}
    size = input_size(cfg)
    key = (cfg.model.name, size[0])
    if key not in _FLOPS:
        _FLOPS[key] = layer_flops(build_model(cfg.model.name, 10), (3, *size))[0]
    flops = 3.0 * _FLOPS[key] * images[cfg.data.name] * cfg.train.epochs
    return flops / (tflops * 1e12) / 3600


_FLOPS: dict[tuple[str, int], int] = {}


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order (8 before 16), then text in natural order (depth and width
    inside names: cifar_resnet_8_8 before cifar_resnet_8_16)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    text = str(value)
    return (
        1,
        0.0,
        [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)],
    )


def sort_values(values: Sequence[Any]) -> list[Any]:
    return sorted(values, key=_sort_key)


def values_by_key(configs: Sequence[TrialConfig]) -> dict[str, list[Any]]:
    """Every flat key (less NOT_HASHED) -> the distinct values the trials give it, in order:
    more than one for an axis of the sweep, one for a fixed value."""
    flats = [c.to_flat() for c in configs]
    return {
        k: sort_values({repr(f[k]): f[k] for f in flats}.values())
        for k in flats[0]
        if k not in NOT_HASHED
    }


def describe_axes(space: str, configs: Sequence[TrialConfig]) -> str:
    """What a sweep varies and holds: every flat key whose value differs between its trials
    (the axes, with their values in order), then the main fixed values."""
    axes = values_by_key(configs)
    varying = {k: v for k, v in axes.items() if len(v) > 1}
    width = max((len(k) for k in varying), default=10) + 2
    lines = [f"space {space}: {len(configs)} trials over {len(varying)} axes"]
    for k, values in varying.items():
        shown = ", ".join(map(str, values))
        lines.append(f"  {k:<{width}}{shown if len(shown) < 200 else shown[:197] + '...'}")
    main = ("data.name", "train.recipe", "train.epochs", "train.batch_size", "resources.workers",
            "resources.gpus_per_worker", "sparsity.mode")  # fmt: skip
    fixed = [f"{k}={axes[k][0]}" for k in main if k in axes and len(axes[k]) == 1]
    lines.append("  fixed: " + ", ".join(fixed))
    return "\n".join(lines)


def space_params(configs: Sequence[TrialConfig]) -> dict[str, str]:
    """A sweep's grid and fixed values as flat strings (the MLflow parent run's params):
    `axis.<key>` = the values a key takes (where it varies), `fixed.<key>` = its one value."""
    out = {}
    for k, values in values_by_key(configs).items():
        if len(values) > 1:
            out[f"axis.{k}"] = ",".join(map(str, values))
        else:
            out[f"fixed.{k}"] = str(values[0])
    return out


def trial_table(configs: Sequence[TrialConfig], tflops: float = 25.0) -> tuple[str, float]:
    """Text table of the trials and the total estimated GPU-hours."""
    lines = [f"{'#':>4}  {'run_key':<52} {'epochs':>6} {'workers':>7} {'gpu/w':>5} {'gpu-h':>7}"]
    total = 0.0
    for i, cfg in enumerate(configs):
        hours = estimate_gpu_hours(cfg, tflops)
        total += hours
        r = cfg.resources
        lines.append(
            f"{i:>4}  {run_key(cfg):<52} {cfg.train.epochs:>6} {r.workers:>7} "
            f"{'auto' if r.gpus_per_worker is None else format(r.gpus_per_worker, 'g'):>5} "
            f"{hours:>7.3f}"
        )
    return "\n".join(lines), total


TRIALS_FILE = "trials.json"  # <sweep>/trials.json: every trial's flat config, at the start


@dataclass
class TrialOutcome:
    run_key: str
    status: str  # finished | failed | unfinished (stopped part-way) | pending (never started)
    epoch: int
    epochs: int
    resumed_from_epoch: int
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class SweepSummary:
    name: str
    path: str
    trials: list[TrialOutcome]
    tracking_uri: str | None = None

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
        from .metrics import METRICS

        shown = [m for m in METRICS.values() if m.column and any(m.name in t.metrics
                 for t in self.trials)]  # fmt: skip
        if not shown:  # nothing finished yet: the usual columns, empty
            shown = [m for m in METRICS.values() if m.column and m.applies is None]
        widths = [max(len(m.column), 7) for m in shown]
        head = f"{'run_key':<52} {'status':<10} {'epoch':>7} " + " ".join(
            f"{m.column:>{w}}" for m, w in zip(shown, widths)
        ) + f" {'resumed@':>8}"  # fmt: skip
        rows = [head, "-" * len(head)]
        for t in sorted(self.trials, key=lambda t: t.run_key):
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
            )
        rows.append(
            f"trials: {len(self.trials)}  finished: {self.finished}  failed: "
            f"{self.failed}  unfinished: {self.unfinished}  resumed from a checkpoint: "
            f"{self.resumed}"
        )
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "path": self.path, "trials": [t.__dict__ for t in self.trials]},
            indent=1,
            default=str,
        )


def trial_status(result: Mapping[str, Any] | None, epochs: int, errored: bool) -> str:
    m = result or {}
    if errored:
        return "failed"
    if is_finished(m, epochs):
        return "finished"
    return "unfinished"


AUTOSCALING_CONFIG_ENV = "RP_TUNE_AUTOSCALING_CONFIG"


AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"  # what `ray up` writes on the head node


def max_cluster_resources(
    current: Mapping[str, float], autoscaling: Mapping[str, Any] | None
) -> dict[str, float]:
    """The cluster's resources once the autoscaler has started all the workers it may.

    head node type's resources + the worker node types' resources x their max_workers, taking
    the types with most GPUs (then CPUs) first until the global max_workers is reached; never
    less than what is up now. Without an autoscaling config: what is up now.
    """
    out = {k: float(v) for k, v in current.items()}
    if not autoscaling:
        return out
    types = autoscaling.get("available_node_types") or {}
    head_type = autoscaling.get("head_node_type")
    total: dict[str, float] = {}
    for k, v in (types.get(head_type, {}).get("resources") or {}).items():
        total[k] = total.get(k, 0.0) + float(v)
    left = int(autoscaling.get("max_workers", 0) or 0)
    workers = sorted(
        (t for name, t in types.items() if name != head_type),
        key=lambda t: (
            -float((t.get("resources") or {}).get("GPU", 0)),
            -float((t.get("resources") or {}).get("CPU", 0)),
        ),
    )
    for t in workers:
        n = min(int(t.get("max_workers", left) or 0), left)
        left -= n
        for k, v in (t.get("resources") or {}).items():
            total[k] = total.get(k, 0.0) + n * float(v)
    for k, v in total.items():
        out[k] = max(out.get(k, 0.0), v)
    return out


def read_autoscaling_config() -> tuple[dict[str, Any] | None, Path]:
    """(the autoscaler's config as `ray up` wrote it on the head node, or None; its path)."""
    import yaml

    path = Path(os.environ.get(AUTOSCALING_CONFIG_ENV, AUTOSCALING_CONFIG)).expanduser()
    if not path.is_file():
        return None, path
    try:
        return yaml.safe_load(path.read_text()), path
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read autoscaling config %s (%s): using what is up now", path, e)
        return None, path


def resolve_gpus(
    configs: Sequence[TrialConfig], capacity: Mapping[str, float] | None, where: str
) -> tuple[list[TrialConfig], str]:
    """Give every trial that left resources.gpus_per_worker unset (None) a device.

    The rule of the single-trial CLI, at cluster scale: one GPU per training worker wherever
    `capacity` (the Ray cluster at its largest, or this machine) has GPUs, else the CPU.
    Trials that set it (`--gpus-per-trial`, a space, `--set`) keep their value; 0 is the CPU.
    `capacity` None means not known yet (a cluster not joined): the configs stay unresolved.
    Returns the configs and one line saying what was chosen and why, for the console.
    """
    if not any(c.resources.gpus_per_worker is None for c in configs):
        gpus = sorted({c.resources.gpus_per_worker for c in configs})
        return list(
            configs
        ), f"GPUs per training worker as set: {', '.join(f'{g:g}' for g in gpus)}"
    if capacity is None:
        return list(configs), (
            f"GPUs: decided when the sweep joins {where}: one per training worker if it has "
            "GPUs, else the CPU (--gpus-per-trial sets it)"
        )
    n = float(capacity.get("GPU", 0) or 0)
    value = 1.0 if n > 0 else 0.0
    if n > 0:
        reason = (
            f"GPUs: {where} has {n:g}, so each training worker takes 1 GPU "
            "(--gpus-per-trial 0.25 packs 4 small trials per GPU; 0 trains on the CPU)"
        )
    else:
        reason = f"GPUs: {where} has none, so trials train on the CPU (--gpus-per-trial sets it)"
    out = [
        c.replace(**{"resources.gpus_per_worker": value})
        if c.resources.gpus_per_worker is None
        else c
        for c in configs
    ]
    return out, reason


def local_gpu_capacity() -> dict[str, float]:
    """The GPUs a local Ray would see on this machine (CUDA devices torch can use)."""
    import torch

    return {"GPU": float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0}


def planned_capacity(address: str | None) -> tuple[dict[str, float] | None, str]:
    """(capacity, where) for planning without starting Ray: this machine for a local Ray;
    for a cluster, its autoscaler's node types when their config is readable here (on a `ray
    up` head node), else None (decided once the sweep joins it)."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        return local_gpu_capacity(), "this machine"
    autoscaling, path = read_autoscaling_config()
    if autoscaling:
        return max_cluster_resources({}, autoscaling), f"the cluster's node types ({path})"
    return None, "the Ray cluster"


def default_concurrency(configs: Sequence[TrialConfig], resources: Mapping[str, float]) -> int:
    """Trials that fit at once: Tune does not count Train workers' resources, so we do.

    min over trials of floor(cluster GPUs / (workers x GPUs per worker)), or for CPU trials
    floor(cluster CPUs / (workers x CPUs per worker + 0.01 for the trial's driver)); >= 1.
    """
    fits = []
    for c in configs:
        r = c.resources
        if (r.gpus_per_worker or 0) > 0:
            fits.append(resources.get("GPU", 0) / (r.workers * r.gpus_per_worker))
        else:
            fits.append(resources.get("CPU", 1) / (r.workers * r.cpus_per_worker + 0.01))
    return max(1, math.floor(min(fits)))


def startup_concurrency(configs: Sequence[TrialConfig], concurrent: int) -> int:
    """Worker processes a local Ray is expected to start at once for this sweep.

    Train V2 runs each trial as three kinds of process: Tune's function trainable, Train's
    controller, and the trial's training workers, so `concurrent` trials need
    concurrent x (2 + workers). Ray's raylet throttles startups to its CPU count and prints a
    warning at 4x that, which on a small machine fires for any sweep of 3 trials at once.
    """
    workers = max((c.resources.workers for c in configs), default=1)
    return max(1, concurrent) * (2 + workers)


# --------------------------------------------------------------------------------------------
# What the sweep stored when it started: the trials' identities
# --------------------------------------------------------------------------------------------


def last_result(trial_dir: str) -> dict[str, Any]:
    """The last result Tune recorded for a trial (the last whole line of its result.json,
    a folder or a URI); {} if none yet. A line being written is passed over."""
    location = store.join(trial_dir, "result.json")
    if not store.exists(location):
        return {}
    for line in reversed(store.read_text(location).splitlines()):
        if line.strip():
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def stored_trials(path: str) -> list[dict[str, Any]]:
    """Every trial of the sweep at `path` as stored when it started: [{"flat", "run_key"}];
    [] for a sweep started before `trials.json` existed."""
    location = store.join(path, TRIALS_FILE)
    if not store.exists(location):
        return []
    return json.loads(store.read_text(location))


def write_stored_trials(path: str, configs: Sequence[TrialConfig]) -> list[dict[str, Any]]:
    entries = [{"flat": c.to_flat(), "run_key": run_key(c)} for c in configs]
    store.write_text(store.join(path, TRIALS_FILE), json.dumps(entries, default=list))
    return entries


def _comparable(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config as this release reads it (fields it added take their defaults), minus
    the keys that never change a result (NOT_HASHED), with lists as tuples."""
    full = from_flat(flat).to_flat()
    return {
        k: tuple(v) if isinstance(v, list) else v for k, v in full.items() if k not in NOT_HASHED
    }


def config_differences(
    stored: Sequence[Mapping[str, Any]], configs: Sequence[TrialConfig]
) -> list[str]:
    """The flat keys whose values differ between the trials a sweep stored and `configs` (the
    space and overrides expanded now); [] when they are the same trials.

    Fields added by a newer release compare at their defaults; resources.gpus_per_worker left
    to the sweep (None now) matches whatever the sweep chose for it.
    """
    before = [_comparable(f) for f in stored]
    now = [_comparable(c.to_flat()) for c in configs]
    gpus = "resources.gpus_per_worker"
    if any(c.resources.gpus_per_worker is None for c in configs):
        for row in before + now:
            row.pop(gpus, None)
    if sorted(map(repr, before)) == sorted(map(repr, now)):
        return []
    keys = sorted({k for row in before + now for k in row})
    differ = [k for k in keys if {repr(r.get(k)) for r in before} != {repr(r.get(k)) for r in now}]
    return differ or ["the combinations of values (each key takes the same values)"]


def driver_lock(root: str, name: str) -> store.DriverLock:
    """The lease that lets one driver at a time hold the sweep `name` under `root`."""
    path = store.join(root, name)
    return store.DriverLock(store.join(root, f".{name}.driver.json"), f"the sweep at {path}")


def check_not_held(root: str, name: str) -> None:
    """SweepError if another live driver holds the sweep (checked before anything else: a
    sweep that driver is starting may not be restorable yet)."""
    try:
        driver_lock(root, name).check()
    except store.LockHeld as e:
        raise SweepError(str(e)) from None
    except OSError as e:  # an unreadable lease is never taken for a free sweep
        raise SweepError(f"{root}: cannot read the lock of the sweep {name!r}: {e}") from None


def check_resume(path: str, configs: Sequence[TrialConfig]) -> None:
    """--resume continues the trials the sweep at `path` stored, not others: a SweepError
    naming the keys that differ when the space or a --set now gives other configs (an
    override would otherwise be silently ignored), or when a stored config no longer reads."""
    try:
        if not (
            store.exists(store.join(path, TRIALS_FILE))
            or store.exists(
                store.join(path, "tuner.pkl")  # Tune's own record (a sweep of an older release)
            )
        ):
            raise SweepError(f"--resume: no sweep to resume at {path}")
        stored = stored_trials(path)
        differ = config_differences([e["flat"] for e in stored], configs) if stored else []
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
