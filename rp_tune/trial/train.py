"""The trial loop: one sparse-training trial, start to finish, from a TrialConfig. Knows nothing
of Ray or MLflow.

    result = run_trial(cfg, out_dir="runs/x", on_epoch=callback)

Phases, each a function here or in its own module: build the trial (`build.setup`: data,
model, masks, method, optimizer), restore a checkpoint (`checkpoints.restore`), then per
epoch: train with the masks re-applied after every optimizer step (one fused multiply),
validate, checkpoint (`checkpoints.save_checkpoint`), report; after the last epoch the final
evaluation (test accuracy of the final model and of the best-validation epoch, and every
registered test metric). Batches of an epoch are a pure function of (seed, epoch), so a run
resumed from epoch k continues exactly as an unbroken one.

DDP: with torch.distributed initialised, each rank trains its shard of every epoch; pass
`wrap_model` (e.g. Ray Train's `prepare_model`) to wrap the model after the masks are bound.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rp_tune.config import TrialConfig, run_key
from rp_tune.core.model_names import input_size
from rp_tune.trial import metrics
from rp_tune.trial.build import setup
from rp_tune.trial.checkpoints import (
    CheckpointError,
    read_checkpoint,
    restore,
    resume_state,
    save_checkpoint,
)
from rp_tune.trial.evaluation import all_sum, batches, evaluate, loader_logits, ood_loader
from rp_tune.trial.machine import environment
from rp_tune.trial.state import Trial

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any], Path | None], None]


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
    state = resume_state(resume, key) if resume is not None else None
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
    for i, (x, y) in enumerate(batches(t.data.train, epoch, t.device, t.data.resident)):
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


def final_evaluation(trial: Trial) -> dict[str, Any]:
    """End-of-trial metrics on the full test set (every rank computes the same numbers):
    every registered test-logit metric that applies (`metrics.METRICS`), the best-validation
    model's accuracy and NLL, FGSM, OoD ROC-AUC, achieved density and cost."""
    t, cfg, ev = trial, trial.cfg, trial.cfg.evaluation
    t0 = time.perf_counter()
    test, resident = t.data.test_full, t.data.resident
    logits, labels = loader_logits(t.model, t.normalize, test, t.device, resident, t.autocast)
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
        bl, by = loader_logits(best_model, t.normalize, test, t.device, resident, t.autocast)
        out["test_acc_best_val"] = metrics.accuracy(bl, by)
        out["test_loss_best_val"] = metrics.nll(bl, by)
    if ev.fgsm:
        t.model.eval()

        def forward(px: torch.Tensor) -> torch.Tensor:
            with t.autocast():
                return t.model(t.normalize(px))

        correct, n = torch.zeros((), device=t.device), 0
        for x, y in batches(test, 0, t.device, resident):
            adv = metrics.fgsm(forward, x, y, ev.fgsm_eps)
            with torch.no_grad():
                correct += (forward(adv).argmax(1) == y).sum()
            n += len(y)
        out["fgsm_acc"] = correct.item() / max(n, 1)
    if t.ood:
        in_scores = metrics.max_softmax(logits)
        for name, source in t.ood.items():
            loader, res = ood_loader(name, source, cfg, len(labels), t.device)
            ood_logits, _ = loader_logits(t.model, t.normalize, loader, t.device, res, t.autocast)
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
