"""Planning a sweep without Ray: expand and validate a space, estimate it, read what the
sweep stored, and tabulate its outcome.

Everything here runs before (or without) Ray: `--dry-run`, `--status`, every bad-input path and
the summary table. `rp_tune.adapters.ray.sweep` is the Ray adapter built on it. A trial's
identity is
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from rp_tune.config import (
    NOT_HASHED,
    SCHEME_OPTION_KEYS,
    ConfigError,
    DataConfig,
    TrialConfig,
    config_differences,
    from_flat,
    gpus_unresolved,
    parse_set,
    run_key,
    trial_epochs,
    trial_identity,
)
from rp_tune.core import storage as store
from rp_tune.core.model_names import input_size, parse_cifar_resnet
from rp_tune.data import absolute_data_root
from rp_tune.methods import DEFAULT_METHOD, METHODS, from_start, method_keys
from rp_tune.models import build_model
from rp_tune.trial.groups import member_group

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
    union of their products, e.g. widths that depend on the density), and SMOKE then a list
    of overrides, one per grid (or one dict for all). Density 1.0 is dense
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
    from rp_tune.core.paper_figures import FIGURES

    unknown = [f for f in getattr(module, "FIGURES", ()) if f not in FIGURES]
    if unknown:
        raise SweepError(
            f"search space {space!r}: FIGURES names {unknown}, which the papers' figure list"
            f" (rp_tune.core.paper_figures.FIGURES) does not hold; valid: {sorted(FIGURES)}"
        )
    grids = module.GRID if isinstance(module.GRID, list) else [module.GRID]
    smokes = module.SMOKE if isinstance(module.SMOKE, list) else [module.SMOKE] * len(grids)
    if len(smokes) != len(grids):
        raise SweepError(
            f"search space {space!r}: SMOKE is a list of {len(smokes)} overrides for "
            f"{len(grids)} grids; give one per grid, or one dict for all"
        )
    configs: dict[str, TrialConfig] = {}
    for grid, smoke_values in zip(grids, smokes):
        values: dict[str, Any] = {**module.FIXED, **grid}
        if smoke:
            values.update(smoke_values)
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
            flat["sparsity.mode"] = DEFAULT_METHOD  # a fixed mask
            for key in SCHEME_OPTION_KEYS:  # meaningless for a dense net: one trial, not several
                flat.pop(key, None)
        # Ray workers do not run in this folder: a relative data root is made absolute here.
        flat["data.root"] = absolute_data_root(str(flat.get("data.root", DataConfig.root)))
        row = METHODS.get(str(flat.get("sparsity.mode", DEFAULT_METHOD)))  # None: from_flat says
        for key in method_keys():  # only their method reads them: one trial, not several
            if row is not None and key not in row.keys:
                flat.pop(key, None)
        if (
            row is not None
            and row.from_start
            and float(flat.get("sparsity.start_density", 1.0)) == 1.0
        ):
            flat["sparsity.scheme"] = "uniform"  # a dense start: no scheme shapes it
            for key in SCHEME_OPTION_KEYS:
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


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """--grid KEY=V1,V2,... strings as axes {key: [values]} (strings, coerced per field by
    `from_flat`); SweepError for an item without '=' or values, or a key whose one value is
    itself a list (train.milestones: set such axes in a space file)."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = (t.strip() for t in item.partition("="))
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not key or not values:
            raise SweepError(f"--grid {item!r} is not KEY=V1,V2,... (e.g. --grid seed=0,1,2)")
        if _tuple_key(key):
            raise SweepError(
                f"--grid {key}: its one value is a list; give such an axis in a space file"
            )
        out[key] = values
    return out


