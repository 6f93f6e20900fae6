"""Every metric against values computed by hand on a handful of examples."""

import math
import types

import pytest
import torch
from torch import nn

from rp_tune.config import from_flat
from rp_tune.models import build_model, layer_specs
from rp_tune.sparsity import layer_densities
from rp_tune.sparsity.masks import Masks
from rp_tune.trial import metrics
from rp_tune.trial.train import run_trial
from tests.helpers import write_tiny_cifar10


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_accuracy_and_nll():
    logits = _logits([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 1])
    assert metrics.accuracy(logits, labels) == pytest.approx(1 / 3)
    assert metrics.nll(logits, labels) == pytest.approx(
        -(math.log(0.9) + math.log(0.4) + math.log(0.3)) / 3, rel=1e-6
    )


def test_ece_four_predictions_in_four_bins():
    # confidences 0.9, 0.62, 0.81, 0.58 fall in bins 13, 9, 12, 8 of 15; correct, wrong, ok, ok
    logits = _logits([[0.9, 0.1], [0.62, 0.38], [0.19, 0.81], [0.58, 0.42]])
    labels = torch.tensor([0, 1, 1, 0])
    expected = (abs(1 - 0.9) + abs(0 - 0.62) + abs(1 - 0.81) + abs(1 - 0.58)) / 4
    assert metrics.ece(logits, labels) == pytest.approx(expected, abs=1e-6)


def test_ece_shared_bin_averages_first():
    # 0.9 (correct) and 0.92 (wrong) share bin 13: |0.5 - 0.91| * 2/2
    logits = _logits([[0.9, 0.1], [0.92, 0.08]])
    labels = torch.tensor([0, 1])
    assert metrics.ece(logits, labels) == pytest.approx(0.41, abs=1e-6)


def test_auroc_three_and_three():
    inside = torch.tensor([0.9, 0.8, 0.4])
    outside = torch.tensor([0.7, 0.3, 0.4])
    # pairs won: 3 + 3 + (0 + 1 + 0.5 tie) = 7.5 of 9
    assert metrics.ood_auroc(inside, outside) == pytest.approx(7.5 / 9)


def test_fgsm_on_a_linear_model_matches_closed_form():
    # 2 classes, logits = W x. For y = 0: grad_x CE = p1 (W1 - W0), p1 > 0, so
    # x' = clip(x + eps * sign(W1 - W0), 0, 1).
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, -0.5, 3.0 - 1e-3]])
    x = torch.tensor([[0.5, 0.99, 0.01, 0.5]])
    y = torch.tensor([0])
    eps = 8 / 255
    adv = metrics.fgsm(lambda v: v @ w.T, x, y, eps)
    expected = (x + eps * torch.sign(w[1] - w[0])).clamp(0, 1)
    assert torch.allclose(adv, expected)
    assert adv[0, 1] == 1.0  # clipped


def test_gradient_flow_over_kept_weights_only():
    grads = [torch.ones(2, 2), torch.full((3,), 2.0)]
    masks = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 0.0, 0.0])]
    # kept gradient entries: 1, 1, 2 -> sqrt(6)
    assert metrics.kept_grad_norm(grads, masks).item() == pytest.approx(math.sqrt(6))


