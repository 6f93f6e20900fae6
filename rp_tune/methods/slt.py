"""Strong lottery tickets inside a random source mask (sparsity.mode=slt; Gadhikar et al.,
ICML 2023, Sec. 5: edge-popup of Ramanujan et al., CVPR 2020, restricted to a random mask).

The weights never train. Each masked layer gets a score per weight; every forward pass uses,
per layer, the k_l positions of the random source mask with the largest |score| (ties by
position), all other weights 0, so the network computes with w0 * subnet(scores); the scores
train by SGD with edge-popup's straight-through gradient dL/ds = sign(s) * w0 * dL/dw_eff
(the gradient passes the top-k as if it were the identity). The trial ends with a subnetwork
of its untouched random weights, saved as a mask like any other: a subset of the source.

As Gadhikar et al.'s code runs it:
- weights: the model's own initialization, Kaiming normal N(0, 2 / fan_in) with the dense
  fan-in (not rescaled by the source density), then frozen; the classifier's bias is set to
  0 and frozen (their convs carry zero, frozen biases; ours have none); BatchNorm's affine
  parameters stay at (1, 0), frozen, as their BatchNorm has none (running statistics are
  kept, as theirs);
- scores: a conv's start at the constant 0.5, the classifier's at Kaiming uniform,
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (their code; with equal scores the first top-k is by
  position, and the gradient separates them from the first step on), drawn from a generator
  seeded by the trial's init seed;
- levels: the density anneals geometrically from the source density p to the target d in
  `levels` steps, d_l = p (d / p)^(l / L), l = 1..L (the paper's code: L = 5; it starts its
  schedule at 0.6 and clamps to [d, p], which for p <= 0.6 differs from this one only in the
  intermediate levels); each level trains train.epochs epochs, the lr schedule restarting;
- per layer, level l keeps k_l = the layer's share of round(d_l N) in proportion to its
  source count (largest remainder, exact totals): the source's layer-wise ratios scaled to
  the target. (Their forward indexes the unflattened mask and keeps entries outside it
  scaled by |score|, nearly dense; this is the intended top-k within the source.)

The trial's `Masks` is the current subnetwork (synced after every step), so checkpoints,
achieved density, FLOPs and the saved masks are the subnetwork's; the source mask and the
initial weights ride in the checkpoint's state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rp_tune.core.errors import fail
from rp_tune.core.seeds import derived_seed
from rp_tune.methods.base import SparseTraining, check_below_start, refuse_drop_and_grow
from rp_tune.methods.imp import apportion, top_kept
from rp_tune.models import prunable_layers
from rp_tune.sparsity.masks import Masks


def level_densities(source: float, target: float, levels: int) -> tuple[float, ...]:
    """d_l = source * (target / source)^(l / levels), l = 1..levels; the last is the target."""
    out = [source * (target / source) ** (level / levels) for level in range(1, levels + 1)]
    out[-1] = target
    return tuple(out)


def level_of(epoch: int, epochs: int) -> tuple[int, int]:
    """(level, epoch within the level) of trial epoch `epoch` (0-based)."""
    return epoch // epochs, epoch % epochs


class StrongTickets:
    """Edge-popup state a trial's loop calls: `before_step` (scores' gradients from the
    weights'), `after_step` (the new subnetwork into the weights and the masks), `start_level`."""

    def __init__(
        self,
        model: nn.Module,
        masks: Masks,
        source_density: float,
        target: float,
        levels: int,
        epochs: int,
        seed: int,
    ) -> None:
        self.masks = masks  # the current subnetwork; bound to the model's weights
        self.source = {n: m.clone().cpu() for n, m in masks.masks.items()}
        self.densities = level_densities(source_density, target, levels)
        self.epochs = epochs
        self.level = -1
        layers = dict(prunable_layers(model))
        self.names = list(masks.masks)
        weights, _ = masks.bound()
        self.weights = weights
        self.initial = [w.detach().clone() for w in weights]  # w0: frozen for good
        self.source_dev = [
            self.source[n].to(w.device).view(w.shape) for n, w in zip(self.names, weights)
        ]
        self.scores: list[torch.Tensor] = []
        last = self.names[-1]  # the classifier
        g = torch.Generator().manual_seed(derived_seed(seed, "slt-scores"))
        for name, w in zip(self.names, weights):
            s = torch.full_like(w, 0.5)
            if name == last:  # Kaiming uniform (a = sqrt(5)): bound 1 / sqrt(fan_in)
                bound = 1.0 / math.sqrt(w[0].numel())
                s = ((torch.rand(w.shape, generator=g) * 2 - 1) * bound).to(w)
            self.scores.append(s.requires_grad_(True))
        for p in model.parameters():  # only the scores train; the weights pass gradients on
            p.requires_grad_(any(p is w for w in weights))
        if getattr(layers[last], "bias", None) is not None:
            with torch.no_grad():
                layers[last].bias.zero_()
        self.keep: dict[str, int] = {}

    def level_for(self, epoch: int) -> int:
        return level_of(epoch, self.epochs)[0]

    def recipe_step(self, step: int, steps_per_epoch: int) -> int:
        """The lr schedule's step: it restarts at every level."""
        return step % (self.epochs * steps_per_epoch)

    def start_level(self, level: int) -> None:
        """Per-layer counts of `level` (the source's ratios scaled to its density, exact total)
        and the subnetwork they give."""
        self.level = level
        source_kept = {n: int(m.sum()) for n, m in self.source.items()}
        total = sum(m.numel() for m in self.source.values())
        self.keep = apportion(
            source_kept, min(sum(source_kept.values()), round(self.densities[level] * total))
        )
        self.after_step()

    def before_step(self) -> None:
        """dL/ds = sign(s) * w0 * dL/dw_eff, inside the source (edge-popup's straight-through
        gradient through |s| and the top-k); the weights' own gradients are dropped."""
        for s, w, w0, src in zip(self.scores, self.weights, self.initial, self.source_dev):
            g = torch.zeros_like(s) if w.grad is None else w.grad * w0 * torch.sign(s) * src
            s.grad = g
            w.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        """The subnetwork of the current scores into the float masks and w = w0 * mask."""
        _, floats = self.masks.bound()
        for name, s, src, f, w, w0 in zip(
            self.names, self.scores, self.source_dev, floats, self.weights, self.initial
        ):
            # the keep[name] largest |score| among the source's positions, ties by position
            f.copy_(top_kept(s.abs(), src, self.keep[name]).to(f.dtype).view(f.shape))
            w.copy_(w0 * f.view(w.shape))

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores": [s.detach().cpu() for s in self.scores],
            "initial": [w.cpu() for w in self.initial],
            "source": {n: m.cpu() for n, m in self.source.items()},
            "level": self.level,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for s, saved in zip(self.scores, state["scores"]):
                s.copy_(saved.to(s.device))
            for w0, saved in zip(self.initial, state["initial"]):
                w0.copy_(saved.to(w0.device))
        self.source = {n: m.bool() for n, m in state["source"].items()}
        self.source_dev = [
            self.source[n].to(w.device).view(w.shape) for n, w in zip(self.names, self.weights)
        ]
        self.start_level(int(state["level"]))


