"""Dynamic sparse training from a random start: SET (random regrowth) and RigL (gradient).

Every `update_frequency` steps until `stop_at` of training, per masked layer:
- drop: the floor(r * k) kept weights of smallest magnitude (r = drop fraction, k = kept),
- grow: as many positions among all those inactive after the drop (the ones just dropped
  included, as RigL's `sparse_optimizers` does): uniformly at random (SET, Mocanu et al.
  2018) or of largest dense-gradient magnitude (RigL, Evci et al. 2020);
new connections start at zero with their momentum reset, a weight dropped and grown back at
once keeps its value (RigL without `reinit_when_same`); per-layer counts stay exact.

Drop-fraction schedules (`death_rate`): "rigl", RigL's cosine decay from the initial fraction
to 0 at `stop_at` of training, no update after it (Evci et al. 2020, Eq. 1); and
"cosine_whole_run", a cosine from the initial fraction to `final` over the whole run with
updates to the end (what the released code of Liu et al. does), kept as a named variant.

Random growth draws from a generator seeded by (trial seed, step), so a resumed run makes the
same updates as an unbroken one without any generator state in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rp_tune.core.seeds import derived_seed
from rp_tune.methods.base import SparseTraining

GROWTHS = ("random", "gradient")
SCHEDULES = ("rigl", "cosine_whole_run")


def death_rate(
    step: int,
    total_steps: int,
    initial: float = 0.5,
    final: float = 0.005,
    *,
    schedule: str = "rigl",
    stop_at: float = 0.75,
) -> float:
    """The drop fraction at `step`.

    rigl: initial / 2 * (1 + cos(pi * step / T_end)), T_end = stop_at * total_steps; 0 after.
    cosine_whole_run: final + (initial - final) / 2 * (1 + cos(pi * step / total_steps)).
    """
    if schedule == "rigl":
        end = stop_at * total_steps
        if end <= 0 or step >= end:
            return 0.0
        return 0.5 * initial * (1.0 + math.cos(math.pi * max(step, 0) / end))
    if schedule == "cosine_whole_run":
        t = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown drop schedule {schedule!r}; valid choices: {SCHEDULES}")


def is_update_step(
    step: int, frequency: int, total_steps: int, stop_at: float, schedule: str = "rigl"
) -> bool:
    """Steps k * frequency (k >= 1); under rigl only before stop_at * total_steps."""
    if step <= 0 or step % frequency:
        return False
    return schedule == "cosine_whole_run" or step < stop_at * total_steps


@dataclass
class UpdateStats:
    changed: int  # connections moved over all layers (regrown where none was before)
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
    allowed: Sequence[torch.Tensor] | None = None,
    rounding: str = "floor",
) -> UpdateStats:
    """Drop-and-grow in place on float masks (1 kept, 0 pruned); weights, momenta updated.

    weights/masks/grads/momenta are parallel per layer; masks live on the weights' device.
    allowed: per layer, the bool positions a weight may be regrown at (None: anywhere).
    rounding: drop floor(rate k) weights of a layer's k (RigL) or ceil(rate k) (GraNet).
    """
    if growth not in GROWTHS:
        raise ValueError(f"unknown growth {growth!r}; valid choices: {GROWTHS}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"death rate must be in [0, 1], got {rate}")
    per_layer = []
    for i, (w, m) in enumerate(zip(weights, masks)):
        kept = m.detach().contiguous().view(-1) > 0  # logical (NCHW) order for every tensor
        k = int(kept.sum())
        # RigL drops floor(r k); a layer with no inactive position (dense under ERK at low
        # density) is left alone
        dropped = math.ceil(rate * k) if rounding == "ceil" else int(rate * k)
        room = kept.numel() - k
        if allowed is not None:  # regrowth only where allowed: as many as it can hold
            room = int((allowed[i].contiguous().view(-1).to(kept.device) & ~kept).sum())
        n = min(dropped, k, room)
        if n == 0:
            per_layer.append(0)
            continue
        # drop the n smallest-magnitude kept weights
        mag = w.detach().abs().contiguous().view(-1).masked_fill(~kept, float("inf"))
        drop = torch.topk(mag, n, largest=False, sorted=False).indices
        after_drop = kept.clone()
        after_drop[drop] = False
        candidates = ~after_drop
        if allowed is not None:
            candidates &= allowed[i].contiguous().view(-1).to(kept.device)
        inactive = candidates.nonzero().squeeze(1)  # grow candidates, just-dropped included
        # grow n among every position inactive after the drop
        if growth == "random":
            device = generator.device if generator is not None else torch.device("cpu")
            pick = torch.randperm(inactive.numel(), generator=generator, device=device)
            grow = inactive[pick[:n].to(inactive.device)]
        else:
            g = grads[i]
            if g is None:
                raise ValueError("gradient growth needs the dense gradient of every layer")
            score = g.detach().abs().contiguous().view(-1)[inactive]
            grow = inactive[torch.topk(score, n, sorted=False).indices]
        new = grow[~kept[grow]]  # connections that were inactive before this update
        gone = drop[~torch.isin(drop, grow)]  # dropped and not grown back
        _set_flat(m, gone, 0.0)
        _set_flat(m, new, 1.0)
        # as RigL: new connections start at zero with zero momentum; a weight dropped and
        # grown back at once keeps its value and momentum (no re-initialisation)
        _set_flat(w, torch.cat([gone, new]), 0.0)
        if momenta is not None and momenta[i] is not None:
            _set_flat(momenta[i], new, 0.0)
        per_layer.append(int(new.numel()))
    return UpdateStats(changed=sum(per_layer), per_layer=per_layer)


def _set_flat(t: torch.Tensor, idx: torch.Tensor, value: float) -> None:
    """t.flatten()[idx] = value in logical order, in place, whatever t's memory format."""
    c = t.contiguous()
    c.view(-1)[idx] = value
    if c.data_ptr() != t.data_ptr():
        t.copy_(c)


