"""Iterative magnitude pruning inside a random start mask: sparse to sparse.

Gadhikar et al. (ICML 2023, Sec. 4) argue that pruning need not start dense: a random mask
(ER, balanced, pyramidal ratios) at a moderate density already contains good sparse
subnetworks, and pruning within it reaches them at a fraction of the training cost. With a
dense start (start_density 1.0) this is the classic IMP of Frankle & Carbin (2019).

A trial of R + 1 rounds (`round_densities`: d_0 = start, d_r = d_0 (1 - f)^r
while above the target, then the target):

- round 0 trains the start mask for train.epochs epochs (the recipe, lr schedule and all);
- at the end of round r < R the smallest-magnitude weights among those still kept are
  removed, so that round(d_{r+1} N) of the N masked weights stay (over all masked layers, or
  per layer with every layer shrunk by the same factor), and the survivors, BatchNorm
  included, are rewound to their values at the start of epoch `rewind_epoch` of round 0
  (0: the initialization, Frankle & Carbin 2019; k > 0: weight rewinding, Frankle et al.
  2020), momentum reset;
- round r >= 1 then trains epochs rewind_epoch .. train.epochs - 1 of the recipe, the lr
  schedule going on from the rewind point.

The mask only shrinks: a new mask is chosen among the kept positions of the last, so nothing
outside the random start ever returns. Epochs are numbered through the whole trial (round 1
of a 160-epoch recipe begins at epoch 161), so checkpoints, resume and the sweep's progress
work as for any trial; a trial killed mid-round resumes there with that round's mask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
import torch.distributed as dist

from rp_tune.core.errors import ConfigError, fail
from rp_tune.core.layout import IMP_MASKS_DIR, IMP_ROUNDS_FILE, MASKS_FILE
from rp_tune.methods.base import SparseTraining, check_below_start, refuse_drop_and_grow
from rp_tune.sparsity.masks import Masks

log = logging.getLogger(__name__)

MAX_ROUNDS = 100  # each a full training run: more is a typo in prune_fraction

SCOPES = ("global", "layer")


def round_of(epoch: int, epochs: int, rewind_epoch: int) -> tuple[int, int]:
    """(round, epoch of the recipe) of trial epoch `epoch` (0-based): round 0 is epochs
    0..E-1, each later round E - rewind_epoch epochs that replay the recipe's epochs
    rewind_epoch..E-1."""
    if epoch < epochs:
        return 0, epoch
    length = epochs - rewind_epoch
    j = epoch - epochs
    return 1 + j // length, rewind_epoch + j % length


def round_ends(epochs: int, rewind_epoch: int, rounds: int) -> list[int]:
    """The trial epochs (1-based, as reported) at which each of `rounds` rounds ends."""
    return [epochs + r * (epochs - rewind_epoch) for r in range(rounds)]


def kept_totals(start_kept: int, total: int, densities: tuple[float, ...]) -> list[int]:
    """Weights kept in each round: the start mask's count, then round(d_r * total), never
    more than the round before (the mask only shrinks)."""
    out = [start_kept]
    for d in densities[1:]:
        out.append(min(out[-1], round(d * total)))
    return out


def apportion(previous: Mapping[str, int], keep: int) -> dict[str, int]:
    """Per-layer counts summing to exactly `keep`, each layer's share proportional to its
    previous count (largest remainder, ties in layer order) and never above it."""
    before = sum(previous.values())
    if not 0 <= keep <= before:
        raise ValueError(f"cannot keep {keep} of {before} weights")
    if before == 0:
        return dict(previous)
    quota = {n: k * keep / before for n, k in previous.items()}
    out = {n: math.floor(q) for n, q in quota.items()}
    short = keep - sum(out.values())
    order = sorted(previous, key=lambda n: -(quota[n] - out[n]))  # stable: layer order on ties
    for n in order[:short]:
        out[n] += 1  # floor(q) + 1 <= previous, as q < previous when it has a remainder
    return out


def top_kept(scores: torch.Tensor, kept: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask, shape of `kept`, of the `keep` largest scores among kept positions; ties
    by position (a stable sort), so a rerun prunes the same weights."""
    flat = scores.flatten().masked_fill(~kept.flatten(), -math.inf)
    out = torch.zeros_like(kept.flatten())
    if keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices[:keep]
        out[order] = True
    return out.view(kept.shape)


