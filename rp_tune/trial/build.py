"""Building a trial from its config: device, numerics, data (fails fast on a missing or corrupt
root), OoD sets, seeded model, layer-wise densities (scheme) and exact random masks applied
at init, the sparse-training method, optimizer and schedule.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rp_tune.config import ConfigError, TrialConfig, layer_density_map
from rp_tune.core.layout import MASKS_FILE
from rp_tune.core.model_names import input_size
from rp_tune.core.seeds import derived_seed
from rp_tune.data import DeviceLoader, Normalize, dataset_record, imagenet_loaders, load_arrays
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
from rp_tune.sparsity.masks import Masks, density_report, format_report
from rp_tune.trial import metrics
from rp_tune.trial.checkpoints import checkpoint_masks_file
from rp_tune.trial.evaluation import ood_sources
from rp_tune.trial.state import Trial, TrialData

log = logging.getLogger(__name__)


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


def load_data(
    cfg: TrialConfig,
    device: torch.device,
    rank: int,
    world: int,
    shared: dict[Any, Any] | None = None,
) -> TrialData:
    """The trial's loaders. `shared` (a trial group's) holds the device arrays already read,
    keyed by data config and data seed, so K members of one data set hold it once."""
    t, e = cfg.train, cfg.evaluation
    if cfg.data.name == "imagenet":
        tr, va, te, classes = imagenet_loaders(
            cfg.data, t.batch_size, e.batch_size, cfg.seed_of("data"), rank, world
        )
        return TrialData(tr, va, te, classes, len(tr), resident=False, test_full=te)
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
    return TrialData(
        train, val, test, arrays.num_classes, len(train), resident=True, test_full=full
    )


def score_batch(cfg: TrialConfig, data: TrialData, device: torch.device, normalize: nn.Module):
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
    rank 0. `shared_data`: see `load_data`."""
    device = pick_device(cfg, device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    bf16 = _numerics(cfg, device)
    data = load_data(cfg, device, rank, world, shared_data)  # DataError here: nothing trained yet
    ood = ood_sources(cfg)  # likewise: an OoD set the trial needs is there, or it stops now
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


def _model(cfg: TrialConfig, data: TrialData, device: torch.device) -> tuple[nn.Module, nn.Module]:
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
    data: TrialData,
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
        masks = draw_masks(cfg, model, data, device, normalize)
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


def _dataset_json(cfg: TrialConfig, data: TrialData) -> str:
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


def draw_masks(
    cfg: TrialConfig, model: nn.Module, data: TrialData, device: torch.device, normalize: nn.Module
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
                kwargs["batch"] = score_batch(cfg, data, device, normalize)
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
