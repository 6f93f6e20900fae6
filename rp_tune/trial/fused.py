"""Trial groups: K trials of one architecture trained as one fused model in one process.

    results = run_group(cfgs, out_dirs, on_epoch=lambda i, row, folder: ...)

The grids rp_tune runs are hundreds of trials of one network that differ only in their masks
(scheme, density, mode parameters) and seeds (masks, initial weights, data order); on a GPU
each such small trial is launch-bound. Horizontal fusion (HFTA, Wang et al., MLSys 2021)
trains K of them as one model with K times wider kernels.

How: grouped convolutions, as HFTA does. The fused activations are [B, K*C, H, W] from the
first layer to the last: a Conv2d becomes one grouped conv (groups = K), a BatchNorm2d over
K*C channels is exactly the K members' BatchNorms (per-channel statistics over each member's
own batch), ReLU, residual adds and pooling are untouched, and the classifier is one batched
matmul. Every fused tensor is the members' tensors concatenated along dim 0, so member k's
weights, buffers, gradients, momentum and masks are the views `fused.view(K, *shape)[k]`: a
member stays a plain model (its own validation, final evaluation, checkpoint and masks file,
read by the same code as a trial alone) at no copy. SGD is elementwise, so one SGD over the
fused tensors is the K members' SGDs, and the loss is the sum of the members' mean losses,
whose gradient with respect to member k's weights is member k's own.
Why not `torch.func.stack_module_state` + `vmap`: vmap's batching rule moves the member
dimension into the channels and back around every convolution, and BatchNorm's in-place
running-statistics updates must then be batched too; here nothing is moved or batched, the
model's own forward runs on the fused modules.

A group is K trials whose configs differ only in `sparsity.*` and the seeds
(`rp_tune.trial.groups.group_refusal` says which trials cannot join one and why). Each
member keeps its own masks (drawn by its own scheme and seed, before fusion), initialization,
data order and augmentation, optimizer state, best-validation state, metrics and checkpoint
folder; a member checkpoint has the format of a trial alone and resumes alone or in any
group. A member whose training loss turns non-finite is stopped and reported failed; the
others go on, unaffected (no tensor is shared between members).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rp_tune.config import ConfigError, TrialConfig, run_key
from rp_tune.core.layout import FAILED_MEMBERS_FILE, MEMBERS_DIR
from rp_tune.trial.build import lr_factor, make_optimizer, setup
from rp_tune.trial.checkpoints import CheckpointError, read_checkpoint, restore, save_checkpoint
from rp_tune.trial.groups import check_group
from rp_tune.trial.machine import environment
from rp_tune.trial.state import Trial
from rp_tune.trial.train import final_evaluation, report, step_flops, time_spent, validate

log = logging.getLogger(__name__)

MemberCallback = Callable[[int, dict[str, Any], Path | None], None]
FailureCallback = Callable[[int, str], None]


# --------------------------------------------------------------------------------------------
# The fused model
# --------------------------------------------------------------------------------------------


class GroupedLinear(nn.Module):
    """K Linear layers side by side: [B, K*in] -> [B, K*out], member k's weight is
    weight[k] ([K, out, in]) and its bias bias[k]. One batched matmul on CUDA; on the CPU K
    matmuls, each the member's own `F.linear`, so a CPU group computes a member's bits."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool, **kw) -> None:
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(k, out_features, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if x.device.type != "cuda":  # K matmuls as the members' own Linear: the same bits
            parts = x.reshape(b, self.k, self.in_features).unbind(1)
            bias = [None] * self.k if self.bias is None else self.bias.unbind(0)
            ys = [F.linear(p.contiguous(), w, c) for p, w, c in zip(parts, self.weight, bias)]
            return torch.cat(ys, dim=1)
        y = torch.bmm(x.reshape(b, self.k, self.in_features).transpose(0, 1), self.weight.mT)
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.transpose(0, 1).reshape(b, self.k * self.out_features)


def _fused_module(mod: nn.Module, members: Sequence[nn.Module], k: int) -> nn.Module | None:
    """The fused counterpart of one leaf module (its tensors are the members' concatenated),
    None for a module without tensors; TypeError for one that cannot be fused."""
    w = getattr(mod, "weight", None)
    kw = {"device": w.device, "dtype": w.dtype} if isinstance(w, torch.Tensor) else {}
    if type(mod) is nn.Conv2d:
        new: nn.Module = nn.Conv2d(
            k * mod.in_channels,
            k * mod.out_channels,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            groups=k * mod.groups,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode,
            **kw,
        )
    elif type(mod) is nn.BatchNorm2d:
        new = nn.BatchNorm2d(
            k * mod.num_features, mod.eps, mod.momentum, mod.affine, mod.track_running_stats, **kw
        )
    elif type(mod) is nn.Linear:
        new = GroupedLinear(k, mod.in_features, mod.out_features, mod.bias is not None, **kw)
    elif any(t is not None for t in [*mod._parameters.values(), *mod._buffers.values()]):
        raise TypeError(
            f"cannot fuse a {type(mod).__name__} (only Conv2d, BatchNorm2d and Linear hold "
            "tensors in a fusable model); train this model alone"
        )
    else:
        return None
    with torch.no_grad():
        for name, t in [*new.named_parameters(recurse=False), *new.named_buffers(recurse=False)]:
            parts = [getattr(m, name) for m in members]
            if t.ndim == 0:  # BatchNorm's num_batches_tracked: equal in every member
                t.copy_(parts[0])
                continue
            if parts[0].is_contiguous(memory_format=torch.channels_last) and parts[0].ndim == 4:
                fused = torch.cat(parts).contiguous(memory_format=torch.channels_last)
            else:
                fused = torch.cat(parts).view(t.shape)
            if name in new._parameters:
                new._parameters[name] = nn.Parameter(fused)
            else:
                new._buffers[name] = fused
    return new


def fuse_models(models: Sequence[nn.Module]) -> nn.Module:
    """One model computing `models` side by side: input [B, K*3, H, W] (member k's batch in
    channels 3k..3k+2), output [B, K*classes]. The models must share one architecture."""
    k = len(models)
    fused = copy.deepcopy(models[0])
    for name, mod in list(fused.named_modules()):
        if name and len(list(mod.children())):  # containers hold no tensors of their own
            if any(t is not None for t in [*mod._parameters.values(), *mod._buffers.values()]):
                raise TypeError(f"cannot fuse {name!r}: a container holding tensors")
            continue
        new = _fused_module(mod, [m.get_submodule(name) for m in models], k)
        if new is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(fused.get_submodule(parent), leaf, new)
    return fused


def _alias_members(fused: nn.Module, models: Sequence[nn.Module]) -> None:
    """Point every member's parameters and buffers at its slice of the fused tensors, so the
    member model reads the fused training's state as it is, with no copy."""
    k = len(models)
    for name, fmod in fused.named_modules():
        for store in ("_parameters", "_buffers"):
            for tname, ft in getattr(fmod, store).items():
                if ft is None or ft.ndim == 0:  # num_batches_tracked: synced, see sync()
                    continue
                for i, m in enumerate(models):
                    own = getattr(m.get_submodule(name), store)
                    view = ft.detach().view(k, *own[tname].shape)[i]
                    own[tname] = (
                        nn.Parameter(view, requires_grad=False) if store == "_parameters" else view
                    )


class MemberOptimizer:
    """Member k's view of the fused SGD. `state_dict` / `load_state_dict` speak the format
    of the member's own SGD (`make_optimizer` on the member model), so its checkpoint resumes
    alone or in any group; `param_groups` is the fused one (the learning rate)."""

    def __init__(
        self,
        fused: torch.optim.Optimizer,
        own: torch.optim.Optimizer,
        pairs: list[tuple[nn.Parameter, nn.Parameter]],
        index: int,
        k: int,
    ) -> None:
        self.fused, self.own, self.pairs, self.index, self.k = fused, own, pairs, index, k

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.fused.param_groups

    def _mine(self, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return t.view(self.k, *shape)[self.index]

    def state_dict(self) -> dict[str, Any]:
        self.own.state.clear()
        for fp, mp in self.pairs:
            st = self.fused.state.get(fp)
            if st:
                self.own.state[mp] = {
                    key: self._mine(v, mp.shape).clone()
                    if isinstance(v, torch.Tensor) and v.shape == fp.shape
                    else v
                    for key, v in st.items()
                }
        for og, fg in zip(self.own.param_groups, self.fused.param_groups):
            og.update({key: v for key, v in fg.items() if key != "params"})
        out = self.own.state_dict()
        self.own.state.clear()  # the state dict keeps its tensors; the optimizer needs none
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.own.load_state_dict(state)
        with torch.no_grad():
            for fp, mp in self.pairs:
                fst = self.fused.state[fp]
                for key, v in self.own.state.get(mp, {}).items():
                    if isinstance(v, torch.Tensor) and v.shape == mp.shape:
                        if not isinstance(fst.get(key), torch.Tensor):
                            fst[key] = torch.zeros_like(fp)
                        self._mine(fst[key], mp.shape).copy_(v)
                    else:
                        fst[key] = v
        for og, fg in zip(self.own.param_groups, self.fused.param_groups):
            fg.update({key: v for key, v in og.items() if key != "params"})
        self.own.state.clear()


class TrialGroup:
    """K member trials (`rp_tune.trial.train.Trial`, each built by `setup`) and the fused model
    that trains them: one optimizer, one schedule, one masks multiply per step."""

    def __init__(self, members: Sequence[Trial]) -> None:
        self.members = list(members)
        self.k = k = len(members)
        first = members[0]
        cfg, steps = first.cfg, first.data.steps
        if any(m.data.steps != steps for m in members):
            raise ConfigError(
                f"trial group members take different numbers of steps per epoch "
                f"({[m.data.steps for m in members]}); they must share data and batch size"
            )
        models = [m.model for m in members]
        self.model = fuse_models(models)
        _alias_members(self.model, models)
        self.train_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.optimizer = make_fused_optimizer(self.model, first.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, steps, cfg)
        )
        pairs_by_name = dict(self.model.named_parameters())
        # fused weights and float masks of every masked layer (members' masks concatenated)
        self.layers = list(first.masks.masks)
        self.weights = [self.model.get_submodule(n).weight for n in self.layers]
        for m in members:
            m.masks.bind(m.model)  # its weights are views now
        self.float_masks = []
        for j, w in enumerate(self.weights):
            parts = torch.cat([m.masks.bound()[1][j] for m in members])
            self.float_masks.append(torch.empty_like(w).copy_(parts.view(w.shape)))
        for i, m in enumerate(members):
            own = make_optimizer(m.model, m.cfg)
            pairs = [(pairs_by_name[n], p) for n, p in m.model.named_parameters()]
            m.optimizer = MemberOptimizer(self.optimizer, own, pairs, i, k)  # type: ignore[assignment]
            m.scheduler = self.scheduler
            m.train_model = m.model
        self.alive = [True] * k
        self.resumed_from: list[Path] | None = None  # the checkpoint folders restored
        self.errors: dict[int, str] = {}
        self.apply_masks_()

    @torch.no_grad()
    def apply_masks_(self) -> None:
        torch._foreach_mul_(self.weights, self.float_masks)

    def sync(self) -> None:
        """Members' scalar buffers (BatchNorm's num_batches_tracked) <- the fused ones."""
        fused = dict(self.model.named_buffers())
        for m in self.members:
            for name, b in m.model.named_buffers():
                if b.ndim == 0:
                    b.copy_(fused[name])

    def restored(self) -> None:
        """After the members were restored from checkpoints: fused scalar buffers <- member 0's."""
        own = dict(self.members[0].model.named_buffers())
        with torch.no_grad():
            for name, b in self.model.named_buffers():
                if b.ndim == 0:
                    b.copy_(own[name])

    def _member_grads(self, i: int) -> list[torch.Tensor]:
        return [
            w.grad.view(self.k, *s.shape)[i]
            for w, s in zip(self.weights, self.members[i].masks.bound()[0])
        ]

    def train_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """One epoch of every member at once: each member's batch from its own loader (its
        data order and augmentation), one fused forward and backward, one SGD step, one masks
        multiply; members' gradient flow from their slices; one host sync at the end."""
        first, k = self.members[0], self.k
        smoothing = first.cfg.train.label_smoothing
        device = first.device
        cl = device.type == "cuda" and first.cfg.train.channels_last
        self.train_model.train()
        alive = torch.tensor(self.alive, device=device)
        stats = torch.zeros(k, 3, device=device, dtype=torch.float64)
        t0 = time.perf_counter()
        loaders = [m.data.train.epoch(epoch) for m in self.members]
        lr_sum, steps = 0.0, 0  # the rates the epoch trained at, as a trial alone logs them
        for i, batches in enumerate(zip(*loaders)):
            step = epoch * first.data.steps + i
            x = torch.cat([m.normalize(b[0]) for m, b in zip(self.members, batches)], dim=1)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.stack([b[1] for b in batches])  # [K, B]
            b = y.shape[1]
            with first.autocast():
                logits = self.train_model(x).view(b, k, -1).transpose(0, 1)  # [K, B, classes]
                per_sample = F.cross_entropy(
                    logits.float().reshape(k * b, -1),
                    y.reshape(-1),
                    reduction="none",
                    label_smoothing=smoothing,
                )
                losses = per_sample.view(k, b).mean(1)
            self.optimizer.zero_grad(set_to_none=True)
            losses.masked_fill(~alive, 0.0).sum().backward()
            for j, m in enumerate(self.members):
                if self.alive[j] and m.flow.due(step):
                    m.flow.after_backward(step, self._member_grads(j))
            self.optimizer.step()
            lr_sum, steps = lr_sum + self.optimizer.param_groups[0]["lr"], steps + 1
            self.scheduler.step()
            self.apply_masks_()
            stats[:, 0] += losses.detach().double() * b
            stats[:, 1] += (logits.detach().argmax(-1) == y).sum(1)
            stats[:, 2] += b
        rows_stats = stats.tolist()  # the one host sync of the epoch
        for m in self.members:
            m.flow.end_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        rows = []
        for m, (loss_sum, correct, n) in zip(self.members, rows_stats):
            rows.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / n,
                    "train_acc": correct / n,
                    "lr": lr_sum / max(steps, 1),
                    "epoch_seconds": seconds,  # the group's epoch: every member trained in it
                    "images_per_second": n / seconds,
                    "epoch_train_flops": step_flops(m) * n,  # fixed masks: one rate all epoch
                }
            )
            m.train_flops += rows[-1]["epoch_train_flops"]
        return rows


