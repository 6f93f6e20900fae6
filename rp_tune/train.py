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
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import dst, metrics
from .config import ConfigError, TrialConfig, from_flat, ood_sets, run_key
from .data import (
    STATS,
    DataError,
    DeviceLoader,
    Normalize,
    derived_seed,
    image_folder,
    imagenet_loaders,
    load_arrays,
    local_data_root,
    read_split,
)
from .masks import Masks, density_report, format_report
from .models import build_model, input_kind, layer_specs
from .sparsity import SCHEMES, DensityPlan, check_no_empty_layers, layer_densities

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
MASKS_FILE = "masks.parquet"
HISTORY_FILE = "history.json"
GRAD_FLOW_FILE = "grad_flow.csv"
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
        Masks.load(folder / MASKS_FILE)
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


def _load_data(cfg: TrialConfig, device: torch.device, rank: int, world: int) -> _Data:
    t, e = cfg.train, cfg.evaluation
    if cfg.data.name == "imagenet":
        tr, va, te, classes = imagenet_loaders(
            cfg.data, t.batch_size, e.batch_size, cfg.seed, rank, world
        )
        return _Data(tr, va, te, classes, len(tr), resident=False, test_full=te)
    arrays = load_arrays(cfg.data, cfg.seed).to(device)
    cl = device.type == "cuda" and t.channels_last
    kw = dict(seed=cfg.seed, rank=rank, world=world, channels_last=cl)
    train = DeviceLoader(*arrays.train, t.batch_size, train=True, **kw)
    val = DeviceLoader(*arrays.val, e.batch_size, train=False, **kw)
    test = DeviceLoader(*arrays.test, e.batch_size, train=False, **kw)
    full = DeviceLoader(*arrays.test, e.batch_size, train=False, seed=cfg.seed, channels_last=cl)
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
    """The saliency batch, normalized as training sees it, seeded by the trial seed.

    snip: `score_batch` images; grasp: `grasp_per_class` images of every class (GraSP's
    class-balanced batch, 10 per class in Wang et al. 2020). Image-folder data (ImageNet) give
    the first training batch of this rank's shard instead.
    """
    if not data.resident:
        if cfg.sparsity.scheme == "grasp":
            log.warning(
                "grasp on an image folder scores the first training batch of rank 0, not "
                "%d images per class (sparsity.grasp_per_class)",
                cfg.sparsity.grasp_per_class,
            )
        x, y = next(iter(data.train))
        return normalize(x.to(device)), y.to(device)
    images, labels = data.train.images, data.train.labels
    g = torch.Generator().manual_seed(derived_seed(cfg.seed, "score-batch"))
    order = torch.randperm(len(labels), generator=g).to(labels.device)
    if cfg.sparsity.scheme == "grasp":
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