def check_data_roots(configs: Sequence[TrialConfig]) -> None:
    """Every dataset any trial reads (training and OoD sets) is present and intact before Ray
    starts, downloaded once here where allowed (`rp_tune.data.ensure_datasets`); otherwise one
    SweepError naming the dataset, the root, the layout expected there and the fixes."""
    from rp_tune.data import DataError, ensure_datasets

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
    from rp_tune.config import layer_density_map
    from rp_tune.models import layer_specs
    from rp_tune.sparsity import (
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
        density = s.start_density if from_start(s.mode) else s.density  # its start
        if density < 1.0 and ((data_free and not s.allow_empty_layers) or by_hand):
            key = (cfg.model.name, cfg.data.classes or 1000)
            if key not in specs:
                specs[key] = layer_specs(build_model(*key))
            try:
                overrides = layer_overrides(
                    specs[key], layer_density_map(s.layer_density), s.classifier_density
                )
                # a model-based scheme's ratios need the trial's data: check the budget only
                scheme, options = (
                    (s.scheme, scheme_options(s.scheme, s)) if data_free else ("uniform", {})
                )
                plan = layer_densities(scheme, specs[key], density, overrides=overrides, **options)
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
    from rp_tune.trial.metrics import layer_flops

    images = {cfg.data.name: training_images(cfg)}
    size = input_size(cfg)
    key = (cfg.model.name, size[0])
    if key not in _FLOPS:
        _FLOPS[key] = layer_flops(build_model(cfg.model.name, 10), (3, *size))[0]
    flops = 3.0 * _FLOPS[key] * images[cfg.data.name] * cfg.total_epochs  # IMP: all rounds
    return flops / (tflops * 1e12) / 3600


_FLOPS: dict[tuple[str, int], int] = {}


def device_kind(cfg: TrialConfig) -> str:
    """ "GPU" for a trial that trains on GPUs, else "CPU" (unresolved: GPU, the default
    wherever the cluster has one)."""
    g = cfg.resources.gpus_per_worker
    return "CPU" if g is not None and g <= 0 else "GPU"


@dataclass
class SpeedCalibration:
    """Sustained dense-equivalent TFLOP/s per device, measured on finished trials:
    training FLOPs of the dense net (train_flops_dense) / train_seconds / devices; the median
    per model and device kind, and over all models per kind."""

    per_model: dict[tuple[str, str], float] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)  # measured trials per kind
    where: str = ""

    def rate(self, cfg: TrialConfig) -> float | None:
        kind = device_kind(cfg)
        return self.per_model.get((cfg.model.name, kind), self.overall.get(kind))


ASSUMED_TFLOPS = 25.0  # the estimate's rate per device where nothing was measured


def speed_assumption(
    configs: Sequence[TrialConfig], assumed: float | None, measured: SpeedCalibration | None
) -> str:
    """What the estimate's rate rests on, for the dry run: the rate given, or how many of
    the trials have a measured rate (and from how many finished trials), else the default."""
    if assumed is not None:
        return f"at {assumed:g} sustained TFLOP/s per device (--assumed-tflops)"
    m = measured or SpeedCalibration()
    rated = [c for c in configs if m.rate(c) is not None]
    if not rated:
        return (
            f"at an assumed {ASSUMED_TFLOPS:g} TFLOP/s per device: no finished trial under "
            f"{m.where or 'the results root'} measured its speed yet (--assumed-tflops sets it)"
        )
    kinds = sorted({device_kind(c) for c in rated})
    rates = ", ".join(f"{m.overall[k]:.3g} TFLOP/s per {k} (median)" for k in kinds)
    own = sum((c.model.name, device_kind(c)) in m.per_model for c in rated)
    rest = len(configs) - len(rated)
    return (
        f"at the speed measured on {sum(m.trials.get(k, 0) for k in kinds)} finished trials "
        f"under {m.where}: {rates}; {own} of {len(configs)} trials at their own model's rate"
        + (f", {rest} at an assumed {ASSUMED_TFLOPS:g} TFLOP/s" if rest else "")
    )


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def measured_speed(root: str) -> SpeedCalibration:
    """What the finished trials of every sweep under a results root ran at (see
    SpeedCalibration); empty where none has reported its training time."""
    by: dict[tuple[str, str], list[float]] = {}
    if store.exists(root):
        for sweep in store.list_names(root):
            base = store.join(root, sweep)
            if not store.exists(store.join(base, TRIALS_FILE)):
                continue
            for entry in stored_trials(base):
                last = last_result(store.join(base, entry["run_key"]))
                flops, seconds = last.get("train_flops_dense"), last.get("train_seconds")
                if not (isinstance(flops, (int, float)) and isinstance(seconds, (int, float))):
                    continue
                if seconds <= 0 or not is_finished(last, trial_epochs(entry["flat"])):
                    continue
                if int(last.get("group_size", 1) or 1) > 1:  # a fused member's time is its
                    continue  # group's: another speed than the trial's alone
                cfg = from_flat(entry["flat"])
                r = cfg.resources
                devices = r.workers * ((r.gpus_per_worker or 0) or r.cpus_per_worker)
                rate = flops / seconds / devices / 1e12
                by.setdefault((cfg.model.name, device_kind(cfg)), []).append(rate)
    cal = SpeedCalibration(where=root)
    kinds: dict[str, list[float]] = {}
    for (model, kind), rates in by.items():
        cal.per_model[(model, kind)] = _median(rates)
        kinds.setdefault(kind, []).extend(rates)
    cal.overall = {k: _median(v) for k, v in kinds.items()}
    cal.trials = {k: len(v) for k, v in kinds.items()}
    return cal


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order (8 before 16), then text in natural order (depth and width
    inside names: cifar_resnet_8_8 before cifar_resnet_8_16)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    text = str(value)
    dw = parse_cifar_resnet(text)
    if dw is not None:  # the default width unspelled still sorts by width: _20_8, _20, _20_24
        text = f"cifar_resnet_{dw[0]}_{dw[1]}"
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
    main = (
        "data.name",
        "train.recipe",
        "train.epochs",
        "train.batch_size",
        "resources.workers",
        "resources.gpus_per_worker",
        "sparsity.mode",
    )
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