def make_fused_optimizer(fused: nn.Module, member: nn.Module, cfg: TrialConfig) -> torch.optim.SGD:
    """`rp_tune.trial.train.make_optimizer`'s SGD over the fused tensors, each in the weight-decay
    group its member tensor has (by the member's ndim: a fused bias is [K, out], not 1-d)."""
    t = cfg.train
    own = dict(member.named_parameters())
    decay, no_decay = [], []
    for name, p in fused.named_parameters():
        (decay if t.bn_weight_decay or own[name].ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}]
    if not t.bn_weight_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)


# --------------------------------------------------------------------------------------------
# Running a group
# --------------------------------------------------------------------------------------------


def group_checkpoints(out_dirs: Sequence[str | os.PathLike]) -> list[Path] | None:
    """Each member's checkpoint folder of the newest epoch that every member has a readable
    checkpoint of (a group saves all members at once; a stop between two members' saves
    leaves the previous epoch as the common one), or None."""
    epochs: list[dict[int, Path]] = []
    for out in out_dirs:
        found = {}
        for folder in sorted((Path(out) / "checkpoints").glob("epoch_*")):
            try:
                found[int(read_checkpoint(folder)["epoch"])] = folder
            except (CheckpointError, ValueError):
                log.warning("checkpoint cannot be read, passed over: %s", folder)
        epochs.append(found)
    common = set.intersection(*(set(e) for e in epochs)) if epochs else set()
    if not common:
        return None
    best = max(common)
    return [e[best] for e in epochs]