@torch.no_grad()
def prune_by_magnitude(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    keep: int | Mapping[str, int],
) -> dict[str, torch.Tensor]:
    """New bool masks (on the CPU) keeping the largest-|w| weights among each mask's kept
    positions: `keep` weights over all layers together (an int: global magnitude pruning),
    or keep[name] in each layer (a mapping: layer-wise). Every new mask is a subset of its
    old one."""
    names = list(masks)
    old = {n: masks[n].detach().to(torch.bool).cpu() for n in names}
    mags = {n: weights[n].detach().abs().float().cpu().contiguous() for n in names}
    if isinstance(keep, Mapping):
        missing = sorted(set(names) - set(keep))
        if missing:
            raise ValueError(f"no kept count for layers {missing}")
        for n in names:
            if not 0 <= keep[n] <= int(old[n].sum()):
                raise ValueError(f"layer {n}: cannot keep {keep[n]} of {int(old[n].sum())}")
        return {n: top_kept(mags[n], old[n], int(keep[n])) for n in names}
    total = sum(int(m.sum()) for m in old.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of the {total} weights kept")
    flat_scores = torch.cat([mags[n].flatten() for n in names])
    flat_kept = torch.cat([old[n].flatten() for n in names])
    chosen = top_kept(flat_scores, flat_kept, keep)
    out, at = {}, 0
    for n in names:
        size = old[n].numel()
        out[n] = chosen[at : at + size].view(old[n].shape)
        at += size
    return out


def _pack(mask: torch.Tensor) -> tuple[tuple[int, ...], np.ndarray]:
    return tuple(mask.shape), np.packbits(mask.cpu().numpy().ravel())


def _unpack(shape: tuple[int, ...], bits: np.ndarray) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits)[:n].astype(bool)).view(shape)


