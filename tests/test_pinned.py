"""Numbers of three short trials, pinned before the trial loop was reshaped into phases.

Same config, same results: if one of these moves, a change altered what a trial computes
(masks, batch order, the DST schedule, gradient flow, final metrics), not only how the code
reads. Deterministic fp32 on the CPU; tolerances allow only for float summation order,
which differs between CPUs (oneDNN and BLAS pick kernels by instruction set): pinned on one
x86 machine, an AMD EPYC gave the first epoch's loss 2e-5 away, the second's 6e-4 (two
epochs of SGD amplify it) and the weights' sum 4e-5. Another data order (seeds.data=1) moves
them by 1e-4..7e-4, 30% and 1-2%: the tolerances below tell the two apart. RigL regrows by
gradient magnitude, so a near-tie between two gradients can fall the other way on another CPU:
an Intel Xeon (AVX-512) moved one connection of the second update (281 changed, not 280) and so
the mask's positions; its masks are pinned by their per-layer counts (exact whatever the CPU),
its changes and ITOP rate to 1%.
"""

import hashlib

import pytest
import torch

from rp_tune.config import from_flat
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.checkpoints import checkpoint_masks_file, latest_checkpoint
from rp_tune.trial.metrics import unregistered
from rp_tune.trial.train import run_trial


def _cfg(**over):
    flat = {
        "model.name": "cifar_resnet_8",
        "data.name": "synthetic",
        "data.synthetic_train": 256,
        "data.synthetic_test": 64,
        "train.epochs": 2,
        "train.batch_size": 32,
        "evaluation.batch_size": 64,
        "train.deterministic": True,
        "train.precision": "fp32",
        "sparsity.scheme": "erk",
        "sparsity.density": 0.2,
        "evaluation.grad_flow_every": 2,
        "resources.gpus_per_worker": 0,
    }
    flat.update(over)
    return from_flat(flat)


FINAL_KEYS = {
    "achieved_density", "best_epoch", "best_val_acc", "epoch", "epoch_seconds", "fgsm_acc",
    "final_eval_seconds", "flops_dense", "flops_sparse", "images_per_second", "lr",
    "ood_auroc_gaussian", "ood_used", "params_dense", "params_sparse", "test_acc",
    "test_acc_best_val", "test_ece", "test_loss", "test_loss_best_val", "train_acc",
    "train_flops_dense", "train_flops_sparse", "train_loss", "val_acc", "val_ece", "val_loss",
    "val_seconds",
}  # fmt: skip
DST_KEYS = {"death_rate", "dst_changed", "dst_updates", "itop_rate"}

PINNED = {
    # name: (overrides, train losses, test acc, sum |w|, masks digest, dst_changed, itop rate)
    "static": (
        {},
        [1.543743031365531, 0.6698855289391109],
        0.59375,
        2384.9880479568433,
        "ea0d13b25079f2ef",
        None,
        None,
    ),
    "rigl": (
        {"sparsity.mode": "dynamic", "sparsity.growth": "gradient", "sparsity.update_frequency": 3},
        [1.557281732559204, 0.8394423382622855],
        0.46875,
        2369.994329677993,
        None,  # rewired by gradients: pinned by counts and changes (module docstring)
        [6423, 280],
        0.28340227507755944,
    ),
    "snip": (
        {"sparsity.scheme": "snip"},
        [1.4778955153056554, 0.6560698343174798],
        0.453125,
        2165.2110165047,
        "def308f898df4eed",
        None,
        None,
    ),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_a_short_run_gives_the_pinned_numbers(name, tmp_path):
    over, losses, test_acc, weight_sum, mask_digest, changed, itop = PINNED[name]
    result = run_trial(_cfg(**over), tmp_path / "run")
    history = result["history"]
    assert history[0]["train_loss"] == pytest.approx(losses[0], rel=5e-5)
    assert history[1]["train_loss"] == pytest.approx(losses[1], rel=3e-3)
    assert result["test_acc"] == pytest.approx(test_acc, abs=1e-9)
    expected_keys = FINAL_KEYS | (DST_KEYS if changed else set())
    assert expected_keys <= set(history[-1]), expected_keys - set(history[-1])
    assert unregistered(history[-1]) == []  # every number a trial reports is tracked
    assert len(result["grad_flow"]) == 7  # steps 0, 2, ..., 12 of 16
    ckpt = latest_checkpoint(tmp_path / "run")
    state = torch.load(ckpt / "state.pt", weights_only=False)["model"]
    total = float(sum(v.double().abs().sum() for v in state.values() if v.is_floating_point()))
    assert total == pytest.approx(weight_sum, rel=2e-4)
    masks = Masks.load(checkpoint_masks_file(ckpt))
    if changed is None:  # static masks: the positions, exactly
        bits = b"".join(masks.masks[k].numpy().tobytes() for k in sorted(masks.masks))
        assert hashlib.sha256(bits).hexdigest()[:16] == mask_digest
    else:  # rewired by gradients: the per-layer counts exactly, the rewiring to 1%
        start = Masks.load(tmp_path / "run" / "masks.parquet")
        assert masks.kept() == start.kept()
        assert [h["dst_changed"] for h in history] == pytest.approx(changed, rel=1e-2)
        assert result["itop_rate"] == pytest.approx(itop, rel=1e-2)
