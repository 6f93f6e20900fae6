"""Dynamic sparse training from a random start: SET (random regrowth) and RigL (gradient).

Every `update_frequency` steps until `stop_at` of training, per masked layer:
- drop: the round(r * k) kept weights of smallest magnitude (r = death rate, k = kept count),
- grow: as many positions among those pruned before this update (never the ones just
  dropped): uniformly at random (SET, Mocanu et al. 2018) or of largest dense-gradient
  magnitude (RigL, Evci et al. 2020);
regrown weights start at zero and their momentum is reset; per-layer counts stay exact.
The death rate decays by a cosine from `initial` to `final` over training.

Random growth draws from a generator seeded by (trial seed, step), so a resumed run makes the
same updates as an unbroken one without any generator state in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

GROWTHS = ("random", "gradient")


def death_rate(step: int, total_steps: int, initial: float = 0.5, final: float = 0.005) -> float:
    """final + (initial - final) / 2 * (1 + cos(pi * step / total_steps))."""
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t))


def is_update_step(step: int, frequency: int, total_steps: int, stop_at: float) -> bool:
    """Steps k * frequency (k >= 1) before stop_at * total_steps."""
    return step > 0 and step % frequency == 0 and step < stop_at * total_steps


@dataclass
class UpdateStats:
    changed: int  # connections regrown (= dropped) over all layers
    per_layer: list[int]


@torch.no_grad()
def update_masks_(
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    rate: float,
    growth: str,
    generator: torch.Generator | None = None,
    momenta: Sequence[torch.Tensor | None] | None = None,
) -> UpdateStats:
    """Drop-and-grow in place on float masks (1 kept, 0 pruned); weights, momenta updated.

    weights/masks/grads/momenta are parallel per layer; masks live on the weights' device.
    """
    if growth not in GROWTHS:
        raise ValueError(f"unknown growth {growth!r}; valid choices: {GROWTHS}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"death rate must be in [0, 1], got {rate}")
    per_layer = []
    for i, (w, m) in enumerate(zip(weights, masks)):
        kept = m.detach().contiguous().view(-1) > 0  # logical (NCHW) order for every tensor
        k = int(kept.sum())
        pruned_before = (~kept).nonzero().squeeze(1)
        n = min(int(round(rate * k)), k, pruned_before.numel())
        if n == 0:
            per_layer.append(0)
            continue
        # drop the n smallest-magnitude kept weights
        mag = w.detach().abs().contiguous().view(-1).masked_fill(~kept, float("inf"))
        drop = torch.topk(mag, n, largest=False, sorted=False).indices
        # grow n among the positions pruned before this update
        if growth == "random":
            device = generator.device if generator is not None else torch.device("cpu")
            pick = torch.randperm(pruned_before.numel(), generator=generator, device=device)
            grow = pruned_before[pick[:n].to(pruned_before.device)]
        else:
            g = grads[i]
            if g is None:
                raise ValueError("gradient growth needs the dense gradient of every layer")
            score = g.detach().abs().contiguous().view(-1)[pruned_before]
            grow = pruned_before[torch.topk(score, n, sorted=False).indices]
        _set_flat(m, drop, 0.0)
        _set_flat(m, grow, 1.0)
        _set_flat(w, torch.cat([drop, grow]), 0.0)
        if momenta is not None and momenta[i] is not None:
            _set_flat(momenta[i], grow, 0.0)
        per_layer.append(n)
    return UpdateStats(changed=sum(per_layer), per_layer=per_layer)


def _set_flat(t: torch.Tensor, idx: torch.Tensor, value: float) -> None:
    """t.flatten()[idx] = value in logical order, in place, whatever t's memory format."""
    c = t.contiguous()
    c.view(-1)[idx] = value
    if c.data_ptr() != t.data_ptr():
        t.copy_(c)