def run_trial(
    cfg: TrialConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str | os.PathLike | None = None,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    keep_checkpoints: int = 2,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train one trial; returns the final metrics.

    out_dir: where checkpoints (`checkpoints/epoch_NNNN/`) and `masks.parquet` go.
    resume: a checkpoint folder to continue from (see `latest_checkpoint`).
    on_epoch(metrics, checkpoint_dir): called on every rank after every epoch (once more, for
        the last epoch, when resuming a run that had finished); checkpoint_dir
      is the folder written this epoch (None on epochs without a checkpoint, and on ranks > 0).
    stop_after: stop (as if interrupted) after this many epochs; for tests and debugging.
    """
    out_dir = Path(out_dir)
    device = pick_device(cfg, device)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    t = cfg.train
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")

    def autocast():
        if not use_bf16:
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    data = _load_data(cfg, device, rank, world)  # DataError here: nothing trained yet
    ood = _ood_sources(cfg)  # likewise: an OoD set the trial needs is there, or it stops now
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, "init"))
        model = build_model(cfg.model.name, data.num_classes)
    model.to(device)
    if device.type == "cuda" and t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalize(cfg.data.name).to(device)

    ckpt = None
    if resume is not None:
        path = Path(resume) / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["run_key"] != run_key(cfg):
            raise ValueError(
                f"checkpoint {resume} belongs to run {ckpt['run_key']!r}, not {run_key(cfg)!r}"
            )
        masks = Masks.load(Path(resume) / MASKS_FILE, model)
    else:
        masks = _draw_masks(cfg, model, data, device, normalize)
    masks.bind(model)
    masks.apply_()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        masks.save(out_dir / MASKS_FILE)
        log.info(
            "masks (%s, density %.4f):\n%s",
            cfg.sparsity.scheme,
            masks.density(),
            format_report(density_report(masks, model)),
        )

    train_model = wrap_model(model) if wrap_model is not None else model
    if t.compile:
        train_model = torch.compile(train_model)
    optimizer = make_optimizer(model, cfg)
    steps = data.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    start_epoch, best = 0, {"val_acc": -1.0, "epoch": -1, "state": None}
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best, history = ckpt["epoch"], ckpt["best"], ckpt["history"]
        log.info("resumed %s at epoch %d from %s", run_key(cfg), start_epoch, resume)

    label_smoothing = t.label_smoothing
    ev = cfg.evaluation
    grad_flow: list[list[float]] = ckpt.get("grad_flow", []) if ckpt is not None else []
    masked_weights, float_masks = masks.bound()
    sp = cfg.sparsity
    dynamic = sp.mode == "dynamic" and sp.density < 1.0
    total_steps = t.epochs * steps
    dst_state = ckpt.get("dst") if ckpt is not None else None
    if dynamic:
        # weights ever active (in-time over-parameterisation), on the device
        ever = (
            [e.to(device) for e in dst_state["ever"]]
            if dst_state
            else [f.detach() > 0 for f in float_masks]
        )
        dst_updates: list[list[float]] = list(dst_state["updates"]) if dst_state else []
    end_epoch = t.epochs if stop_after is None else min(t.epochs, start_epoch + stop_after)
    if ckpt is not None and start_epoch >= t.epochs and history and on_epoch is not None:
        # The run had finished, but its driver may not have seen the last epoch (a sweep
        # stopped between Train's last report and Tune's record of it): hand it over again,
        # with its checkpoint, so the trial ends finished with its final metrics.
        log.info("%s had finished: reporting its last epoch again", run_key(cfg))
        on_epoch(dict(history[-1]), Path(resume) if rank == 0 else None)
    for epoch in range(start_epoch, end_epoch):
        train_model.train()
        t0 = time.perf_counter()
        stats = torch.zeros(3, device=device, dtype=torch.float64)
        flow: list[tuple[int, torch.Tensor]] = []
        for i, (x, y) in enumerate(_batches(data.train, epoch, device, data.resident)):
            with autocast():
                logits = train_model(normalize(x))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step = epoch * steps + i
            if ev.grad_flow_every and step < ev.grad_flow_steps and step % ev.grad_flow_every == 0:
                grads = [w.grad for w in masked_weights]
                flow.append((step, metrics.kept_grad_norm(grads, float_masks)))
            optimizer.step()
            scheduler.step()
            masks.apply_()
            if dynamic and dst.is_update_step(
                step, sp.update_frequency, total_steps, sp.stop_at, sp.drop_schedule
            ):
                rate = dst.death_rate(
                    step,
                    total_steps,
                    sp.death_rate,
                    sp.death_rate_final,
                    schedule=sp.drop_schedule,
                    stop_at=sp.stop_at,
                )
                gen = torch.Generator(device=device).manual_seed(
                    derived_seed(cfg.seed, "dst", step)
                )
                momenta = [
                    optimizer.state.get(w, {}).get("momentum_buffer") for w in masked_weights
                ]
                upd = dst.update_masks_(
                    masked_weights,
                    float_masks,
                    [w.grad for w in masked_weights],
                    rate,
                    sp.growth,
                    gen,
                    momenta,
                )
                for e, f in zip(ever, float_masks):
                    e |= f.detach() > 0
                dst_updates.append([step, rate, upd.changed])
            stats[0] += loss.detach().double() * len(y)
            stats[1] += (logits.detach().argmax(1) == y).sum()
            stats[2] += len(y)
        loss_sum, correct, n = all_sum(stats).tolist()  # the one host sync of the epoch
        grad_flow.extend([step, float(v)] for step, v in flow)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = evaluate(model, normalize, data.val, device, data.resident, autocast, with_ece=ev.ece)
        val_seconds = time.perf_counter() - t1
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n,
            "train_acc": correct / n,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "images_per_second": n / seconds,
        }
        if val["n"] > 0:  # no validation split (data.val_fraction=0): no val metrics at all
            row.update(val_loss=val["loss"], val_acc=val["acc"], val_seconds=val_seconds)
            if ev.ece and "ece" in val:
                row["val_ece"] = val["ece"]
        if dynamic:
            masks.sync_from_bound()
            this_epoch = [u for u in dst_updates if epoch * steps <= u[0] < (epoch + 1) * steps]
            row["dst_updates"] = len(this_epoch)
            row["dst_changed"] = sum(u[2] for u in this_epoch)
            row["death_rate"] = this_epoch[-1][1] if this_epoch else 0.0
            row["itop_rate"] = sum(int(e.sum()) for e in ever) / masks.total()
        if val["n"] > 0 and val["acc"] > best["val_acc"]:
            best = {
                "val_acc": val["acc"],
                "epoch": epoch + 1,
                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        last = epoch + 1 == t.epochs
        if last:
            t2 = time.perf_counter()
            row.update(
                _final(
                    cfg,
                    model,
                    normalize,
                    data,
                    device,
                    autocast,
                    best,
                    masks,
                    images_seen=t.epochs * steps * t.batch_size * world,
                    ood=ood,
                )
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["final_eval_seconds"] = time.perf_counter() - t2
        history.append(dict(row))
        ckpt_dir = None
        if (epoch + 1) % t.checkpoint_every == 0 or last or epoch + 1 == end_epoch:
            if rank == 0:
                ckpt_dir = _save_checkpoint(
                    out_dir,
                    cfg,
                    epoch + 1,
                    model,
                    optimizer,
                    scheduler,
                    masks,
                    best,
                    history,
                    grad_flow,
                    keep_checkpoints,
                    extra=(
                        {"dst": {"ever": [e.cpu() for e in ever], "updates": dst_updates}}
                        if dynamic
                        else {}
                    ),
                )
        log.info(
            "%s epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.4g  "
            "%.1fs  %.0f img/s%s",
            run_key(cfg),
            epoch + 1,
            t.epochs,
            row["train_loss"],
            row["train_acc"],
            row.get("val_loss", float("nan")),
            row.get("val_acc", float("nan")),
            row["lr"],
            seconds,
            row["images_per_second"],
            f"  test acc {row['test_acc']:.4f}" if last else "",
        )
        if on_epoch is not None:
            on_epoch(row, ckpt_dir)
    if end_epoch < t.epochs:
        return {"epoch": end_epoch, "stopped": True, "history": history}
    return {**history[-1], "history": history, "grad_flow": grad_flow, "run_key": run_key(cfg)}


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
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    specs = layer_specs(model)
    kept: list[Any] = [None]
    if rank == 0:
        kwargs: dict[str, Any] = {}
        if s.scheme == "erk_plus":
            kwargs["fc_density"] = s.fc_density
        if SCHEMES[s.scheme].needs_model and s.density < 1.0:
            kwargs["model"] = model
            if SCHEMES[s.scheme].needs_batch:
                kwargs["batch"] = _score_batch(cfg, data, device, normalize)
            else:
                size = 32 if input_kind(cfg.model.name) == "cifar" else cfg.data.image_size
                kwargs["input_shape"] = (3, size, size)
        kept = [layer_densities(s.scheme, specs, s.density, **kwargs).kept]
    if distributed:
        dist.broadcast_object_list(kept, src=0)
    plan = DensityPlan(s.scheme, s.density, tuple(specs), tuple(kept[0]))
    try:
        check_no_empty_layers(plan, s.allow_empty_layers)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Masks.random(plan, cfg.seed, sampling=s.sampling)


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
    if name == "gaussian":
        mean, std = STATS["cifar10"]
        g = torch.Generator().manual_seed(derived_seed(cfg.seed, "gaussian-ood"))
        source = (metrics.gaussian_noise_images(n_in, mean, std, g) * 255).round().to(torch.uint8)
    if isinstance(source, torch.Tensor):
        labels = torch.zeros(len(source), dtype=torch.long, device=device)
        return DeviceLoader(source.to(device), labels, e_bs, train=False), True
    from torch.utils.data import DataLoader

    return DataLoader(source, e_bs, num_workers=cfg.data.num_workers), False


def _final(
    cfg, model, normalize, data, device, autocast, best, masks, images_seen: int, ood
) -> dict[str, Any]:
    """End-of-trial metrics on the full test set (every rank computes the same numbers)."""
    ev = cfg.evaluation
    test = data.test_full
    logits, labels = _logits(model, normalize, test, device, data.resident, autocast)
    out: dict[str, Any] = {
        "test_acc": metrics.accuracy(logits, labels),
        "test_loss": metrics.nll(logits, labels),
        "achieved_density": masks.density(),
    }
    if best["epoch"] > 0:  # model selection only where there is a validation split
        out.update(best_val_acc=best["val_acc"], best_epoch=best["epoch"])
    if ev.ece:
        out["test_ece"] = metrics.ece(logits, labels)
    if best["state"] is not None:
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(best["state"])
        bl, by = _logits(best_model, normalize, test, device, data.resident, autocast)
        out["test_acc_best_val"] = metrics.accuracy(bl, by)
        out["test_loss_best_val"] = metrics.nll(bl, by)
    if ev.fgsm:
        model.eval()

        def forward(px: torch.Tensor) -> torch.Tensor:
            with autocast():
                return model(normalize(px))

        correct, n = torch.zeros((), device=device), 0
        for x, y in _batches(test, 0, device, data.resident):
            adv = metrics.fgsm(forward, x, y, ev.fgsm_eps)
            with torch.no_grad():
                correct += (forward(adv).argmax(1) == y).sum()
            n += len(y)
        out["fgsm_acc"] = correct.item() / max(n, 1)
    if ood:
        in_scores = metrics.max_softmax(logits)
        for name, source in ood.items():
            loader, resident = _ood_loader(name, source, cfg, len(labels), device)
            ood_logits, _ = _logits(model, normalize, loader, device, resident, autocast)
            out[f"ood_auroc_{name}"] = metrics.ood_auroc(in_scores, metrics.max_softmax(ood_logits))
        out["ood_used"] = ",".join(ood)
    size = 32 if input_kind(cfg.model.name) == "cifar" else cfg.data.image_size
    densities = {n: int(m.sum()) / m.numel() for n, m in masks.masks.items()}
    out.update(metrics.cost(model, densities, (3, size, size), images_seen))
    return out


def _save_checkpoint(
    out_dir: Path,
    cfg: TrialConfig,
    epoch: int,
    model,
    optimizer,
    scheduler,
    masks: Masks,
    best,
    history,
    grad_flow,
    keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoints/epoch_NNNN atomically (temp folder, then rename); keep the last `keep`."""
    root = out_dir / "checkpoints"
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".tmp_epoch_{epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "run_key": run_key(cfg),
            "config": cfg.to_flat(),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "best": best,
            "history": history,
            "grad_flow": grad_flow,
            **(extra or {}),
        },
        tmp / CHECKPOINT_FILE,
    )
    masks.save(tmp / MASKS_FILE)
    # readable copies for trackers and reports, which should not need to unpickle state.pt
    (tmp / HISTORY_FILE).write_text(json.dumps(history, default=float))
    (tmp / GRAD_FLOW_FILE).write_text(
        "step,kept_grad_norm\n" + "".join(f"{int(a)},{b!r}\n" for a, b in grad_flow)
    )
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
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        flat[key.strip()] = value.strip()
    return from_flat(flat)


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
    resume = latest_checkpoint(out) if args.resume else None
    if args.resume and resume is None:
        log.info("no checkpoint under %s: starting from scratch", out)
    try:
        result = run_trial(cfg, out, resume=resume, device=args.device)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = ("test_acc", "test_acc_best_val", "best_val_acc", "best_epoch", "achieved_density")
    print("  ".join(f"{k}={result[k]:.4g}" for k in keys if k in result))
    print(f"output: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
