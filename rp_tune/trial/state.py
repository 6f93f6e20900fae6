"""One trial in memory: what `rp_tune.trial.build.setup` builds and every phase of the loop
reads and advances.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rp_tune.config import TrialConfig
from rp_tune.core.model_names import input_size
from rp_tune.methods.base import SparseTraining
from rp_tune.sparsity.masks import Masks
from rp_tune.trial import metrics
from rp_tune.trial.evaluation import evaluate


@dataclass
class TrialData:
    train: Any
    val: Any
    test: Any
    num_classes: int
    steps: int
    resident: bool  # tensors on the device (DeviceLoader) vs DataLoader
    test_full: Any = None  # the whole test set on every rank (final metrics)


@dataclass
class Trial:
    """What `setup` builds and every phase reads and advances: one trial in memory."""

    cfg: TrialConfig
    key: str  # the run key: the sweep's stored identity, or run_key(cfg)
    out_dir: Path
    device: torch.device
    rank: int
    world: int
    bf16: bool
    data: TrialData
    ood: dict[str, Any]
    model: nn.Module
    train_model: nn.Module  # the model as trained: DDP-wrapped and/or compiled
    normalize: nn.Module
    masks: Masks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    flow: metrics.GradientFlow
    method: SparseTraining  # the sparse-training method's hooks (rp_tune.methods)
    best: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"val_acc": -1.0, "epoch": -1, "state": None}
    )
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    dataset: str = ""  # what it trains on, as JSON (`data.dataset_record`); rank 0 only
    # the dense model's FLOPs per image, total and per module (`metrics.layer_flops`), and
    # the training FLOPs of the epochs trained so far, each at its own densities
    layer_flops: tuple[float, dict[str, int]] | None = None  # set by `setup`
    train_flops: float = 0.0
    # False when resumed from a checkpoint whose epochs predate epoch_train_flops: the sum
    # would miss them, so the final count falls back to pricing every epoch at the end
    flops_complete: bool = True

    def autocast(self):
        """bf16 autocast where asked (precision bf16, or auto on CUDA), else nothing."""
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # --- what a sparse-training method asks of the trial (rp_tune.methods.base) ---------

    def reset_model_selection(self) -> None:
        """Forget the best-validation state: selection starts afresh (a new round or level)."""
        self.best = {"val_acc": -1.0, "epoch": -1, "state": None}

    def evaluate_test(self) -> dict[str, Any]:
        """Test loss and accuracy of the model as it is now."""
        return evaluate(
            self.model,
            self.normalize,
            self.data.test,
            self.device,
            self.data.resident,
            self.autocast,
        )

    def training_flops(self, densities: dict[str, float], images: int) -> float:
        """Training FLOPs of `images` images at per-layer `densities` (`metrics.cost`)."""
        size = (3, *input_size(self.cfg))
        return metrics.cost(self.model, densities, size, images, self.layer_flops)[
            "train_flops_sparse"
        ]