def test_gaussian_noise_images_are_seeded_and_clipped():
    g = torch.Generator().manual_seed(0)
    x = metrics.gaussian_noise_images(100, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), g)
    assert x.shape == (100, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert x.mean().item() == pytest.approx(0.5, abs=0.01)


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_flops_and_params_of_one_conv():
    model = OneConv()
    # 8x8 output pixels x 8 channels, each 3*3*3 multiply-adds = 2 FLOPs
    dense = 2 * 8 * 8 * 8 * 27
    total, per = metrics.layer_flops(model, (3, 8, 8))
    assert total == dense and per["conv"] == dense
    c = metrics.cost(model, {"conv": 0.25}, (3, 8, 8), train_images=10)
    assert c["flops_dense"] == dense and c["flops_sparse"] == dense / 4
    assert c["params_dense"] == 8 * 27 + 8 and c["params_sparse"] == 8 * 27 / 4 + 8
    assert c["train_flops_sparse"] == 3 * dense / 4 * 10


def test_training_flops_per_image_count_forward_and_both_gradients_by_hand():
    per = {"a": 40, "b": 20}  # FLOPs of the masked layers; 40 more elsewhere (BN, pool)
    assert metrics.sparse_flops(100, per, {"a": 0.5, "b": 0.25}) == 100 - 20 - 15
    # a sparse step: forward, activation gradient, weight gradient, each f(p) = 65
    assert metrics.train_flops_per_image(100, per, {"a": 0.5, "b": 0.25}) == 3 * 65
    # a RigL update step: the weight gradient dense (Evci et al.: 2 f_S + f_D)
    dense = {"a": 1.0, "b": 1.0}
    assert metrics.train_flops_per_image(100, per, {"a": 0.5, "b": 0.25}, dense) == 2 * 65 + 100
    # strong-ticket scores: the gradient over the source (a 0.75, b 0.5: f = 100 - 10 - 10)
    source = {"a": 0.75, "b": 0.5}
    assert metrics.train_flops_per_image(100, per, {"a": 0.5, "b": 0.25}, source) == 130 + 80


def test_resnet20_dense_vs_sparse_cost_follows_masks():
    model = build_model("cifar_resnet_20")
    specs = layer_specs(model)
    masks = Masks.random(layer_densities("erk", specs, 0.1), seed=0)
    dens = {n: int(m.sum()) / m.numel() for n, m in masks.masks.items()}
    sparse = metrics.cost(model, dens, (3, 32, 32), 1)
    dense = metrics.cost(model, {s.name: 1.0 for s in specs}, (3, 32, 32), 1)
    masked_total = sum(s.numel for s in specs)
    other = dense["params_dense"] - masked_total  # BN and classifier bias: never masked
    assert dense["params_sparse"] == dense["params_dense"]
    assert (sparse["params_sparse"] - other) / masked_total == pytest.approx(0.1, abs=1e-5)
    _, per = metrics.layer_flops(model, (3, 32, 32))
    expected = dense["flops_dense"] - sum((1 - dens[n]) * per[n] for n in dens)
    assert sparse["flops_sparse"] == pytest.approx(expected)
    assert sparse["flops_sparse"] < 0.3 * dense["flops_dense"]
    assert dense["flops_sparse"] == dense["flops_dense"]


def _ood_cfg(root, **over):
    flat = {
        "data.name": "synthetic",
        "data.root": str(root),
        "data.synthetic_train": 200,
        "data.synthetic_test": 40,
        "model.name": "cifar_resnet_8",
        "train.epochs": 1,
        "train.batch_size": 30,
        "evaluation.grad_flow_every": 2,
        "evaluation.ood_sets": ["cifar100", "svhn", "gaussian"],
    }
    return from_flat({**flat, **over})


def test_trial_reports_every_metric_and_its_ood_sets(tmp_path):
    # CIFAR-100 and SVHN present (tiny, in their real on-disk formats)
    from rp_tune.data import synthetic_arrays, write_cifar_batches, write_svhn_split

    x, y = synthetic_arrays(50, 100, 9)
    write_cifar_batches(
        tmp_path / "data", (x, y), (x, y), [f"c{i}" for i in range(100)], kind="cifar100"
    )
    sx, sy = synthetic_arrays(30, 10, 4, "test")
    write_svhn_split(tmp_path / "data", "test", sx, sy)
    r = run_trial(_ood_cfg(tmp_path / "data"), tmp_path / "run")
    for key in (
        "test_acc",
        "test_loss",
        "test_ece",
        "val_ece",
        "fgsm_acc",
        "test_acc_best_val",
        "ood_auroc_cifar100",
        "ood_auroc_svhn",
        "ood_auroc_gaussian",
        "params_dense",
        "params_sparse",
        "flops_dense",
        "flops_sparse",
        "train_flops_dense",
        "train_flops_sparse",
    ):
        assert key in r and isinstance(r[key], float), key
    assert r["ood_used"] == "cifar100,svhn,gaussian"
    assert [s for s, _ in r["grad_flow"]] == [0, 2, 4]
    # 180 training images after the 10% validation split: 6 steps of 30
    assert r["train_flops_sparse"] == pytest.approx(3 * r["flops_sparse"] * 6 * 30)


def test_a_missing_ood_set_fails_the_trial_before_it_trains(tmp_path):
    """OoD sets are data the trial needs: absent, the trial stops at setup (nothing trained,
    nothing written), naming the set and the switch that would download it."""
    from rp_tune.data import DataError, synthetic_arrays, write_cifar_batches

    x, y = synthetic_arrays(50, 100, 9)
    write_cifar_batches(
        tmp_path / "data", (x, y), (x, y), [f"c{i}" for i in range(100)], kind="cifar100"
    )
    with pytest.raises(DataError) as e:
        run_trial(_ood_cfg(tmp_path / "data"), tmp_path / "run")
    assert "dataset svhn at data.root=" in str(e.value)
    assert "--set evaluation.ood_download=true" in str(e.value)
    assert "data.download" not in str(e.value)
    assert "--set evaluation.ood_sets=gaussian" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_cifar10_trial_uses_cifar100_ood(tmp_path):
    write_tiny_cifar10(tmp_path, n_train=100, n_test=20)
    cfg = from_flat(
        {
            "data.name": "cifar10",
            "data.root": str(tmp_path),
            "train.epochs": 1,
            "model.name": "cifar_resnet_8",
            "train.batch_size": 30,
            "evaluation.ood_sets": ["gaussian"],
            "evaluation.fgsm": False,
            "data.download": False,
        }
    )
    r = run_trial(cfg, tmp_path / "run")
    assert r["ood_used"] == "gaussian" and "fgsm_acc" not in r
    assert 0.0 <= r["ood_auroc_gaussian"] <= 1.0


def test_top5_accuracy_by_hand():
    from rp_tune.trial.metrics import top5_accuracy

    logits = torch.tensor(
        [
            [9.0, 8, 7, 6, 5, 4, 3],  # label 4: 5th largest -> counted
            [9.0, 8, 7, 6, 5, 4, 3],  # label 5: 6th -> not
            [0.0, 0, 0, 0, 0, 0, 1],  # label 6: top-1
            [1.0, 2, 3, 4, 5, 6, 7],  # label 0: last -> not
        ]
    )
    assert top5_accuracy(logits, torch.tensor([4, 5, 6, 0])) == 0.5
    # fewer than 5 classes: every label is in the top k
    assert top5_accuracy(torch.randn(3, 4), torch.tensor([0, 1, 3])) == 1.0


def test_the_registry_declares_each_metric_once_and_finds_families():
    from rp_tune.trial.metrics import EPOCH, FINAL, METRICS, metric, numeric_metrics, unregistered

    assert all(m.when in (EPOCH, FINAL) for m in METRICS.values())
    assert all(m.better in ("higher", "lower", None) for m in METRICS.values())
    assert metric("ood_auroc_svhn").name == "ood_auroc_" and metric("nope") is None
    row = {"epoch": 3, "train_loss": 0.5, "test_acc": 0.9, "ood_used": "svhn", "flag": True,
           "my_new_metric": 1.0}  # fmt: skip
    assert numeric_metrics(row, EPOCH) == {"train_loss": 0.5}
    assert numeric_metrics(row, FINAL) == {"test_acc": 0.9}
    assert unregistered(row) == ["my_new_metric"]
    # top-5: on ImageNet always, elsewhere when asked (evaluation.top5)
    top5 = METRICS["test_top5"]

    def cfg(name, top5=False):
        return types.SimpleNamespace(data=types.SimpleNamespace(name=name),
                                     evaluation=types.SimpleNamespace(top5=top5))  # fmt: skip

    assert top5.applies(cfg("imagenet")) and top5.applies(cfg("cifar10", top5=True))
    assert not top5.applies(cfg("cifar10"))
    assert (
        metric("fgsm_acc_eps0.0157").name == "fgsm_acc_eps" and metric("fgsm_acc").family is False
    )
