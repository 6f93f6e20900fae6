"""Layer-wise ratios borrowed from pruning-at-initialisation scores (Liu et al. 2022, Sec. 3).

Each function scores every prunable weight of a model, keeps the global top round(d * N), and
returns only the per-layer kept counts: the random mask is then drawn with those counts, so
only the ratio survives, never the positions (Liu et al.'s "SNIP ratio").

The model is deep-copied; the caller's weights, gradients and mode are left untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rp_tune.sparsity.schemes import LayerSpec


def _weights(model: nn.Module, layers: Sequence[LayerSpec]) -> list[torch.Tensor]:
    modules = dict(model.named_modules())
    missing = [s.name for s in layers if s.name not in modules]
    if missing:
        raise ValueError(f"model has no layers named {missing}")
    return [modules[s.name].weight for s in layers]


def keep_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Bool array with exactly `keep` Trues at the largest scores; ties broken by index.

    numpy's introselect (np.partition) is several times faster than torch.topk on CPU.
    """
    n = scores.size
    if keep >= n:
        return np.ones(n, dtype=bool)
    if keep <= 0:
        return np.zeros(n, dtype=bool)
    v = np.partition(scores, n - keep)[n - keep]
    out = scores > v
    ties = np.flatnonzero(scores == v)
    out[ties[: keep - int(out.sum())]] = True
    return out


def _top_counts(scores: Sequence[torch.Tensor], keep: int, largest: bool = True) -> list[int]:
    """Kept count per layer when the global top `keep` of the scores survive (exact count)."""
    flat = torch.cat([s.detach().flatten().double().cpu() for s in scores]).numpy()
    kept = keep_top(flat if largest else -flat, keep)
    sizes = np.cumsum([0] + [s.numel() for s in scores])
    return [int(kept[a:b].sum()) for a, b in zip(sizes[:-1], sizes[1:])]


def snip_counts(
    model: nn.Module, layers: Sequence[LayerSpec], keep: int, batch: tuple[torch.Tensor, ...]
) -> list[int]:
    """SNIP: score |dL/dw * w| on one batch, global top `keep`."""
    net = copy.deepcopy(model).train()
    ws = _weights(net, layers)
    x, y = batch[0], batch[1]
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, ws)
    return _top_counts([(g * w).abs() for g, w in zip(grads, ws)], keep)


def grasp_counts(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    keep: int,
    batch: tuple[torch.Tensor, ...],
    temperature: float = 200.0,
) -> list[int]:
    """GraSP: score -w * (H g) with logits / T over two halves of the batch; keep the lowest.

    g is the gradient summed over both halves; Hg is the gradient of sum(g_half . g) per half.
    Removing the highest scores (the weights whose removal least reduces gradient flow) means
    keeping the `keep` lowest.
    """
    net = copy.deepcopy(model).train()
    ws = _weights(net, layers)
    x, y = batch[0], batch[1]
    half = max(1, x.shape[0] // 2)
    parts = [(x[:half], y[:half]), (x[half:], y[half:])] if x.shape[0] > 1 else [(x, y)]
    g_sum = [torch.zeros_like(w) for w in ws]
    for xp, yp in parts:
        loss = F.cross_entropy(net(xp) / temperature, yp)
        for acc, g in zip(g_sum, torch.autograd.grad(loss, ws)):
            acc.add_(g)
    hg = [torch.zeros_like(w) for w in ws]
    for xp, yp in parts:
        loss = F.cross_entropy(net(xp) / temperature, yp)
        gs = torch.autograd.grad(loss, ws, create_graph=True)
        z = sum((g * acc).sum() for g, acc in zip(gs, g_sum))
        for acc, h in zip(hg, torch.autograd.grad(z, ws)):
            acc.add_(h)
    scores = [-(w.detach() * h) for w, h in zip(ws, hg)]
    return _top_counts(scores, keep, largest=False)


def synflow_counts(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    keep: int,
    input_shape: tuple[int, ...],
    rounds: int = 100,
) -> list[int]:
    """SynFlow: data-free, iterative (density d^(k/rounds) after round k), eval mode.

    All parameters replaced by their absolute values, an all-ones input, R = sum of outputs,
    score |w * dR/dw| over the weights that survived the previous round. Runs in float64 so the
    product of many layers' norms does not overflow.
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for b in net.buffers():
            if b.is_floating_point():
                b.abs_()
    ws = _weights(net, layers)
    originals = [w.detach().clone() for w in ws]
    total = sum(w.numel() for w in ws)
    density = keep / total
    alive = np.ones(total, dtype=bool)
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=ws[0].device)
    sizes = np.cumsum([0] + [w.numel() for w in ws])
    for k in range(1, rounds + 1):
        mask_t = torch.from_numpy(alive).to(ws[0].device)
        with torch.no_grad():
            for w, w0, a, b in zip(ws, originals, sizes[:-1], sizes[1:]):
                torch.mul(w0, mask_t[a:b].view_as(w0), out=w)
        grads = torch.autograd.grad(net(x).sum(), ws)
        n_keep = keep if k == rounds else int(round(total * density ** (k / rounds)))
        scores = torch.cat([(g * w.detach()).abs().flatten() for g, w in zip(grads, ws)])
        scores = scores.cpu().numpy()
        idx = np.flatnonzero(alive)  # pruned weights never come back
        alive = np.zeros(total, dtype=bool)
        alive[idx[keep_top(scores[idx], n_keep)]] = True
    masks = [alive[a:b] for a, b in zip(sizes[:-1], sizes[1:])]
    return [int(m.sum()) for m in masks]