class IterativePruning:
    """IMP's state in one trial, one object the training loop calls.

    `capture(epoch, model)` before each epoch keeps the rewind point; `is_round_end(epoch)`
    says whether an epoch closes a round; `next_round(masks, model, optimizer)` prunes and
    rewinds; `rounds` holds each round's record, `round_masks` the mask each round trained
    (packed bits, 1 bit per weight). `state_dict` is what a checkpoint keeps.
    """

    def __init__(
        self,
        *,
        densities: tuple[float, ...],
        epochs: int,
        rewind_epoch: int,
        scope: str,
        start_kept: int,
        total: int,
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown prune scope {scope!r}; valid choices: {SCOPES}")
        self.densities, self.epochs, self.rewind_epoch = densities, epochs, rewind_epoch
        self.scope, self.total = scope, total
        self.kept = kept_totals(start_kept, total, densities)
        self.ends = round_ends(epochs, rewind_epoch, len(densities))
        self.rewind: dict[str, torch.Tensor] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.round_masks: list[dict[str, tuple[tuple[int, ...], np.ndarray]]] = []

    @property
    def total_epochs(self) -> int:
        return self.ends[-1]

    def round_of(self, epoch: int) -> tuple[int, int]:
        return round_of(epoch, self.epochs, self.rewind_epoch)

    def recipe_step(self, step: int, steps_per_epoch: int) -> int:
        """The step of the recipe's schedule that trial step `step` trains at."""
        _, local = self.round_of(step // steps_per_epoch)
        return local * steps_per_epoch + step % steps_per_epoch

    def is_round_end(self, epoch: int) -> bool:
        """Whether trial epoch `epoch` (0-based) is the last of its round."""
        return epoch + 1 in self.ends

    @torch.no_grad()
    def capture(self, epoch: int, model: torch.nn.Module, masks: Any) -> None:
        """At the start of round 0's epoch `rewind_epoch`: keep the model's state (weights,
        BatchNorm parameters and statistics) to rewind to, and the start mask."""
        if epoch == 0 and not self.round_masks:
            self.round_masks.append({n: _pack(m) for n, m in masks.masks.items()})
        if epoch == self.rewind_epoch and self.rewind is None:
            self.rewind = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def next_round(self, masks: Any, model: torch.nn.Module, optimizer: Any) -> dict[str, int]:
        """Prune to the next round's count, rewind the survivors, reset momentum; returns
        the kept count per layer. The new mask is a subset of the current one."""
        r = len(self.round_masks)  # the round about to start
        if r >= len(self.densities):
            raise RuntimeError(f"IMP has {len(self.densities)} rounds; no round {r} to start")
        if self.rewind is None:
            raise RuntimeError(f"no rewind state (epoch {self.rewind_epoch}) was kept")
        weights = {n: w for n, w in zip(masks.masks, masks.bound()[0])}
        keep: int | dict[str, int] = self.kept[r]
        if self.scope == "layer":
            keep = apportion(masks.kept(), self.kept[r])
        new = prune_by_magnitude(weights, masks.masks, keep)
        if dist.is_available() and dist.is_initialized():
            # DDP keeps every rank's weights equal; rank 0's choice makes the masks so too,
            # whatever a kernel's rounding did
            box = [new]
            dist.broadcast_object_list(box, src=0)
            new = box[0]
        empty = [n for n, m in new.items() if not m.any()]
        if empty:
            log.warning("IMP round %d keeps no weight in %s: the network is cut there", r, empty)
        masks.set_(new)
        masks.meta["imp_round"] = str(r)
        model.load_state_dict(self.rewind)
        masks.apply_()
        optimizer.state.clear()  # fresh momentum, as a new training run from the rewind point
        self.round_masks.append({n: _pack(m) for n, m in new.items()})
        return masks.kept()

    def masks_of_round(self, r: int) -> dict[str, torch.Tensor]:
        return {n: _unpack(shape, bits) for n, (shape, bits) in self.round_masks[r].items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rewind": self.rewind,
            "rounds": [dict(r) for r in self.rounds],
            "round_masks": self.round_masks,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rewind = state["rewind"]
        self.rounds = [dict(r) for r in state["rounds"]]
        self.round_masks = list(state["round_masks"])
        if self.round_masks:  # the start's count, not the resumed round's
            start = sum(int(m.sum()) for m in self.masks_of_round(0).values())
            self.kept = kept_totals(start, self.total, self.densities)


def round_densities(s: Any) -> tuple[float, ...]:
    """IMP's nominal density of each round from the sparsity section `s`: d_r = start *
    (1 - f)^r while above the target, then the target (rounds 0..R; round 0 trains the
    start mask)."""
    out = [s.start_density]
    while out[-1] > s.density:
        nxt = out[-1] * (1.0 - s.prune_fraction)
        # a last step within 1e-9 of the target is the target (float round-off)
        out.append(s.density if nxt <= s.density * (1 + 1e-9) else nxt)
    return tuple(out)


class IMP(SparseTraining):
    """sparsity.mode=imp: `IterativePruning` in a trial: rounds as spans of its epochs."""

    state_key = "imp"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.pruning: IterativePruning | None = None

    @classmethod
    def check(cls, s: Any) -> None:
        """The target below the start, fractions in (0, 1), at most MAX_ROUNDS rounds, none
        of dynamic sparse training's keys (the mask of IMP only shrinks)."""
        check_below_start(s, "iterative magnitude pruning prunes")
        if not 0.0 < s.prune_fraction < 1.0:
            fail("sparsity.prune_fraction", s.prune_fraction, "a fraction in (0, 1)")
        if s.rewind_epoch < 0:
            fail("sparsity.rewind_epoch", s.rewind_epoch, "an integer >= 0 (0: the init)")
        # prune steps: the least r with start (1 - f)^r <= target (round_densities' count - 1)
        steps = math.log(s.density / s.start_density) / math.log(1 - s.prune_fraction)
        rounds = math.ceil(steps - 1e-9)
        if rounds + 1 > MAX_ROUNDS:
            raise ConfigError(
                f"sparsity.prune_fraction={s.prune_fraction!r} from sparsity.start_density="
                f"{s.start_density!r} to sparsity.density={s.density!r} takes {rounds + 1} "
                f"rounds of training; at most {MAX_ROUNDS}: prune a larger fraction a round"
            )
        refuse_drop_and_grow(s, "imp", "iterative magnitude pruning only removes them")

    @classmethod
    def check_trial(cls, cfg: Any) -> None:
        s, epochs = cfg.sparsity, cfg.train.epochs
        if s.rewind_epoch >= epochs:
            raise ConfigError(
                f"sparsity.rewind_epoch={s.rewind_epoch!r} with train.epochs={epochs}: a round "
                "trains train.epochs epochs and rewinds to an epoch of it; valid: 0 (the "
                f"initialization) to {epochs - 1}"
            )

    @classmethod
    def total_epochs(cls, s: Any, epochs: int) -> int:
        """The first round's epochs plus epochs - rewind_epoch for every later round (each
        later round goes on from the rewind point, lr schedule included: Frankle et al.
        2020)."""
        return epochs + (len(round_densities(s)) - 1) * (epochs - s.rewind_epoch)

    def start(self, model: Any, masks: Any, steps_per_epoch: int) -> None:
        sp = self.cfg.sparsity
        self.pruning = IterativePruning(
            densities=round_densities(sp),
            epochs=self.cfg.train.epochs,
            rewind_epoch=sp.rewind_epoch,
            scope=sp.prune_scope,
            start_kept=sum(masks.kept().values()),
            total=masks.total(),
        )

    def recipe_step(self, step: int, steps_per_epoch: int) -> int:
        """Every round after the first replays the recipe from the rewind point."""
        assert self.pruning is not None
        return self.pruning.recipe_step(step, steps_per_epoch)

    def begin_epoch(self, trial: Any, epoch: int) -> None:
        assert self.pruning is not None
        self.pruning.capture(epoch, trial.model, trial.masks)

    def end_epoch(self, trial: Any, epoch: int) -> dict[str, Any]:
        assert self.pruning is not None
        return {"imp_round": self.pruning.round_of(epoch)[0]}

    def after_validation(self, trial: Any, epoch: int) -> dict[str, Any]:
        assert self.pruning is not None
        return self.end_round(trial, epoch) if self.pruning.is_round_end(epoch) else {}

    def end_round(self, trial: Any, epoch: int) -> dict[str, Any]:
        """The last epoch of a round: the round's record (test accuracy and loss of its
        model, its density and kept count, its best validation accuracy, the training FLOPs
        of the round and of all rounds so far); then, unless it was the last round, prune
        and rewind (`IterativePruning.next_round`) and start model selection afresh, so the
        trial's best-validation epoch is one of the final round's, at the target density."""
        t, pruning = trial, self.pruning
        assert pruning is not None
        r = pruning.round_of(epoch)[0]
        test = t.evaluate_test()
        densities = {n: int(m.sum()) / m.numel() for n, m in t.masks.masks.items()}
        round_epochs = pruning.epochs - (pruning.rewind_epoch if r > 0 else 0)
        images = round_epochs * t.data.steps * self.cfg.train.batch_size * t.world
        flops = t.training_flops(densities, images)
        before = pruning.rounds[-1]["cumulative_train_flops"] if pruning.rounds else 0.0
        record = {
            "imp_round": r,
            "round_test_acc": test["acc"],
            "round_test_loss": test["loss"],
            "round_density": t.masks.density(),
            "round_kept": float(sum(t.masks.kept().values())),
            "round_epochs": round_epochs,
            "round_train_flops": flops,
            "cumulative_train_flops": before + flops,
        }
        if t.best["epoch"] > 0:
            record["round_best_val_acc"] = t.best["val_acc"]
        pruning.rounds = [x for x in pruning.rounds if x["imp_round"] < r] + [record]
        if r + 1 < len(pruning.densities):
            kept = pruning.next_round(t.masks, t.model, t.optimizer)
            t.reset_model_selection()
            if t.rank == 0:
                t.masks.save(t.out_dir / MASKS_FILE)
            log.info(
                "%s IMP round %d: test acc %.4f at density %.4f; round %d keeps %d weights "
                "(density %.4f), rewound to epoch %d",
                t.key,
                r,
                test["acc"],
                record["round_density"],
                r + 1,
                sum(kept.values()),
                t.masks.density(),
                pruning.rewind_epoch,
            )
        return record

    def final_metrics(self, trial: Any) -> dict[str, Any]:
        """Training FLOPs summed over the rounds, each at its own density, where the trial
        could not count them epoch by epoch (a checkpoint of an older release)."""
        counted = trial.train_flops > 0 and trial.flops_complete
        if not counted and self.pruning is not None and self.pruning.rounds:
            return {"train_flops_sparse": self.pruning.rounds[-1]["cumulative_train_flops"]}
        return {}

    def state_dict(self) -> dict[str, Any]:
        assert self.pruning is not None
        return self.pruning.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.pruning is not None
        self.pruning.load_state_dict(state)

    def write_artifacts(self, trial: Any, folder: Any) -> None:
        """The mask every round trained with, and the rounds' records (imp_rounds.csv)."""
        from pathlib import Path

        assert self.pruning is not None
        art = Path(folder)
        (art / IMP_MASKS_DIR).mkdir()
        for r in range(len(self.pruning.round_masks)):
            meta = {**trial.masks.meta, "imp_round": str(r)}
            round_file = art / IMP_MASKS_DIR / f"round_{r:02d}.parquet"
            Masks(self.pruning.masks_of_round(r), meta).save(round_file)
        if self.pruning.rounds:
            pacsv.write_csv(pa.Table.from_pylist(self.pruning.rounds), art / IMP_ROUNDS_FILE)
