"""The measurements of Liu et al. 2022 (Appendix A) as pure functions: tensors in, numbers out.

Library choices:
- OoD ROC-AUC: scikit-learn's `roc_auc_score` (ties get half credit, the standard Mann-Whitney
  definition); it is already a dependency of MLflow and is the reference implementation.
- Dense FLOPs: torch's own `torch.utils.flop_counter.FlopCounterMode` (counts conv and matmul
  FLOPs as 2 * MACs, per module), so the count follows what torch actually runs.
- ECE is written here: it is one formula (Guo et al. 2017), and the libraries that have it
  (torchmetrics) would add a dependency for ten lines; it is tested against hand values.
- FGSM and the gradient-flow norm are a few tensor ops each, written here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EPOCH, FINAL = "epoch", "final"


@dataclass(frozen=True)
class Metric:
    """One metric a trial reports, declared once for the trial, tracking, report and console.

    name: the key in a trial's results (a `family` is a prefix: `ood_auroc_` covers
        `ood_auroc_cifar100`, `ood_auroc_svhn`, ...).
    when: "epoch" (every epoch, logged at step = epoch) or "final" (once, end of the trial).
    better: "higher", "lower" or None (a measurement, not a score: cost, time, counts).
    plotted: the report draws it against sparsity.
    column/fmt: its header and format in the console's summary table (None: not shown).
    of_test_logits: f(logits, labels) -> float, computed by the trial on the full test set,
        where `applies(cfg)` holds (None: always).
    step: what an epoch metric's step is in a tracker: "epoch", "round" (IMP's round
        records, which close a round's last epoch: step = the round, 0 = the start mask), or
        "iteration": the row holds [[training step, value], ...], one value per event of the
        epoch (GraNet's density after each update), each logged at its step (`step_series`).
    """

    name: str
    when: str
    label: str
    better: str | None = None
    plotted: bool = False
    column: str | None = None
    fmt: str = ".4f"
    family: bool = False
    of_test_logits: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    applies: Callable[[Any], bool] | None = None
    step: str = EPOCH


ROUND = "round"
ITERATION = "iteration"


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def top5_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose label is among the 5 largest logits (ImageNet's top-5)."""
    k = min(5, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy (negative log-likelihood of the true class)."""
    return F.cross_entropy(logits.float(), labels).item()


def ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error: sum_b |B_b|/n * |acc(B_b) - conf(B_b)|.

    conf = max softmax probability; 15 equal-width bins (lo, hi] on [0, 1], the first bin
    also holding conf = 0.
    """
    probs = logits.float().softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=conf.device)
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, bins - 1)
    n = len(labels)
    total = torch.zeros((), dtype=torch.float64, device=conf.device)
    for b in range(bins):
        sel = idx == b
        if sel.any():
            gap = (correct[sel].mean() - conf[sel].mean()).abs().double()
            total += sel.sum() / n * gap
    return total.item()


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """OoD score of Hendrycks & Gimpel 2017: the maximum softmax probability."""
    return logits.float().softmax(1).max(1).values


def ood_auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """ROC-AUC of telling in-distribution (positives) from OoD by score."""
    from sklearn.metrics import roc_auc_score

    y = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))])
    s = torch.cat([in_scores.detach().float().cpu(), out_scores.detach().float().cpu()])
    return float(roc_auc_score(y.numpy(), s.numpy()))


def gaussian_noise_images(
    n: int, mean: Sequence[float], std: Sequence[float], generator: torch.Generator, size: int = 32
) -> torch.Tensor:
    """n images of per-pixel N(mean_c, std_c^2), clipped to [0, 1] (CIFAR's OoD noise set)."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = torch.randn((n, len(mean), size, size), generator=generator) * s + m
    return x.clamp_(0, 1)


def fgsm(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 8 / 255,
) -> torch.Tensor:
    """x' = clip(x + eps * sign(grad_x CE(forward(x), y)), 0, 1) on [0, 1] pixels.

    `forward` maps pixels to logits (normalisation inside), with the model in eval mode.
    """
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(forward(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def kept_grad_norm(grads: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Effective gradient flow (Tessera et al. 2021): ||g restricted to kept weights||_2.

    Returns a 0-d tensor on the gradients' device (no host sync).
    """
    norms = torch._foreach_norm([g * m for g, m in zip(grads, masks)])
    return torch.linalg.vector_norm(torch.stack(norms))