class DynamicSparsity:
    """The SET/RigL state of one trial, in one object the training loop calls.

    Holds the schedule (`death_rate`, `is_update_step`), the ever-active set (weights active
    at any point: the in-time over-parameterisation rate of Liu et al. 2021), and the log of
    updates [[step, drop fraction, connections regrown], ...]. `after_step` runs after every
    optimizer step (and the masks' re-application); `end_epoch` copies the bound masks back
    into the `Masks` object and returns the epoch's metrics; `state_dict` is what a
    checkpoint keeps ({"ever": bool tensors on the CPU, "updates": the log}).
    """

    def __init__(
        self,
        masks: Any,
        *,
        growth: str,
        update_frequency: int,
        initial_rate: float,
        final_rate: float,
        schedule: str,
        stop_at: float,
        total_steps: int,
        steps_per_epoch: int,
        seed: int,
    ) -> None:
        if growth not in GROWTHS:
            raise ValueError(f"unknown growth {growth!r}; valid choices: {GROWTHS}")
        self.masks = masks  # rp_tune.sparsity.masks.Masks, bound to the model
        self.weights, self.float_masks = masks.bound()
        self.growth, self.frequency = growth, update_frequency
        self.initial, self.final, self.schedule, self.stop_at = (
            initial_rate,
            final_rate,
            schedule,
            stop_at,
        )
        self.total_steps, self.steps_per_epoch, self.seed = total_steps, steps_per_epoch, seed
        self.ever = [f.detach() > 0 for f in self.float_masks]
        self.updates: list[list[float]] = []
        # where regrowth may go (None: anywhere) and how a drop count rounds (update_masks_)
        self.allowed: list[torch.Tensor] | None = None
        self.rounding = "floor"

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Drop and grow if `step` is an update step (RigL's gradient: this batch's)."""
        if not is_update_step(step, self.frequency, self.total_steps, self.stop_at, self.schedule):
            return
        rate = death_rate(
            step,
            self.total_steps,
            self.initial,
            self.final,
            schedule=self.schedule,
            stop_at=self.stop_at,
        )
        device = self.weights[0].device
        gen = torch.Generator(device=device).manual_seed(derived_seed(self.seed, "dst", step))
        momenta = [optimizer.state.get(w, {}).get("momentum_buffer") for w in self.weights]
        grads = [w.grad for w in self.weights]
        upd = update_masks_(
            self.weights,
            self.float_masks,
            grads,
            rate,
            self.growth,
            gen,
            momenta,
            allowed=self.allowed,
            rounding=self.rounding,
        )
        for e, f in zip(self.ever, self.float_masks):
            e |= f.detach() > 0
        self.updates.append([step, rate, upd.changed])

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Metrics of epoch `epoch` (0-based): updates, connections regrown, last drop
        fraction, ITOP rate; the `Masks` object is brought up to date first."""
        self.masks.sync_from_bound()
        lo, hi = epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch
        this_epoch = [u for u in self.updates if lo <= u[0] < hi]
        return {
            "dst_updates": len(this_epoch),
            "dst_changed": sum(u[2] for u in this_epoch),
            "death_rate": this_epoch[-1][1] if this_epoch else 0.0,
            "itop_rate": sum(int(e.sum()) for e in self.ever) / self.masks.total(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"ever": [e.cpu() for e in self.ever], "updates": [list(u) for u in self.updates]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.weights[0].device
        self.ever = [e.to(device) for e in state["ever"]]
        self.updates = [list(u) for u in state["updates"]]


def rewiring(cfg: Any, steps_per_epoch: int) -> dict[str, Any]:
    """DynamicSparsity's schedule arguments from a trial config: the update frequency, the
    drop fraction's start and end, the run's steps, the mask seed."""
    sp = cfg.sparsity
    return dict(
        update_frequency=sp.update_frequency,
        initial_rate=sp.death_rate,
        final_rate=sp.death_rate_final,
        total_steps=cfg.train.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        seed=cfg.seed_of("mask"),
    )


class DropAndGrow(SparseTraining):
    """sparsity.mode=dynamic: SET (random growth) or RigL (gradient growth) from the trial's
    random masks (Evci et al. 2020; Liu et al. 2022 compare it with static training); a dense
    trial (density 1.0) has nothing to rewire."""

    state_key = "dst"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.dst: DynamicSparsity | None = None

    @classmethod
    def variant(cls, get: Any) -> str:
        return "set" if get("sparsity.growth") == "random" else "rigl"

    @property
    def dense_gradient_on_update(self) -> bool:  # RigL's growth reads the dense gradient
        return self.dst is not None and self.dst.growth == "gradient"

    def start(self, model: Any, masks: Any, steps_per_epoch: int) -> None:
        sp = self.cfg.sparsity
        if sp.density < 1.0:
            self.dst = DynamicSparsity(
                masks,
                growth=sp.growth,
                schedule=sp.drop_schedule,
                stop_at=sp.stop_at,
                **rewiring(self.cfg, steps_per_epoch),
            )

    def after_step(self, step: int, optimizer: Any) -> bool:
        if self.dst is None:
            return False
        before = len(self.dst.updates)
        self.dst.after_step(step, optimizer)
        return len(self.dst.updates) > before

    def end_epoch(self, trial: Any, epoch: int) -> dict[str, Any]:
        return self.dst.end_epoch(epoch) if self.dst is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return self.dst.state_dict() if self.dst is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.dst is not None and state:
            self.dst.load_state_dict(dict(state))