class SLT(SparseTraining):
    """sparsity.mode=slt: `StrongTickets` in a trial: `levels` levels of train.epochs each,
    the lr schedule and model selection restarting at every level."""

    state_key = "slt"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.tickets: StrongTickets | None = None

    @classmethod
    def check(cls, s: Any) -> None:
        """The target below the source, levels >= 1, none of dynamic sparse training's keys
        (its weights never train, so nothing is regrown)."""
        check_below_start(s, "strong lottery tickets search")
        if not isinstance(s.levels, int) or s.levels < 1:
            fail("sparsity.levels", s.levels, "an integer >= 1 (Gadhikar et al.: 5)")
        refuse_drop_and_grow(s, "slt", "strong lottery tickets train scores, never weights")

    @classmethod
    def total_epochs(cls, s: Any, epochs: int) -> int:
        return s.levels * epochs  # each level trains the recipe's epochs

    def start(self, model: nn.Module, masks: Masks, steps_per_epoch: int) -> None:
        """Before DDP wraps the model: DDP then reduces only what needs a gradient."""
        sp, t = self.cfg.sparsity, self.cfg.train
        self.tickets = StrongTickets(
            model,
            masks,
            sp.start_density,
            sp.density,
            sp.levels,
            t.epochs,
            self.cfg.seed_of("init"),
        )

    def _t(self) -> StrongTickets:
        assert self.tickets is not None, "start() builds the tickets"
        return self.tickets

    def parameters(self) -> list[torch.Tensor]:
        return self._t().scores  # only the scores train

    def recipe_step(self, step: int, steps_per_epoch: int) -> int:
        return self._t().recipe_step(step, steps_per_epoch)  # every level restarts the recipe

    def begin_epoch(self, trial: Any, epoch: int) -> None:
        """A new level: its counts, fresh momentum, and model selection within the level, so
        the best-validation epoch is one of the last level's, at the target density."""
        tickets = self._t()
        if tickets.level_for(epoch) != tickets.level:
            tickets.start_level(tickets.level_for(epoch))
            trial.optimizer.state.clear()
            trial.reset_model_selection()

    def before_step(self) -> None:
        self._t().before_step()  # the scores' gradients from the weights' (straight-through)

    def apply_masks(self, masks: Masks) -> None:
        self._t().after_step()  # the new top-k: w = w0 * subnetwork

    def gradient_densities(self) -> dict[str, float]:
        """The scores' gradient covers the source: 2 f(subnetwork) + f(source) a step."""
        return {n: float(m.sum()) / m.numel() for n, m in self._t().source.items()}

    def end_epoch(self, trial: Any, epoch: int) -> dict[str, Any]:
        trial.masks.sync_from_bound()  # the subnetwork as the epoch ended, for its checkpoint
        return {"slt_level": self._t().level, "slt_density": trial.masks.density()}

    def state_dict(self) -> dict[str, Any]:
        return self._t().state_dict()

    def load_state_dict(self, state: Any) -> None:
        self._t().load_state_dict(dict(state))
