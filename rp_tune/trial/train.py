"""One sparse-training trial, start to finish, from a TrialConfig. Knows nothing of Ray or MLflow.

    result = run_trial(cfg, out_dir="runs/x", on_epoch=callback)

Order of work: data (fails fast on a missing or corrupt root), model (seeded init), layer-wise
densities (scheme), exact random masks applied at init, then per epoch: train with masks
re-applied after every optimizer step (one fused multiply), validate, checkpoint, report.
At the end: test accuracy of the final model and of the best-validation epoch.

A checkpoint holds model, optimizer, scheduler, masks, all RNG states, epoch and the best-
validation state; batches of an epoch are a pure function of (seed, epoch), so a run resumed
from epoch k continues exactly as an unbroken one (bit-for-bit on CPU in deterministic mode).

DDP: with torch.distributed initialised, each rank trains its shard of every epoch; pass
`wrap_model` (e.g. Ray Train's `prepare_model`) to wrap the model after the masks are bound.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rp_tune.config import (
    ConfigError,
    TrialConfig,
    from_flat,
    layer_density_map,
    ood_sets,
    parse_set,
    run_key,
)
from rp_tune.core.layout import (
    ARTIFACTS_DIR,
    CHECKPOINT_FILE,
    DENSITY_REPORT_FILE,
    GRAD_FLOW_FILE,
    HISTORY_FILE,
    MASKS_FILE,
    WEIGHTS_FILE,
)
from rp_tune.core.model_names import input_size
from rp_tune.core.seeds import derived_seed
from rp_tune.data import (
    STATS,
    DataError,
    DeviceLoader,
    Normalize,
    dataset_record,
    image_folder,
    imagenet_loaders,
    load_arrays,
    local_data_root,
    read_split,
)
from rp_tune.methods import from_start
from rp_tune.methods import method as method_row
from rp_tune.methods.base import SparseTraining
from rp_tune.models import build_model, layer_specs
from rp_tune.sparsity import (
    SCHEMES,
    DensityPlan,
    check_no_empty_layers,
    layer_densities,
    layer_overrides,
    scheme_options,
)
from rp_tune.sparsity.masks import Masks, density_report, format_report, report_table
from rp_tune.trial import metrics
from rp_tune.trial.machine import environment

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any], Path | None], None]


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def pick_device(cfg: TrialConfig, device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    gpus = cfg.resources.gpus_per_worker
    if (gpus is None or gpus > 0) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def make_optimizer(model: nn.Module, cfg: TrialConfig) -> torch.optim.SGD:
    """SGD; without bn_weight_decay, BatchNorm and bias parameters get no weight decay."""
    t = cfg.train
    if t.bn_weight_decay:
        groups = [{"params": list(model.parameters()), "weight_decay": t.weight_decay}]
    else:
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)


def lr_factor(step: int, steps_per_epoch: int, cfg: TrialConfig) -> float:
    """Linear warmup over warmup_epochs, then x gamma at each milestone epoch (per step)."""
    t = cfg.train
    warm = t.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    epoch = step // steps_per_epoch
    return t.gamma ** sum(epoch >= m for m in t.milestones)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read back (truncated, damaged, not ours)."""


def read_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """The state of a checkpoint folder, after checking that all of it reads: `state.pt`
    (model, optimizer, epoch, run key) and `masks.parquet` (its checksums); CheckpointError
    naming the folder and the problem otherwise."""
    folder = Path(folder)
    try:
        state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, unpickling error, missing file
        raise CheckpointError(f"{folder / CHECKPOINT_FILE}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / CHECKPOINT_FILE}: not a trial checkpoint")
    missing = [k for k in ("run_key", "epoch", "model", "optimizer") if k not in state]
    if missing:
        raise CheckpointError(f"{folder / CHECKPOINT_FILE}: not a trial checkpoint ({missing})")
    try:
        Masks.load(checkpoint_masks_file(folder))
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    return state


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest `checkpoints/epoch_NNNN` folder under out_dir that reads back, or None;
    a newer one that does not is logged by path and passed over."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for folder in sorted(root.glob("epoch_*"), reverse=True):
        try:
            read_checkpoint(folder)
            return folder
        except CheckpointError as e:
            log.warning("checkpoint cannot be read, using an older one: %s", e)
    return None


@dataclass
class _Data:
    train: Any
    val: Any
    test: Any
    num_classes: int
    steps: int
    resident: bool  # tensors on the device (DeviceLoader) vs DataLoader
    test_full: Any = None  # the whole test set on every rank (final metrics)


