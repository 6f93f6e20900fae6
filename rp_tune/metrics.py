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

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Names of the end-of-trial metrics a trial reports (final test metrics, robustness, OoD, cost):
# what trackers log as final values and reports put in their table.
FINAL_PREFIXES = (
    "test_",
    "best_",
    "fgsm_",
    "ood_auroc_",
    "params_",
    "flops_",
    "train_flops_",
    "achieved_density",
)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


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


def cost(
    model: nn.Module, densities: dict[str, float], input_shape: Sequence[int], train_images: int
) -> dict[str, float]:
    """Parameter and FLOP counts, dense and sparse.

    Sparse inference FLOPs = dense - sum_l (1 - p_l) * FLOPs_l over masked layers l (conv and
    linear FLOPs scale with the layer density). Training FLOPs = 3 x inference FLOPs per image
    (forward + backward for activations and weights, the RigL convention) x images trained on.
    """
    modules = dict(model.named_modules())
    params_dense = sum(p.numel() for p in model.parameters())
    pruned = sum((1 - d) * modules[n].weight.numel() for n, d in densities.items())
    total, per = layer_flops(model, input_shape)
    saved = sum((1 - d) * per.get(n, 0) for n, d in densities.items())
    sparse = total - saved
    return {
        "params_dense": float(params_dense),
        "params_sparse": float(round(params_dense - pruned)),
        "flops_dense": float(total),
        "flops_sparse": float(sparse),
        "train_flops_dense": 3.0 * total * train_images,
        "train_flops_sparse": 3.0 * sparse * train_images,
    }