def trial_table(
    configs: Sequence[TrialConfig],
    tflops: float = 25.0,
    measured: SpeedCalibration | None = None,
) -> tuple[str, float]:
    """Text table of the trials and the total estimated device-hours: each trial at the
    rate measured for its model and device kind where there is one, else `tflops`."""
    lines = [f"{'#':>4}  {'run_key':<52} {'epochs':>6} {'workers':>7} {'gpu/w':>5} {'dev-h':>7}"]
    total = 0.0
    for i, cfg in enumerate(configs):
        rate = measured.rate(cfg) if measured is not None else None
        hours = estimate_gpu_hours(cfg, rate or tflops)
        total += hours
        r = cfg.resources
        lines.append(
            f"{i:>4}  {run_key(cfg):<52} {cfg.total_epochs:>6} {r.workers:>7} "
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
    reused_from: str = ""  # the sweep under the same root that trained it, if reused


def stored_outcome(path: str, entry: Mapping[str, Any]) -> TrialOutcome:
    """A trial of the sweep that Tune did not run this time (finished before an --extend,
    reused from another sweep, or not started yet), from what its folder holds."""
    trial_dir = store.join(path, entry["run_key"])
    results = all_results(trial_dir)
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
                + (f"  reused from {t.reused_from}" if t.reused_from else "")
            )
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


def _result_rows(trial_dir: str, newest_first: bool = False) -> Iterator[dict[str, Any]]:
    """A trial's results as Tune recorded them in its result.json (a folder or a URI), each
    line parsed once; a line being written is passed over. A member of a trial group (its
    folder holds `group.json`) has no result.json of its own: its rows are those of its
    group's that carry its run key."""
    location = store.join(trial_dir, "result.json")
    key = None
    if not store.exists(location):
        group = member_group(trial_dir)
        if group is None:
            return
        key = store.basename(trial_dir.rstrip("/"))
        location = store.join(store.parent(trial_dir.rstrip("/")), group, "result.json")
        if not store.exists(location):
            return
    lines = store.read_text(location).splitlines()
    for line in reversed(lines) if newest_first else lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if key is None or row.get("run_key") == key:
            yield row


def last_result(trial_dir: str) -> dict[str, Any]:
    """The last result Tune recorded for a trial (see `_result_rows`); {} if none yet."""
    return next(_result_rows(trial_dir, newest_first=True), {})


def all_results(trial_dir: str) -> list[dict[str, Any]]:
    """Every result Tune recorded for a trial, in order (see `_result_rows`)."""
    return list(_result_rows(trial_dir))


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


def stored_trials(path: str) -> list[dict[str, Any]]:
    """Every trial of the sweep at `path` as stored when it started: [{"flat", "run_key"}];
    [] for a sweep started before `trials.json` existed."""
    location = store.join(path, TRIALS_FILE)
    if not store.exists(location):
        return []
    return json.loads(store.read_text(location))


def trial_entries(configs: Sequence[TrialConfig]) -> list[dict[str, Any]]:
    """The entries trials.json stores for configs that are each their own trial."""
    return [{"flat": c.to_flat(), "run_key": run_key(c)} for c in configs]


def write_stored_trials(path: str, configs: Sequence[TrialConfig]) -> list[dict[str, Any]]:
    """trials.json of a sweep of exactly these configs (each its own run key)."""
    entries = trial_entries(configs)
    write_trial_entries(path, entries)
    return entries


TRIAL_FILES = ("params.json", "result.json", "evaluations.json")  # what a reused trial copies


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
        ident = trial_identity(flat)
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


def copy_reused_trials(root: str, name: str, reused: Sequence[Mapping[str, Any]]) -> None:
    """A reused trial's record (params.json, result.json, evaluations.json) into this
    sweep's folder, so that its status, summary and report read it like its own; the
    checkpoint stays where its sweep wrote it (result.json names it)."""
    for e in reused:
        src = store.join(root, e["reused_from"], e["run_key"])
        dst = store.join(root, name, e["run_key"])
        for f in TRIAL_FILES:
            if store.exists(store.join(src, f)):
                store.write_text(store.join(dst, f), store.read_text(store.join(src, f)))
            elif f == "result.json" and member_group(src):  # a group member's own rows
                rows = "".join(json.dumps(r) + "\n" for r in all_results(src))
                store.write_text(store.join(dst, f), rows)


def write_trial_entries(path: str, entries: Sequence[Mapping[str, Any]]) -> None:
    """trials.json: every trial of the sweep (the reused ones name their sweep)."""
    store.write_text(store.join(path, TRIALS_FILE), json.dumps(list(entries), default=list))


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