def _load_data(
    cfg: TrialConfig,
    device: torch.device,
    rank: int,
    world: int,
    shared: dict[Any, Any] | None = None,
) -> _Data:
    """The trial's loaders. `shared` (a trial group's) holds the device arrays already read,
    keyed by data config and data seed, so K members of one data set hold it once."""
    t, e = cfg.train, cfg.evaluation
    if cfg.data.name == "imagenet":
        tr, va, te, classes = imagenet_loaders(
            cfg.data, t.batch_size, e.batch_size, cfg.seed_of("data"), rank, world
        )
        return _Data(tr, va, te, classes, len(tr), resident=False, test_full=te)
    cache_key = (cfg.data, cfg.seed_of("data"), str(device))
    if shared is not None and cache_key in shared:
        arrays = shared[cache_key]
    else:
        arrays = load_arrays(cfg.data, cfg.seed_of("data")).to(device)
        if shared is not None:
            shared[cache_key] = arrays
    cl = device.type == "cuda" and t.channels_last
    kw = dict(seed=cfg.seed_of("data"), rank=rank, world=world, channels_last=cl)
    train = DeviceLoader(*arrays.train, t.batch_size, train=True, **kw)
    val = DeviceLoader(*arrays.val, e.batch_size, train=False, **kw)
    test = DeviceLoader(*arrays.test, e.batch_size, train=False, **kw)
    full = DeviceLoader(
        *arrays.test, e.batch_size, train=False, seed=cfg.seed_of("data"), channels_last=cl
    )
    return _Data(train, val, test, arrays.num_classes, len(train), resident=True, test_full=full)


def _batches(loader: Any, epoch: int, device: torch.device, resident: bool):
    if resident:
        yield from loader.epoch(epoch)
        return
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _score_batch(cfg: TrialConfig, data: _Data, device: torch.device, normalize: nn.Module):
    """The saliency batch, normalized as training sees it, seeded by the mask seed.

    snip: `score_batch` images; grasp: `grasp_per_class` images of every class (GraSP's
    class-balanced batch, 10 per class in Wang et al. 2020). Image-folder data (ImageNet) give
    the first training batch of this rank's shard instead.
    """
    if not data.resident:
        if SCHEMES[cfg.sparsity.scheme].batch == "per_class":
            log.warning(
                "grasp on an image folder scores the first training batch of rank 0, not "
                "%d images per class (sparsity.grasp_per_class)",
                cfg.sparsity.grasp_per_class,
            )
        x, y = next(iter(data.train))
        return normalize(x.to(device)), y.to(device)
    images, labels = data.train.images, data.train.labels
    g = torch.Generator().manual_seed(derived_seed(cfg.seed_of("mask"), "score-batch"))
    order = torch.randperm(len(labels), generator=g).to(labels.device)
    if SCHEMES[cfg.sparsity.scheme].batch == "per_class":
        per_class = cfg.sparsity.grasp_per_class
        picks = [order[labels[order] == c][:per_class] for c in range(data.num_classes)]
        idx = torch.cat(picks)
    else:
        idx = order[: cfg.sparsity.score_batch]
    with torch.no_grad():
        return normalize(images[idx].float().div(255)), labels[idx]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


@torch.no_grad()
def evaluate(
    model: nn.Module,
    normalize: nn.Module,
    loader: Any,
    device: torch.device,
    resident: bool,
    autocast,
    with_ece: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy, accuracy (summed across DDP ranks) and, if asked, this rank's ECE."""
    model.eval()
    stats = torch.zeros(3, device=device, dtype=torch.float64)
    outs = []
    for x, y in _batches(loader, 0, device, resident) if loader is not None else ():
        with autocast():
            logits = model(normalize(x))
        logits = logits.float()
        stats[0] += F.cross_entropy(logits, y, reduction="sum").double()
        stats[1] += (logits.argmax(1) == y).sum()
        stats[2] += len(y)
        if with_ece:
            outs.append((logits, y))
    loss, correct, n = all_sum(stats).tolist()
    out = {"loss": loss / max(n, 1), "acc": correct / max(n, 1), "n": int(n)}
    if with_ece and outs:
        out["ece"] = metrics.ece(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]))
    return out


# --------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------


@dataclass
class Trial:
    """What `setup` builds and every phase reads and advances: one trial in memory."""

    cfg: TrialConfig
    key: str  # the run key: the sweep's stored identity, or run_key(cfg)
    out_dir: Path
    device: torch.device
    rank: int
    world: int
    bf16: bool
    data: _Data
    ood: dict[str, Any]
    model: nn.Module
    train_model: nn.Module  # the model as trained: DDP-wrapped and/or compiled
    normalize: nn.Module
    masks: Masks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    flow: metrics.GradientFlow
    method: SparseTraining  # the sparse-training method's hooks (rp_tune.methods)
    best: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"val_acc": -1.0, "epoch": -1, "state": None}
    )
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    dataset: str = ""  # what it trains on, as JSON (`data.dataset_record`); rank 0 only
    # the dense model's FLOPs per image, total and per module (`metrics.layer_flops`), and
    # the training FLOPs of the epochs trained so far, each at its own densities
    layer_flops: tuple[float, dict[str, int]] | None = None  # set by `setup`
    train_flops: float = 0.0
    # False when resumed from a checkpoint whose epochs predate epoch_train_flops: the sum
    # would miss them, so the final count falls back to pricing every epoch at the end
    flops_complete: bool = True

    def autocast(self):
        """bf16 autocast where asked (precision bf16, or auto on CUDA), else nothing."""
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # --- what a sparse-training method asks of the trial (rp_tune.methods.base) ---------

    def reset_model_selection(self) -> None:
        """Forget the best-validation state: selection starts afresh (a new round or level)."""
        self.best = {"val_acc": -1.0, "epoch": -1, "state": None}

    def evaluate_test(self) -> dict[str, Any]:
        """Test loss and accuracy of the model as it is now."""
        return evaluate(
            self.model,
            self.normalize,
            self.data.test,
            self.device,
            self.data.resident,
            self.autocast,
        )

    def training_flops(self, densities: dict[str, float], images: int) -> float:
        """Training FLOPs of `images` images at per-layer `densities` (`metrics.cost`)."""
        size = (3, *input_size(self.cfg))
        return metrics.cost(self.model, densities, size, images, self.layer_flops)[
            "train_flops_sparse"
        ]