def layer_flops(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module name) of one forward pass on one image, torch-counted."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    prefix = type(model).__name__ + "."
    per = {
        k[len(prefix) :]: int(sum(v.values()))
        for k, v in counter.get_flop_counts().items()
        if k.startswith(prefix)
    }
    return int(counter.get_total_flops()), per


def sparse_flops(total: float, per_layer: dict[str, int], densities: dict[str, float]) -> float:
    """Inference FLOPs per image at per-layer densities p_l: total - sum_l (1 - p_l) FLOPs_l
    over the masked layers l (`layer_flops`' total and per-module counts)."""
    return float(total) - sum((1.0 - d) * per_layer.get(n, 0) for n, d in densities.items())


def train_flops_per_image(
    total: float,
    per_layer: dict[str, int],
    densities: dict[str, float],
    grad_densities: dict[str, float] | None = None,
) -> float:
    """Training FLOPs of one image in one step, as RigL counts them (Evci et al. 2020: a
    sparse step costs 3 f_S, a RigL update step 2 f_S + f_D): the forward pass, the
    gradient of the activations and the gradient of the weights each cost one forward pass
    over the weights they touch:
        f(p) + f(p) + f(q),   f = `sparse_flops`,
    p the densities the step computes with, q those its weight gradient covers (default p:
    3 f(p)); q = 1 (dense) at a RigL or GraNet update step, q = the source's densities for
    strong-ticket scores, whose gradient covers every position of the source mask."""
    forward = sparse_flops(total, per_layer, densities)
    grads = forward if grad_densities is None else sparse_flops(total, per_layer, grad_densities)
    return 2.0 * forward + grads


def cost(
    model: nn.Module,
    densities: dict[str, float],
    input_shape: Sequence[int],
    train_images: int,
    flops: tuple[float, dict[str, int]] | None = None,
) -> dict[str, float]:
    """Parameter and FLOP counts, dense and sparse. `flops`: `layer_flops(model,
    input_shape)` where the caller has it already (a trial counts it once, at setup).

    Sparse inference FLOPs = dense - sum_l (1 - p_l) * FLOPs_l over masked layers l (conv and
    linear FLOPs scale with the layer density). Training FLOPs = 3 x inference FLOPs per image
    (forward + backward for activations and weights, the RigL convention) x images trained on.
    """
    modules = dict(model.named_modules())
    params_dense = sum(p.numel() for p in model.parameters())
    pruned = sum((1 - d) * modules[n].weight.numel() for n, d in densities.items())
    total, per = flops if flops is not None else layer_flops(model, input_shape)
    sparse = sparse_flops(total, per, densities)
    return {
        "params_dense": float(params_dense),
        "params_sparse": float(round(params_dense - pruned)),
        "flops_dense": float(total),
        "flops_sparse": float(sparse),
        "train_flops_dense": 3.0 * total * train_images,
        "train_flops_sparse": 3.0 * sparse * train_images,
    }


