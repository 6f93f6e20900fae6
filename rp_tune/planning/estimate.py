"""What a sweep will cost before it runs: device-hours per trial from the dense training
FLOPs at an assumed rate, or at the speed the finished trials under the results root
measured; the dry run's trial table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rp_tune.config import (
    TrialConfig,
    from_flat,
    run_key,
    trial_epochs,
)
from rp_tune.core import storage as store
from rp_tune.core.model_names import input_size
from rp_tune.models import build_model
from rp_tune.planning.records import (
    TRIALS_FILE,
    is_finished,
    last_result,
    stored_trials,
)
from rp_tune.planning.space import training_images


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
