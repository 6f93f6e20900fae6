"""Gradual pruning with regrowth inside a random source mask (sparsity.mode=granet; GraNet of
Liu et al., NeurIPS 2021, started sparse as Gadhikar et al., ICML 2023, Sec. 4 run it).

From a random source mask at density d_i (`start_density`, the scheme's layer ratios), every
`update_frequency` steps:

1. between the steps t_0 = prune_start x T and t_1 = prune_end x T (T: the run's steps), the
   global magnitude pruning of Zhu and Gupta (2017): exactly round(d_t N) of the N masked
   weights stay, the largest |w| among those kept,
       d_t = d_f + (d_i - d_f) (1 - (t - t_0) / (t_1 - t_0))^3,
   reaching d_f (`density`) at the first update at or after t_1;
2. at every update of the whole run, GraNet's regeneration, per layer: drop ceil(r k) of its k
   kept weights with the smallest |w| and regrow as many inactive positions with the largest
   |gradient| of the current batch, regrown weights and their momentum at 0, so each layer's
   count is exact; r decays by cosine from `death_rate` (0.5) to `death_rate_final` (0.005)
   over the run. Regrowth may pick any position, as Gadhikar et al.'s code does (the source
   sets the start), or, with `regrow_in_source`, only the source's positions (the strict
   sparse-to-sparse reading: the mask then never leaves the source).

With `flow_preservation` (on in Gadhikar et al.'s GraNet runs), the source is first made to
carry signal through every unit: `preserve_flow_`.

The drop-and-grow is `rp_tune.methods.dst`'s (exact counts, ITOP rate, the update log); this adds
the gradual pruning before it and logs each update's density.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rp_tune.core.errors import ConfigError
from rp_tune.core.layout import GRANET_UPDATES_FILE
from rp_tune.core.seeds import derived_seed
from rp_tune.methods import dst
from rp_tune.methods.base import check_below_start, default_of
from rp_tune.methods.imp import prune_by_magnitude

log = logging.getLogger(__name__)


def cubic_density(step: int, start: int, end: int, initial: float, final: float) -> float:
    """d_t = d_f + (d_i - d_f)(1 - (t - t_0)/(t_1 - t_0))^3 for t in [t_0, t_1]; d_i before,
    d_f after (Zhu and Gupta 2017)."""
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


@torch.no_grad()
def preserve_flow_(masks: dict[str, torch.Tensor], seed: int) -> dict[str, int]:
    """Gadhikar et al.'s flow preservation, in place on bool masks [out, in, *kernel]: in
    each layer, every output unit (a conv filter, a linear row) without a kept weight gets
    one at a uniformly random position of its own; then every input unit (an input channel,
    a linear column) still without one gets one at a random position of its own. The random
    positions come from a generator seeded by (seed, layer name). Returns the weights added
    per layer (the layers that gained any).

    Their code counts the input units' connections before the first pass adds any, so an
    input unit that pass already connected can get a second one; here they are counted
    after it (the intent: every unit connected, with as few additions as that takes). As in
    their code, the cubic schedule still starts from the source's nominal density, so its
    first update prunes as many weights again, by global magnitude (not necessarily the
    added ones)."""
    added: dict[str, int] = {}
    for name, mask in masks.items():
        if mask.dim() < 2:
            continue
        g = torch.Generator().manual_seed(derived_seed(seed, "flow", name))
        units = mask.view(mask.shape[0], mask.shape[1], -1)  # [out, in, kernel positions]
        n = 0
        for o in (~units.any(dim=2).any(dim=1)).nonzero().flatten().tolist():
            k = int(torch.randint(units.shape[1] * units.shape[2], (1,), generator=g))
            units[o, k // units.shape[2], k % units.shape[2]] = True
            n += 1
        for c in (~units.any(dim=2).any(dim=0)).nonzero().flatten().tolist():
            k = int(torch.randint(units.shape[0] * units.shape[2], (1,), generator=g))
            units[k // units.shape[2], c, k % units.shape[2]] = True
            n += 1
        if n:
            added[name] = n
    return added


class GradualPruning(dst.DynamicSparsity):
    """GraNet's state, called by the training loop as dynamic sparse training is."""

    def __init__(
        self,
        masks: Any,
        *,
        start_density: float,
        final_density: float,
        prune_start: float,
        prune_end: float,
        regrow_in_source: bool,
        flow_added: int = 0,
        **dynamic: Any,
    ) -> None:
        super().__init__(
            masks, growth="gradient", schedule="cosine_whole_run", stop_at=1.0, **dynamic
        )
        self.initial_density, self.final_density = start_density, final_density
        self.start_step = int(prune_start * self.total_steps)
        self.end_step = int(prune_end * self.total_steps)
        self.total = sum(int(f.numel()) for f in self.float_masks)
        self.rounding = "ceil"  # GraNet drops ceil(r k), RigL floor(r k)
        if regrow_in_source:  # the source, as drawn: regrowth stays inside it
            self.allowed = [f.detach() > 0 for f in self.float_masks]
        self.densities: list[list[float]] = []  # [[step, density after the update], ...]
        self.flow_added = flow_added  # weights flow preservation added to the source

    def target(self, step: int) -> int:
        """Weights kept after the pruning of `step`: round(d_t N)."""
        d = cubic_density(
            step, self.start_step, self.end_step, self.initial_density, self.final_density
        )
        return round(d * self.total)

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if not dst.is_update_step(step, self.frequency, self.total_steps, 1.0, self.schedule):
            return
        names = list(self.masks.masks)
        kept = sum(int((f > 0).sum()) for f in self.float_masks)
        keep = self.target(step)
        if keep < kept:  # the cubic schedule's pruning; the first update from t_1 on: d_f
            with torch.no_grad():
                new = prune_by_magnitude(
                    dict(zip(names, self.weights)),
                    {n: f.detach() > 0 for n, f in zip(names, self.float_masks)},
                    keep,
                )
                for n, w, f in zip(names, self.weights, self.float_masks):
                    m = new[n].to(f.device).view(f.shape).to(f.dtype)
                    f.copy_(m)
                    w.mul_(m.view(w.shape))
                    buf = optimizer.state.get(w, {}).get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(m.view(buf.shape))
        super().after_step(step, optimizer)  # GraNet's regeneration: DST's drop and regrow
        density = sum(int((f > 0).sum()) for f in self.float_masks) / self.total
        self.densities.append([step, density])

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """DST's epoch metrics, the density at the end of the epoch, and the density after
        each of the epoch's updates as [[step, density], ...] (logged at step = iteration)."""
        out: dict[str, Any] = super().end_epoch(epoch)
        out["granet_density"] = self.masks.density()
        lo, hi = epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch
        out["granet_update_density"] = [[s, d] for s, d in self.densities if lo <= s < hi]
        return out

    def state_dict(self) -> dict[str, Any]:
        source = None if self.allowed is None else [s.cpu() for s in self.allowed]
        return {
            **super().state_dict(),
            "densities": [list(d) for d in self.densities],
            "source": source,
            "flow_added": self.flow_added,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.densities = [list(d) for d in state.get("densities", [])]
        self.flow_added = int(state.get("flow_added", 0))
        if state.get("source") is not None:
            device = self.weights[0].device
            self.allowed = [s.to(device) for s in state["source"]]


class GraNet(dst.DropAndGrow):
    """sparsity.mode=granet: `GradualPruning` from the trial's random source mask."""

    state_key = "dst"  # a checkpoint keeps it where DST's state is (its state extends DST's)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.flow_added = 0  # weights flow preservation added to the source

    @classmethod
    def check(cls, s: Any) -> None:
        """The target below the source, the schedule inside training, GraNet's own regrowth
        (by gradient, on its cosine over the whole run)."""
        check_below_start(s, "GraNet prunes")
        if not 0.0 <= s.prune_start < s.prune_end <= 1.0:
            raise ConfigError(
                f"sparsity.prune_start={s.prune_start!r}, sparsity.prune_end="
                f"{s.prune_end!r}: GraNet's pruning must start at or after the start of "
                "training and end before or at its end; valid: 0 <= prune_start < prune_end "
                "<= 1 (fractions of training)"
            )
        for key, why in (
            (
                "growth",
                "GraNet regrows by gradient (SET's random growth is sparsity.mode='dynamic')",
            ),
            (
                "drop_schedule",
                "GraNet's drop fraction follows its own cosine "
                "from death_rate to death_rate_final over the whole run",
            ),
            ("stop_at", "GraNet updates the mask all run long"),
        ):
            if getattr(s, key) != default_of(s, key):
                raise ConfigError(
                    f"sparsity.{key}={getattr(s, key)!r} with sparsity.mode='granet': "
                    f"{why}; leave it at {default_of(s, key)!r}"
                )

    def prepare_masks(self, masks: Any, key: str) -> None:
        if not self.cfg.sparsity.flow_preservation:
            return
        added = preserve_flow_(masks.masks, self.cfg.seed_of("mask"))
        self.flow_added = sum(added.values())
        log.info(
            "%s flow preservation: %d weights added to the source (%s)",
            key,
            self.flow_added,
            ", ".join(f"{n} +{k}" for n, k in added.items()) or "none needed",
        )

    def start(self, model: Any, masks: Any, steps_per_epoch: int) -> None:
        sp = self.cfg.sparsity
        self.dst = GradualPruning(
            masks,
            start_density=sp.start_density,
            final_density=sp.density,
            prune_start=sp.prune_start,
            prune_end=sp.prune_end,
            regrow_in_source=sp.regrow_in_source,
            flow_added=self.flow_added,
            **dst.rewiring(self.cfg, steps_per_epoch),
        )

    def final_metrics(self, trial: Any) -> dict[str, Any]:
        if self.cfg.sparsity.flow_preservation and self.dst is not None:
            return {"flow_added": float(self.dst.flow_added)}
        return {}

    def write_artifacts(self, trial: Any, folder: Path) -> None:
        """The density after every update (granet_updates.csv: step, density)."""
        assert isinstance(self.dst, GradualPruning)
        (Path(folder) / GRANET_UPDATES_FILE).write_text(
            "step,density\n" + "".join(f"{int(a)},{b!r}\n" for a, b in self.dst.densities)
        )