class GradientFlow:
    """Effective gradient flow of one trial: `kept_grad_norm` every `every` steps while
    step < `until` (Liu et al. 2022, Fig. 6 top), kept on the device until the epoch ends,
    so the loop never waits on the host for it.

    Call `after_backward(step)` between backward and the optimizer step, `end_epoch()` once
    per epoch; `history` is [[step, norm], ...] and is what a checkpoint stores.
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        every: int,
        until: int,
    ) -> None:
        self.weights, self.masks, self.every, self.until = weights, masks, every, until
        self.history: list[list[float]] = []
        self._pending: list[tuple[int, torch.Tensor]] = []

    def due(self, step: int) -> bool:
        return bool(self.every) and step < self.until and step % self.every == 0

    def after_backward(self, step: int, grads: Sequence[torch.Tensor] | None = None) -> None:
        """Record the step's norm if due; `grads` in the order of `weights` (default: their
        `.grad`; a trial-group member passes its views of the fused gradients)."""
        if self.due(step):
            grads = [w.grad for w in self.weights] if grads is None else grads
            self._pending.append((step, kept_grad_norm(grads, self.masks)))

    def end_epoch(self) -> None:
        self.history.extend([step, float(v)] for step, v in self._pending)
        self._pending = []

    def state_dict(self) -> list[list[float]]:
        return [list(h) for h in self.history]

    def load_state_dict(self, history: Sequence[Sequence[float]]) -> None:
        self.history = [list(h) for h in history]
        self._pending = []


def _is_imagenet(cfg: Any) -> bool:
    return cfg.data.name == "imagenet"


def _top5_on(cfg: Any) -> bool:
    return _is_imagenet(cfg) or bool(cfg.evaluation.top5)


def _ece_on(cfg: Any) -> bool:
    return bool(cfg.evaluation.ece)


_METRICS = [
    # per epoch
    Metric("train_loss", EPOCH, "training loss", "lower"),
    Metric("train_acc", EPOCH, "training accuracy", "higher"),
    Metric("val_loss", EPOCH, "validation loss", "lower"),
    Metric("val_acc", EPOCH, "validation accuracy", "higher"),
    Metric("val_ece", EPOCH, "validation ECE (15 bins)", "lower"),
    # the mean over the epoch's steps of the rate each trained at: the epoch's rate, and
    # during warmup the mean of its rising rates
    Metric("lr", EPOCH, "learning rate the epoch trained at (mean over its steps)"),
    Metric("epoch_seconds", EPOCH, "seconds of training in the epoch"),
    Metric("val_seconds", EPOCH, "seconds of validation in the epoch"),
    Metric("images_per_second", EPOCH, "training images per second"),
    # dynamic sparse training: updates and connections changed this epoch, the drop
    # fraction, and the fraction of weights ever active (in-time over-parameterisation)
    Metric("dst_updates", EPOCH, "mask updates in the epoch"),
    Metric("dst_changed", EPOCH, "connections regrown in the epoch"),
    Metric("death_rate", EPOCH, "drop fraction of the epoch's last update"),
    Metric("itop_rate", EPOCH, "fraction of weights ever active (ITOP rate)", "higher"),
    # iterative magnitude pruning (sparsity.mode=imp): the round of every epoch, and each
    # round's record in the row of its last epoch (tracked at step = round)
    Metric("imp_round", EPOCH, "IMP round the epoch trained in (0: the start mask)", fmt="d"),
    # strong lottery tickets (sparsity.mode=slt): the level of every epoch and the density of
    # the subnetwork it computed with
    Metric("slt_level", EPOCH, "SLT level the epoch trained in (0: the first)", fmt="d"),
    Metric("slt_density", EPOCH, "density of the SLT subnetwork the epoch computed with"),
    Metric("granet_density", EPOCH, "density of the GraNet mask at the end of the epoch"),
    Metric("granet_update_density", EPOCH, "density of the GraNet mask after each update",
           step=ITERATION),
    # what the epoch's steps cost at the densities each computed with (train_flops_per_image);
    # a trial's train_flops_sparse is the sum over its epochs
    Metric("epoch_train_flops", EPOCH, "training FLOPs of the epoch (sparse)", fmt=".3g"),
    Metric("round_test_acc", EPOCH, "test accuracy at the end of the IMP round", "higher",
           step=ROUND),
    Metric("round_test_loss", EPOCH, "test NLL at the end of the IMP round", "lower", step=ROUND),
    Metric("round_best_val_acc", EPOCH, "best validation accuracy of the IMP round", "higher",
           step=ROUND),
    Metric("round_density", EPOCH, "density the IMP round trained at", step=ROUND),
    Metric("round_kept", EPOCH, "weights kept in the IMP round", fmt=".0f", step=ROUND),
    Metric("round_epochs", EPOCH, "epochs trained in the IMP round", fmt="d", step=ROUND),
    Metric("round_train_flops", EPOCH, "training FLOPs of the IMP round (sparse)", fmt=".3g",
           step=ROUND),
    Metric("cumulative_train_flops", EPOCH, "training FLOPs of all IMP rounds so far (sparse)",
           fmt=".3g", step=ROUND),
    # end of the trial, on the full test set
    Metric("test_acc", FINAL, "test accuracy", "higher", True, "test_acc", ".4f",
           of_test_logits=accuracy),
    Metric("test_top5", FINAL, "test top-5 accuracy", "higher", True, "top5", ".4f",
           of_test_logits=top5_accuracy, applies=_top5_on),
    Metric("test_loss", FINAL, "NLL", "lower", True, of_test_logits=nll),
    Metric("test_ece", FINAL, "ECE (15 bins)", "lower", True, "ece", ".3f",
           of_test_logits=lambda logits, labels: ece(logits, labels), applies=_ece_on),
    Metric("best_val_acc", FINAL, "best validation accuracy", "higher"),
    Metric("best_epoch", FINAL, "epoch of the best validation accuracy", fmt="d"),
    Metric("test_acc_best_val", FINAL, "test accuracy at the best-validation epoch", "higher"),
    Metric("test_loss_best_val", FINAL, "NLL at the best-validation epoch", "lower"),
    Metric("fgsm_acc", FINAL, "FGSM accuracy (eps 8/255)", "higher", True, "fgsm", ".3f"),
    # FGSM at another eps, from evaluating a finished trial again: fgsm_acc_eps0.0157
    Metric("fgsm_acc_eps", FINAL, "FGSM accuracy at another eps", "higher", family=True),
    Metric("ood_auroc_", FINAL, "OoD ROC-AUC (max softmax)", "higher", family=True),
    Metric("flow_added", FINAL, "weights GraNet's flow preservation added to the source",
           fmt=".0f"),
    Metric("achieved_density", FINAL, "achieved density", None, False, "density", ".4f"),
    Metric("params_dense", FINAL, "parameters (dense)", fmt=".0f"),
    Metric("params_sparse", FINAL, "parameters (kept)", fmt=".0f"),
    Metric("flops_dense", FINAL, "inference FLOPs per image (dense)", fmt=".3g"),
    Metric("flops_sparse", FINAL, "inference FLOPs per image (sparse)", fmt=".3g"),
    Metric("train_flops_dense", FINAL, "training FLOPs (dense)", fmt=".3g"),
    Metric("train_flops_sparse", FINAL, "training FLOPs (sparse)", fmt=".3g"),
    Metric("final_eval_seconds", FINAL, "seconds of the final evaluation"),
    Metric("train_seconds", FINAL, "seconds of training, all epochs"),
    Metric("eval_seconds", FINAL, "seconds of validation and the final evaluation"),
    Metric("wall_seconds", FINAL, "wall-clock seconds of the trial (starts, retries included)"),
    Metric("retry_seconds", FINAL, "seconds of training lost to failures and trained again"),
    Metric("device_hours", FINAL, "device-hours: wall-clock x the trial's GPUs (CPUs if none)"),
    Metric("group_size", FINAL, "trials trained together as one fused model (1: alone)", fmt="d"),
    # the training worker's machine during the epoch, from MLflow's own monitors (CPU and
    # memory, disk, network; utilization, memory and power of the trial's GPUs): the mean of
    # the epoch's samples, e.g. system/cpu_utilization_percentage, system/gpu_0_utilization_..
    Metric("system/", EPOCH, "system metrics of the training worker (mean over the epoch)",
           family=True),
]  # fmt: skip
METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


def metric(key: str) -> Metric | None:
    """The registry entry of a result key (a family entry for its members), or None."""
    if key in METRICS:
        return METRICS[key]
    for m in _METRICS:
        if m.family and key.startswith(m.name):
            return m
    return None


def step_of(key: str, row: dict[str, Any]) -> int:
    """A tracker's step for an epoch metric of `row`: the row's epoch, or its IMP round for
    the metrics declared with step "round"."""
    m = metric(key)
    if m is not None and m.step == ROUND:
        return int(row.get("imp_round", 0))
    return int(row.get("epoch", 0))


def step_series(row: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, training step) of every "iteration" metric of a row: its per-event
    values, which `numeric_metrics` leaves out (lists, or JSON text where the row passed
    through Tune, which keeps only numbers and strings)."""
    out = []
    for key, value in row.items():
        m = metric(key)
        if m is None or m.step != ITERATION:
            continue
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, (list, tuple)):
            out += [(key, float(v), int(step)) for step, v in value]
    return out


def is_metric(key: str, when: str | None = None) -> bool:
    m = metric(key)
    return m is not None and (when is None or m.when == when)


def numeric_metrics(result: dict[str, Any], when: str | None = None) -> dict[str, float]:
    """The registered metrics of a result (per epoch, final, or both) that are numbers."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and is_metric(k, when)
    }


def unregistered(result: dict[str, Any]) -> list[str]:
    """Numeric keys of a trial's result that no registry entry declares: a metric added
    without its entry would be dropped by tracking and the report, so the trial warns."""
    skip = ("epoch",)
    return sorted(
        k
        for k, v in result.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in skip
        and metric(k) is None
    )
