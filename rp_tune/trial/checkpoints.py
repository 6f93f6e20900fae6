"""A trial's checkpoints: written atomically every few epochs (`state.pt` for resuming,
`artifacts/` in open formats for trackers), read back with checks, restored into a trial.

A checkpoint holds model, optimizer, scheduler, masks, all RNG states, epoch and the best-
validation state; batches of an epoch are a pure function of (seed, epoch), so a run resumed
from epoch k continues exactly as an unbroken one (bit-for-bit on CPU in deterministic mode).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import torch

from rp_tune.core.layout import (
    ARTIFACTS_DIR,
    CHECKPOINT_FILE,
    DENSITY_REPORT_FILE,
    GRAD_FLOW_FILE,
    HISTORY_FILE,
    MASKS_FILE,
    WEIGHTS_FILE,
)
from rp_tune.sparsity.masks import Masks, density_report, report_table
from rp_tune.trial.state import Trial

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read back (truncated, damaged, not ours)."""


def read_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """The state of a checkpoint folder, after checking that all of it reads: `state.pt`
    (model, optimizer, epoch, run key) and `masks.parquet` (its checksums); CheckpointError
    naming the folder and the problem otherwise."""
    folder = Path(folder)
    try:
        state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, unpickling error, missing file
        raise CheckpointError(f"{folder / CHECKPOINT_FILE}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / CHECKPOINT_FILE}: not a trial checkpoint")
    missing = [k for k in ("run_key", "epoch", "model", "optimizer") if k not in state]
    if missing:
        raise CheckpointError(f"{folder / CHECKPOINT_FILE}: not a trial checkpoint ({missing})")
    try:
        Masks.load(checkpoint_masks_file(folder))
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    return state


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest `checkpoints/epoch_NNNN` folder under out_dir that reads back, or None;
    a newer one that does not is logged by path and passed over."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for folder in sorted(root.glob("epoch_*"), reverse=True):
        try:
            read_checkpoint(folder)
            return folder
        except CheckpointError as e:
            log.warning("checkpoint cannot be read, using an older one: %s", e)
    return None


def resume_state(resume: str | os.PathLike, key: str) -> dict[str, Any]:
    path = Path(resume) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["run_key"] != key:
        raise ValueError(f"checkpoint {resume} belongs to run {state['run_key']!r}, not {key!r}")
    return state


def restore(trial: Trial, state: dict[str, Any], folder: str | os.PathLike) -> None:
    """Model, optimizer, schedule, RNG, best-validation state, history, gradient flow and
    DST state from a checkpoint's state (its masks were read at setup)."""
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    trial.start_epoch, trial.best, trial.history = state["epoch"], state["best"], state["history"]
    trial.train_flops = sum(float(h.get("epoch_train_flops", 0.0)) for h in trial.history)
    trial.flops_complete = all("epoch_train_flops" in h for h in trial.history)
    if not trial.flops_complete:
        log.warning(
            "%s: its checkpoint's epochs carry no epoch_train_flops (an older "
            "release); train_flops_sparse will price every epoch at the final "
            "masks",
            trial.key,
        )
    trial.flow.load_state_dict(state.get("grad_flow", []))
    own = trial.method.state_key
    if own and state.get(own):
        trial.method.load_state_dict(state[own])
    log.info("resumed %s at epoch %d from %s", trial.key, trial.start_epoch, folder)


def owned(state: dict[str, Any]) -> dict[str, Any]:
    """The state with every tensor that views a larger storage cloned: `torch.save` writes a
    view's whole storage, so a trial-group member's weights (views into the fused model's)
    would otherwise carry every member's."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.untyped_storage().nbytes() > v.nbytes:
            v = v.detach().clone()
        out[k] = v
    return out


def checkpoint_masks_file(folder: Path) -> Path:
    """A checkpoint's masks: `artifacts/masks.parquet` (checkpoints of releases before the
    artifacts folder kept it at the top: read either)."""
    new = folder / ARTIFACTS_DIR / MASKS_FILE
    return new if new.is_file() or not (folder / MASKS_FILE).is_file() else folder / MASKS_FILE


def save_checkpoint(trial: Trial, epoch: int, keep: int, save_weights: bool = False) -> Path:
    """Write checkpoints/epoch_NNNN atomically (temp folder, then rename); keep the last `keep`.

    `state.pt` holds what resuming needs (model, optimizer, schedule, RNG, best-validation
    state, history, gradient flow, DST state; read by `read_checkpoint`). `artifacts/` holds
    what trackers log, in open formats, so that they need not know `state.pt`: the masks
    (Parquet), the per-layer density report (CSV), the history (JSON), the gradient flow
    (CSV), and with save_weights on the last epoch the weights (`final_weights.pt`).
    """
    t = trial
    root = t.out_dir / "checkpoints"
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".tmp_epoch_{epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ARTIFACTS_DIR).mkdir(parents=True)
    torch.save(
        {
            "run_key": t.key,
            "config": t.cfg.to_flat(),
            "epoch": epoch,
            "model": owned(t.model.state_dict()),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "rng": rng_state(),
            "best": t.best,
            "history": t.history,
            "grad_flow": t.flow.state_dict(),
            **(
                {own: state}
                if (own := t.method.state_key) and (state := t.method.state_dict())
                else {}
            ),
        },
        tmp / CHECKPOINT_FILE,
    )
    art = tmp / ARTIFACTS_DIR
    t.masks.save(art / MASKS_FILE)
    pacsv.write_csv(report_table(density_report(t.masks, t.model)), art / DENSITY_REPORT_FILE)
    (art / HISTORY_FILE).write_text(json.dumps(t.history, default=float))
    (art / GRAD_FLOW_FILE).write_text(
        "step,kept_grad_norm\n" + "".join(f"{int(a)},{b!r}\n" for a, b in t.flow.history)
    )
    t.method.write_artifacts(t, art)
    if save_weights and epoch == t.cfg.total_epochs:
        torch.save(owned(t.model.state_dict()), art / WEIGHTS_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("epoch_*") if p != final)[: -max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final