def run_trial(
    cfg: TrialConfig,
    out_dir: str | os.PathLike,
    *,
    key: str | None = None,
    resume: str | os.PathLike | None = None,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    keep_checkpoints: int = 2,
    stop_after: int | None = None,
    save_weights: bool = False,
) -> dict[str, Any]:
    """Train one trial; returns the final metrics.

    out_dir: where checkpoints (`checkpoints/epoch_NNNN/`) and `masks.parquet` go.
    key: the trial's identity (its run key) as the sweep stored it when it started; default
        `run_key(cfg)`. A sweep resumed by a newer release passes the stored one, so configs
        that gained fields with defaults still own their checkpoints.
    resume: a checkpoint folder to continue from (see `latest_checkpoint`).
    on_epoch(metrics, checkpoint_dir): called on every rank after every epoch (once more, for
        the last epoch, when resuming a run that had finished); checkpoint_dir is the folder
        written this epoch (None on epochs without a checkpoint, and on ranks > 0).
    stop_after: stop (as if interrupted) after this many epochs; for tests and debugging.
    save_weights: the final checkpoint's artifacts also hold the model's weights.
    """
    key = key or run_key(cfg)
    state = _resume_state(resume, key) if resume is not None else None
    trial = setup(cfg, Path(out_dir), key, device, wrap_model, masks_from=resume)
    if state is not None:
        restore(trial, state, resume)
    epochs = cfg.total_epochs
    end = epochs if stop_after is None else min(epochs, trial.start_epoch + stop_after)
    if state is not None and trial.start_epoch >= epochs and trial.history and on_epoch:
        # The run had finished, but its driver may not have seen the last epoch (a sweep
        # stopped between Train's last report and Tune's record of it): hand it over again,
        # with its checkpoint, so the trial ends finished with its final metrics.
        log.info("%s had finished: reporting its last epoch again", key)
        on_epoch(dict(trial.history[-1]), Path(resume) if trial.rank == 0 else None)
    for epoch in range(trial.start_epoch, end):
        trial.method.begin_epoch(trial, epoch)
        row = train_epoch(trial, epoch)
        row.update(validate(trial, epoch))
        row.update(trial.method.after_validation(trial, epoch))
        if epoch + 1 == epochs:
            row.update(final_evaluation(trial))
            row.update(time_spent([*trial.history, row]))
            row.update(environment(trial.device))  # env_*: versions, CUDA, the GPU model
        trial.history.append(dict(row))
        due = (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 in (epochs, end)
        folder = None
        if due and trial.rank == 0:
            folder = save_checkpoint(trial, epoch + 1, keep_checkpoints, save_weights)
        report(trial, row, folder, on_epoch)
    if end < epochs:
        return {"epoch": end, "stopped": True, "history": trial.history}
    return {
        **trial.history[-1],
        "history": trial.history,
        "grad_flow": trial.flow.state_dict(),
        "run_key": key,
    }


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


def setup(
    cfg: TrialConfig,
    out_dir: Path,
    key: str,
    device: str | torch.device | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    masks_from: str | os.PathLike | None = None,
    shared_data: dict[Any, Any] | None = None,
) -> Trial:
    """Data (fails fast: DataError before anything trains), OoD sets, seeded model, masks
    (drawn from the scheme, or read from the checkpoint being resumed), the sparse-training
    method, optimizer, schedule and gradient-flow state. Writes `out_dir/masks.parquet` on
    rank 0. `shared_data`: see `_load_data`."""
    device = pick_device(cfg, device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    bf16 = _numerics(cfg, device)
    data = _load_data(cfg, device, rank, world, shared_data)  # DataError here: nothing trained yet
    ood = _ood_sources(cfg)  # likewise: an OoD set the trial needs is there, or it stops now
    model, normalize = _model(cfg, data, device)
    method = method_row(cfg.sparsity.mode).load()(cfg)  # the sparse-training method's hooks
    masks = _masks(cfg, model, data, device, normalize, method, out_dir, key, masks_from, rank)
    method.start(model, masks, data.steps)  # before DDP wraps the model
    flops = metrics.layer_flops(model, (3, *input_size(cfg)))  # the bare model, once
    train_model = wrap_model(model) if wrap_model is not None else model
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    optimizer, scheduler = _optimizer(cfg, model, method, data.steps)
    ev = cfg.evaluation
    flow = metrics.GradientFlow(*masks.bound(), ev.grad_flow_every, ev.grad_flow_steps)
    return Trial(
        cfg, key, out_dir, device, rank, world, bf16, data, ood, model, train_model, normalize,
        masks, optimizer, scheduler, flow, method,
        dataset=_dataset_json(cfg, data) if rank == 0 else "", layer_flops=flops,
    )  # fmt: skip


def _numerics(cfg: TrialConfig, device: torch.device) -> bool:
    """Deterministic kernels where asked (cuBLAS's workspace on CUDA), else cuDNN's
    autotuner on CUDA; whether the trial computes in bf16 autocast."""
    t = cfg.train
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")


def _model(cfg: TrialConfig, data: _Data, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The model, initialized from the trial's init seed (the global RNG left as it was),
    on the device (channels_last on CUDA where asked), and the input normalization."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed_of("init"), "init"))
        model = build_model(cfg.model.name, data.num_classes)
    model.to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, Normalize(cfg.data.name).to(device)


def _masks(
    cfg: TrialConfig,
    model: nn.Module,
    data: _Data,
    device: torch.device,
    normalize: nn.Module,
    method: SparseTraining,
    out_dir: Path,
    key: str,
    masks_from: str | os.PathLike | None,
    rank: int,
) -> Masks:
    """The masks, drawn (and prepared by the method) or read from the checkpoint resumed,
    bound to the model and applied; saved as out_dir/masks.parquet on rank 0."""
    if masks_from is not None:
        masks = Masks.load(checkpoint_masks_file(Path(masks_from)), model)
    else:
        masks = _draw_masks(cfg, model, data, device, normalize)
        method.prepare_masks(masks, key)
    masks.bind(model)
    masks.apply_()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        masks.save(out_dir / MASKS_FILE)
        report = format_report(density_report(masks, model))
        log.debug("masks (%s, density %.4f):\n%s", cfg.sparsity.scheme, masks.density(), report)
    return masks


def _optimizer(
    cfg: TrialConfig, model: nn.Module, method: SparseTraining, steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """SGD over the model's parameters (or what the method trains instead, e.g. strong
    tickets' scores), and the recipe's schedule at the step the method says."""
    t = cfg.train
    params = method.parameters()
    if params is not None:
        optimizer = torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
        )
    else:
        optimizer = make_optimizer(model, cfg)
    schedule = lambda s: lr_factor(method.recipe_step(s, steps), steps, cfg)  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _dataset_json(cfg: TrialConfig, data: _Data) -> str:
    """The trial's dataset record (`data.dataset_record`) as JSON: examples per split (the
    whole sets, not one rank's shard) and the digest of the integrity manifest."""

    def examples(loader: Any) -> int:
        if loader is None:
            return 0
        return len(loader.labels) if data.resident else len(loader.dataset)

    sizes = {
        "train": examples(data.train),
        "val": examples(data.val),
        "test": examples(data.test_full),
    }
    try:  # what trackers show; never a reason for a trial to fail
        record = dataset_record(cfg.data, cfg.seed_of("data"), sizes, data.num_classes)
    except Exception as e:
        log.warning("no dataset record for %s (%s: %s)", cfg.data.name, type(e).__name__, e)
        return ""
    return json.dumps(record, sort_keys=True)


def _resume_state(resume: str | os.PathLike, key: str) -> dict[str, Any]:
    path = Path(resume) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["run_key"] != key:
        raise ValueError(f"checkpoint {resume} belongs to run {state['run_key']!r}, not {key!r}")
    return state


def restore(trial: Trial, state: dict[str, Any], folder: str | os.PathLike) -> None:
    """Model, optimizer, schedule, RNG, best-validation state, history, gradient flow and
    DST state from a checkpoint's state (its masks were read at setup)."""
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    trial.start_epoch, trial.best, trial.history = state["epoch"], state["best"], state["history"]
    trial.train_flops = sum(float(h.get("epoch_train_flops", 0.0)) for h in trial.history)
    trial.flops_complete = all("epoch_train_flops" in h for h in trial.history)
    if not trial.flops_complete:
        log.warning(
            "%s: its checkpoint's epochs carry no epoch_train_flops (an older "
            "release); train_flops_sparse will price every epoch at the final "
            "masks",
            trial.key,
        )
    trial.flow.load_state_dict(state.get("grad_flow", []))
    own = trial.method.state_key
    if own and state.get(own):
        trial.method.load_state_dict(state[own])
    log.info("resumed %s at epoch %d from %s", trial.key, trial.start_epoch, folder)


def train_epoch(trial: Trial, epoch: int) -> dict[str, Any]:
    """One pass over this rank's shard: forward, backward, gradient flow, SGD step, masks
    re-applied (one fused multiply), DST update; one host sync at the end (and one to count
    the kept weights for the FLOPs at the start and after each mask update)."""
    t, model, opt = trial, trial.train_model, trial.optimizer
    smoothing = t.cfg.train.label_smoothing
    model.train()
    t0 = time.perf_counter()
    stats = torch.zeros(3, device=t.device, dtype=torch.float64)
    lr_sum, steps = 0.0, 0  # the rates the epoch's steps trained at (a float each, no sync)
    rate, flops = step_flops(t), 0.0  # FLOPs per image at the current masks; the epoch's
    for i, (x, y) in enumerate(_batches(t.data.train, epoch, t.device, t.data.resident)):
        step = epoch * t.data.steps + i
        with t.autocast():
            logits = model(t.normalize(x))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.flow.after_backward(step)
        t.method.before_step()
        opt.step()
        lr_sum, steps = lr_sum + opt.param_groups[0]["lr"], steps + 1
        t.scheduler.step()
        t.method.apply_masks(t.masks)
        flops += rate * len(y)
        if t.method.after_step(step, opt):  # the masks changed after this step
            if t.method.dense_gradient_on_update:  # RigL's growth: the step cost 2 f(old) +
                flops += (t.layer_flops[0] - rate / 3) * len(y)  # f(dense), not 3 f(old)
            rate = step_flops(t)
        stats[0] += loss.detach().double() * len(y)
        stats[1] += (logits.detach().argmax(1) == y).sum()
        stats[2] += len(y)
    loss_sum, correct, n = all_sum(stats).tolist()  # the one host sync of the epoch
    t.flow.end_epoch()
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / n,
        "train_acc": correct / n,
        # the rate this epoch trained at, not the next one's (read after the last step, the
        # schedule has already moved on: with milestones (2, 3) epoch 2 would show 0.01)
        "lr": lr_sum / max(steps, 1),
        "epoch_seconds": seconds,
        "images_per_second": n / seconds,
        "epoch_train_flops": flops * t.world,  # every rank trains a shard of the same size
    }
    t.train_flops += row["epoch_train_flops"]
    row.update(t.method.end_epoch(t, epoch))
    return row


def step_flops(trial: Trial) -> float:
    """Training FLOPs of one image in a step at the trial's current masks
    (`metrics.train_flops_per_image`): 3 f(masks), or for strong-ticket scores, whose
    gradient covers the source, 2 f(subnetwork) + f(source). One host sync (the counts)."""
    assert trial.layer_flops is not None, "setup counts the model's FLOPs"
    total, per = trial.layer_flops
    names = list(trial.masks.masks)
    floats = trial.masks.bound()[1]  # current under DST, which syncs `masks` once per epoch
    kept = torch.stack([f.sum() for f in floats]).tolist() if floats else []
    densities = {n: k / f.numel() for n, k, f in zip(names, kept, floats)}
    grads = trial.method.gradient_densities()  # None: the masks'
    return metrics.train_flops_per_image(total, per, densities, grads)


def validate(trial: Trial, epoch: int) -> dict[str, Any]:
    """Validation loss, accuracy (and ECE) on the held-out split, and the best-validation
    state; nothing where there is no validation split (data.val_fraction=0)."""
    t, ev = trial, trial.cfg.evaluation
    t0 = time.perf_counter()
    val = evaluate(
        t.model, t.normalize, t.data.val, t.device, t.data.resident, t.autocast, with_ece=ev.ece
    )
    if val["n"] == 0:
        return {}
    row = {"val_loss": val["loss"], "val_acc": val["acc"], "val_seconds": time.perf_counter() - t0}
    if ev.ece and "ece" in val:
        row["val_ece"] = val["ece"]
    if val["acc"] > t.best["val_acc"]:
        t.best = {
            "val_acc": val["acc"],
            "epoch": epoch + 1,
            "state": {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()},
        }
    return row


def report(
    trial: Trial, row: dict[str, Any], folder: Path | None, on_epoch: EpochCallback | None
) -> None:
    """The epoch's one log line, and the row (with its checkpoint folder) to `on_epoch`."""
    unknown = metrics.unregistered(row)
    first, last = row["epoch"] == trial.start_epoch + 1, row["epoch"] == trial.cfg.total_epochs
    if unknown and trial.rank == 0 and (first or last):  # epoch metrics, then final ones
        log.warning("metrics not in rp_tune.trial.metrics.METRICS (not tracked): %s", unknown)
    log.info(
        "%s epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.4g  "
        "%.1fs  %.0f img/s%s",
        trial.key,
        row["epoch"],
        trial.cfg.total_epochs,
        row["train_loss"],
        row["train_acc"],
        row.get("val_loss", float("nan")),
        row.get("val_acc", float("nan")),
        row["lr"],
        row["epoch_seconds"],
        row["images_per_second"],
        f"  test acc {row['test_acc']:.4f}" if "test_acc" in row else "",
    )
    if on_epoch is not None:  # the first row of this process also says what it trains on
        on_epoch({**row, "dataset": trial.dataset} if first and trial.dataset else row, folder)


def _draw_masks(
    cfg: TrialConfig, model: nn.Module, data: _Data, device: torch.device, normalize: nn.Module
) -> Masks:
    """The trial's masks: the scheme's per-layer counts, then exact random positions.

    Under DDP every rank must train one and the same mask. Data-dependent schemes (snip,
    grasp) would score each rank's own batch, so the counts are computed on rank 0 only and
    broadcast; positions are then a pure function of (seed, layer name, count), equal on
    every rank.
    """
    s = cfg.sparsity
    # IMP draws its start mask, SLT its source
    density = s.start_density if from_start(s.mode) else s.density
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    specs = layer_specs(model)
    kept: list[Any] = [None]
    if rank == 0:
        kwargs: dict[str, Any] = scheme_options(s.scheme, s)
        if SCHEMES[s.scheme].needs_model and density < 1.0:
            kwargs["model"] = model
            if SCHEMES[s.scheme].needs_batch:
                kwargs["batch"] = _score_batch(cfg, data, device, normalize)
            else:
                kwargs["input_shape"] = (3, *input_size(cfg))
        try:
            overrides = layer_overrides(
                specs, layer_density_map(s.layer_density), s.classifier_density
            )
            kept = [layer_densities(s.scheme, specs, density, overrides=overrides, **kwargs).kept]
        except ValueError as e:  # overrides that do not fit this model or budget
            raise ConfigError(str(e)) from None
    if distributed:
        dist.broadcast_object_list(kept, src=0)
    plan = DensityPlan(s.scheme, density, tuple(specs), tuple(kept[0]))
    try:
        check_no_empty_layers(plan, s.allow_empty_layers)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Masks.random(plan, cfg.seed_of("mask"), sampling=s.sampling)


def _logits(model, normalize, loader, device, resident, autocast):
    """Logits and labels over a whole loader (eval mode, no grad), on the device."""
    model.eval()
    outs, labels = [], []
    with torch.no_grad():
        for x, y in _batches(loader, 0, device, resident):
            with autocast():
                outs.append(model(normalize(x)).float())
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def _ood_sources(cfg: TrialConfig) -> dict[str, Any]:
    """The OoD sets' test images, read at setup so a missing set fails the trial before it
    trains (DataError); uint8 NCHW on the CPU for small sets, an ImageFolder for ImageNet-O,
    None for Gaussian noise (made at the end). Which sets: `config.ood_sets`."""
    ev, out = cfg.evaluation, {}
    for name in ood_sets(cfg):
        if name == "gaussian":
            out[name] = None
        elif name == "imagenet_o":
            out[name] = image_folder(
                local_data_root(cfg.data.root, "imagenet_o") / "imagenet-o",
                cfg.data.image_size,
                train=False,
            )
        else:
            dcfg = dataclasses.replace(cfg.data, name=name, download=ev.ood_download, num_classes=0)
            key = "evaluation.ood_download"
            x, _, _ = read_split(dcfg, train=False, download_key=key, ood=True)
            out[name] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return out


def _ood_loader(name: str, source: Any, cfg: TrialConfig, n_in: int, device: torch.device):
    """(loader, resident) over an OoD set's images as [0, 1] pixels."""
    e_bs = cfg.evaluation.batch_size
    if name == "gaussian":  # CIFAR-10's statistics (Liu et al.), Tiny ImageNet's own at 64x64
        mean, std = STATS["tinyimagenet" if cfg.data.name == "tinyimagenet" else "cifar10"]
        g = torch.Generator().manual_seed(derived_seed(cfg.seed, "gaussian-ood"))
        noise = metrics.gaussian_noise_images(n_in, mean, std, g, size=input_size(cfg)[0])
        source = (noise * 255).round().to(torch.uint8)
    if isinstance(source, torch.Tensor):
        labels = torch.zeros(len(source), dtype=torch.long, device=device)
        return DeviceLoader(source.to(device), labels, e_bs, train=False), True
    from torch.utils.data import DataLoader

    return DataLoader(source, e_bs, num_workers=cfg.data.num_workers), False


def final_evaluation(trial: Trial) -> dict[str, Any]:
    """End-of-trial metrics on the full test set (every rank computes the same numbers):
    every registered test-logit metric that applies (`metrics.METRICS`), the best-validation
    model's accuracy and NLL, FGSM, OoD ROC-AUC, achieved density and cost."""
    t, cfg, ev = trial, trial.cfg, trial.cfg.evaluation
    t0 = time.perf_counter()
    test, resident = t.data.test_full, t.data.resident
    logits, labels = _logits(t.model, t.normalize, test, t.device, resident, t.autocast)
    out: dict[str, Any] = {
        m.name: m.of_test_logits(logits, labels)
        for m in metrics.METRICS.values()
        if m.of_test_logits is not None and (m.applies is None or m.applies(cfg))
    }
    out["achieved_density"] = t.masks.density()
    if t.best["epoch"] > 0:  # model selection only where there is a validation split
        out.update(best_val_acc=t.best["val_acc"], best_epoch=t.best["epoch"])
    if t.best["state"] is not None:
        best_model = copy.deepcopy(t.model)
        best_model.load_state_dict(t.best["state"])
        bl, by = _logits(best_model, t.normalize, test, t.device, resident, t.autocast)
        out["test_acc_best_val"] = metrics.accuracy(bl, by)
        out["test_loss_best_val"] = metrics.nll(bl, by)
    if ev.fgsm:
        t.model.eval()

        def forward(px: torch.Tensor) -> torch.Tensor:
            with t.autocast():
                return t.model(t.normalize(px))

        correct, n = torch.zeros((), device=t.device), 0
        for x, y in _batches(test, 0, t.device, resident):
            adv = metrics.fgsm(forward, x, y, ev.fgsm_eps)
            with torch.no_grad():
                correct += (forward(adv).argmax(1) == y).sum()
            n += len(y)
        out["fgsm_acc"] = correct.item() / max(n, 1)
    if t.ood:
        in_scores = metrics.max_softmax(logits)
        for name, source in t.ood.items():
            loader, res = _ood_loader(name, source, cfg, len(labels), t.device)
            ood_logits, _ = _logits(t.model, t.normalize, loader, t.device, res, t.autocast)
            out[f"ood_auroc_{name}"] = metrics.ood_auroc(in_scores, metrics.max_softmax(ood_logits))
        out["ood_used"] = ",".join(t.ood)
    densities = {n: int(m.sum()) / m.numel() for n, m in t.masks.masks.items()}
    images_seen = cfg.total_epochs * t.data.steps * cfg.train.batch_size * t.world
    out.update(metrics.cost(t.model, densities, (3, *input_size(cfg)), images_seen, t.layer_flops))
    if t.train_flops > 0 and t.flops_complete:  # every epoch at its own densities
        out["train_flops_sparse"] = t.train_flops
    out.update(t.method.final_metrics(t))
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    out["final_eval_seconds"] = time.perf_counter() - t0
    return out


def evaluate_again(
    cfg: TrialConfig, checkpoint: str | os.PathLike, device: str | torch.device | None = None
) -> dict[str, Any]:
    """The final evaluation of a finished trial once more, from its final checkpoint, with
    `cfg`'s evaluation settings (a new OoD set, another FGSM eps, top-5): the same model,
    masks and best-validation state as at the end of its training. CheckpointError when the
    folder is not the trial's final checkpoint."""
    folder = Path(checkpoint)
    state = read_checkpoint(folder)
    if int(state["epoch"]) != cfg.total_epochs:
        raise CheckpointError(
            f"{folder}: epoch {state['epoch']} of {cfg.total_epochs}, not the trial's final "
            "checkpoint"
        )
    with tempfile.TemporaryDirectory(prefix="rp_tune-evaluate-") as tmp:
        t = setup(cfg, Path(tmp), str(state["run_key"]), device, masks_from=folder)
        restore(t, state, folder)
        return final_evaluation(t)


def time_spent(history: list[dict[str, Any]]) -> dict[str, float]:
    """The trial's own time, from its epochs (the kept chain, across resumes):
    train_seconds = sum of epoch_seconds; eval_seconds = sum of val_seconds + the final
    evaluation. What else its wall-clock holds (worker starts, checkpoints, epochs lost to a
    failure) only the sweep sees: `rp_tune.planning.plan.trial_cost`."""
    train = sum(float(h.get("epoch_seconds", 0.0)) for h in history)
    evaluation = sum(float(h.get("val_seconds", 0.0)) for h in history)
    evaluation += float(history[-1].get("final_eval_seconds", 0.0)) if history else 0.0
    return {"train_seconds": train, "eval_seconds": evaluation}


def owned(state: dict[str, Any]) -> dict[str, Any]:
    """The state with every tensor that views a larger storage cloned: `torch.save` writes a
    view's whole storage, so a trial-group member's weights (views into the fused model's)
    would otherwise carry every member's."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.untyped_storage().nbytes() > v.nbytes:
            v = v.detach().clone()
        out[k] = v
    return out


def checkpoint_masks_file(folder: Path) -> Path:
    """A checkpoint's masks: `artifacts/masks.parquet` (checkpoints of releases before the
    artifacts folder kept it at the top: read either)."""
    new = folder / ARTIFACTS_DIR / MASKS_FILE
    return new if new.is_file() or not (folder / MASKS_FILE).is_file() else folder / MASKS_FILE


def save_checkpoint(trial: Trial, epoch: int, keep: int, save_weights: bool = False) -> Path:
    """Write checkpoints/epoch_NNNN atomically (temp folder, then rename); keep the last `keep`.

    `state.pt` holds what resuming needs (model, optimizer, schedule, RNG, best-validation
    state, history, gradient flow, DST state; read by `read_checkpoint`). `artifacts/` holds
    what trackers log, in open formats, so that they need not know `state.pt`: the masks
    (Parquet), the per-layer density report (CSV), the history (JSON), the gradient flow
    (CSV), and with save_weights on the last epoch the weights (`final_weights.pt`).
    """
    t = trial
    root = t.out_dir / "checkpoints"
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".tmp_epoch_{epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ARTIFACTS_DIR).mkdir(parents=True)
    torch.save(
        {
            "run_key": t.key,
            "config": t.cfg.to_flat(),
            "epoch": epoch,
            "model": owned(t.model.state_dict()),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "rng": rng_state(),
            "best": t.best,
            "history": t.history,
            "grad_flow": t.flow.state_dict(),
            **(
                {own: state}
                if (own := t.method.state_key) and (state := t.method.state_dict())
                else {}
            ),
        },
        tmp / CHECKPOINT_FILE,
    )
    art = tmp / ARTIFACTS_DIR
    t.masks.save(art / MASKS_FILE)
    pacsv.write_csv(report_table(density_report(t.masks, t.model)), art / DENSITY_REPORT_FILE)
    (art / HISTORY_FILE).write_text(json.dumps(t.history, default=float))
    (art / GRAD_FLOW_FILE).write_text(
        "step,kept_grad_norm\n" + "".join(f"{int(a)},{b!r}\n" for a, b in t.flow.history)
    )
    t.method.write_artifacts(t, art)
    if save_weights and epoch == t.cfg.total_epochs:
        torch.save(owned(t.model.state_dict()), art / WEIGHTS_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("epoch_*") if p != final)[: -max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rp_tune.train",
        description="Run one sparse-training trial without Ray (for debugging).",
    )
    p.add_argument("--model", default="cifar_resnet_20")
    p.add_argument("--scheme", default="erk")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--data", default="cifar10", help="cifar10, cifar100, svhn, imagenet, synthetic")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any flat config key, e.g. --set train.batch_size=256 (repeatable)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<run_key>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    flat: dict[str, Any] = {
        "model.name": args.model,
        "sparsity.scheme": args.scheme,
        "sparsity.density": args.density,
        "data.name": args.data,
        "seed": args.seed,
    }
    if args.epochs is not None:
        flat["train.epochs"] = args.epochs
    if args.data_root is not None:
        flat["data.root"] = args.data_root
    if args.data == "imagenet":
        flat["train.recipe"] = "imagenet"
    flat.update(parse_set(args.set))
    return from_flat(flat)


def _own_checkpoint(cfg: TrialConfig, out: Path, searched: bool) -> tuple[Path, str, Path | None]:
    """(folder, run key, checkpoint) to resume `cfg` from: the newest readable checkpoint in
    `out`, or, when `out` is the default `runs/<run key>` (searched), in the `runs/` folder of
    the same trial written by a release whose run keys differed (a config field added since):
    its stored config reads as `cfg` does, so it keeps the key it was saved under.
    ConfigError naming the differing keys for a checkpoint of another config in `out`."""
    from rp_tune.config import config_differences

    prefix = run_key(cfg).rsplit("-", 1)[0]  # the readable part: model, scheme, density, seed
    others = sorted(p for p in out.parent.glob(f"{prefix}-*") if p != out) if searched else []
    candidates = [out, *others]
    for folder in candidates:
        ckpt = latest_checkpoint(folder)
        if ckpt is None:
            continue
        state = read_checkpoint(ckpt)
        if state["run_key"] == run_key(cfg):
            return folder, state["run_key"], ckpt
        differ = config_differences([state.get("config", {})], [cfg])
        if not differ:
            log.info(
                "resuming %s, saved as %s by an earlier release", run_key(cfg), state["run_key"]
            )
            return folder, state["run_key"], ckpt
        if folder == out:
            raise ConfigError(
                f"the checkpoint {ckpt} is of another trial ({state['run_key']}); these keys "
                f"differ: {', '.join(differ)}; pass another --out or drop --resume"
            )
    return out, run_key(cfg), None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    args = _parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.resources.gpus_per_worker is None:  # the sweep's rule: a GPU where there is one
        cuda = torch.cuda.is_available() if args.device is None else "cuda" in args.device
        cfg = cfg.replace(**{"resources.gpus_per_worker": 1.0 if cuda else 0.0})
    out = Path(args.out or Path("runs") / run_key(cfg))
    key, resume = run_key(cfg), None
    if args.resume:
        try:
            out, key, resume = _own_checkpoint(cfg, out, searched=args.out is None)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if resume is None:
            log.info("no checkpoint under %s: starting from scratch", out)
    try:
        result = run_trial(cfg, out, key=key, resume=resume, device=args.device)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = ("test_acc", "test_acc_best_val", "best_val_acc", "best_epoch", "achieved_density")
    print("  ".join(f"{k}={result[k]:.4g}" for k in keys if k in result))
    print(f"output: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