def read_group_checkpoint(folder: str | os.PathLike) -> tuple[int, dict[str, str]]:
    """(epoch, stopped members: run key -> why) of a trial group's checkpoint folder (see
    `rp_tune.core.layout`), after checking that every member's checkpoint in it reads back and all
    are of one epoch; CheckpointError naming the folder and the problem otherwise."""
    folder = Path(folder)
    failed_file = folder / FAILED_MEMBERS_FILE
    try:
        failed = json.loads(failed_file.read_text()) if failed_file.is_file() else {}
    except ValueError as e:
        raise CheckpointError(f"{failed_file}: {e}") from None
    members = sorted(p for p in (folder / MEMBERS_DIR).glob("*") if p.is_dir())
    if not members:
        raise CheckpointError(f"{folder}: no {MEMBERS_DIR}/<run key>/ checkpoint in it")
    epochs = {p.name: int(read_checkpoint(p)["epoch"]) for p in members}
    if len(set(epochs.values())) > 1:
        raise CheckpointError(f"{folder}: its members' checkpoints differ in epoch: {epochs}")
    return next(iter(epochs.values())), failed


def build_group(
    cfgs: Sequence[TrialConfig],
    out_dirs: Sequence[str | os.PathLike],
    *,
    keys: Sequence[str] | None = None,
    resume: Sequence[str | os.PathLike] | None = None,
    device: str | torch.device | None = None,
) -> TrialGroup:
    """Set up every member as a trial alone would be (data, masks from its scheme and seed, or
    from its checkpoint), fuse them, and restore them from `resume` (one checkpoint folder per
    member, all of one epoch)."""
    check_group(cfgs)
    if len(out_dirs) != len(cfgs) or (keys is not None and len(keys) != len(cfgs)):
        raise ValueError("one out_dir (and key) per member")
    keys = list(keys) if keys is not None else [run_key(c) for c in cfgs]
    states = None
    if resume is not None:
        states = [_state_of(folder, key) for folder, key in zip(resume, keys)]
        if len({int(s["epoch"]) for s in states}) > 1:
            raise ValueError(
                f"a group resumes from checkpoints of one epoch, not {[s['epoch'] for s in states]}"
            )
    shared: dict[Any, Any] = {}
    members = [
        setup(
            cfg,
            Path(out),
            key,
            device,
            masks_from=None if resume is None else resume[i],
            shared_data=shared,
        )
        for i, (cfg, out, key) in enumerate(zip(cfgs, out_dirs, keys))
    ]
    group = TrialGroup(members)
    group.resumed_from = [Path(f) for f in resume] if resume is not None else None
    if states is not None:
        for m, state, folder in zip(members, states, resume):
            restore(m, state, folder)
        group.restored()
    return group


def _state_of(folder: str | os.PathLike, key: str) -> dict[str, Any]:
    state = read_checkpoint(folder)
    if state["run_key"] != key:
        raise ValueError(f"checkpoint {folder} belongs to run {state['run_key']!r}, not {key!r}")
    return state


def train_group(
    group: TrialGroup,
    *,
    on_epoch: MemberCallback | None = None,
    on_failure: FailureCallback | None = None,
    on_group_epoch: Callable[[int], None] | None = None,
    keep_checkpoints: int = 2,
    stop_after: int | None = None,
    save_weights: bool = False,
) -> list[dict[str, Any]]:
    """Train the group to the end (or `stop_after` more epochs). Per member, as `run_trial`
    does for a trial alone: validation, best-validation state, final evaluation, checkpoint
    in its own folder, `on_epoch(index, row, folder)`. A member whose training loss is not
    finite is stopped: `on_failure(index, message)`, and its result is {"failed": message}.
    `on_group_epoch(epoch)` after every member's part of an epoch (the sweep reports there)."""
    members = group.members
    cfg = members[0].cfg
    epochs = cfg.train.epochs
    start = members[0].start_epoch
    end = epochs if stop_after is None else min(epochs, start + stop_after)
    if start >= epochs and group.resumed_from:  # finished, but maybe never seen: see run_trial
        for i, m in enumerate(members):
            if m.history and on_epoch is not None:
                on_epoch(i, dict(m.history[-1]), group.resumed_from[i])
        if on_group_epoch is not None:
            on_group_epoch(epochs)
    for epoch in range(start, end):
        if not any(group.alive):
            break
        rows = group.train_epoch(epoch)
        group.sync()
        stopped = []
        for i, (m, row) in enumerate(zip(members, rows)):
            if group.alive[i] and not math.isfinite(row["train_loss"]):
                group.alive[i] = False
                group.errors[i] = (
                    f"{m.key}: training loss is {row['train_loss']} in epoch {epoch + 1}: the "
                    "member diverged and was stopped (the group's other members go on)"
                )
                log.error("%s", group.errors[i])
                stopped.append(i)
                if on_failure is not None:
                    on_failure(i, group.errors[i])
        for i, (m, row) in enumerate(zip(members, rows)):
            if not group.alive[i]:
                continue
            row.update(validate(m, epoch))
            if epoch + 1 == epochs:
                row.update(final_evaluation(m))
                row.update(time_spent([*m.history, row]))
                row["group_size"] = group.k
                row.update(environment(m.device))
            m.history.append(dict(row))
            # a member stopped this epoch: checkpoint the rest now, so that a resume from
            # here knows it stopped and never trains it again
            due = (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 in (epochs, end)
            due = due or bool(stopped)
            folder = save_checkpoint(m, epoch + 1, keep_checkpoints, save_weights) if due else None
            report(m, row, folder, None if on_epoch is None else _bind(on_epoch, i))
        if on_group_epoch is not None:
            on_group_epoch(epoch + 1)
    results = []
    for i, m in enumerate(members):
        if not group.alive[i]:
            results.append({"failed": group.errors[i], "run_key": m.key, "history": m.history})
        elif end < epochs:
            results.append({"epoch": end, "stopped": True, "history": m.history})
        else:
            results.append(
                {
                    **m.history[-1],
                    "history": m.history,
                    "grad_flow": m.flow.state_dict(),
                    "run_key": m.key,
                }
            )
    return results


def _bind(on_epoch: MemberCallback, i: int) -> Callable[[dict[str, Any], Path | None], None]:
    return lambda row, folder: on_epoch(i, row, folder)


def run_group(
    cfgs: Sequence[TrialConfig],
    out_dirs: Sequence[str | os.PathLike],
    *,
    keys: Sequence[str] | None = None,
    resume: Sequence[str | os.PathLike] | None = None,
    on_epoch: MemberCallback | None = None,
    on_failure: FailureCallback | None = None,
    on_group_epoch: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
    keep_checkpoints: int = 2,
    stop_after: int | None = None,
    save_weights: bool = False,
) -> list[dict[str, Any]]:
    """Train `cfgs` as one trial group; a result per member (see `train_group`)."""
    group = build_group(cfgs, out_dirs, keys=keys, resume=resume, device=device)
    return train_group(
        group,
        on_epoch=on_epoch,
        on_failure=on_failure,
        on_group_epoch=on_group_epoch,
        keep_checkpoints=keep_checkpoints,
        stop_after=stop_after,
        save_weights=save_weights,
    )
