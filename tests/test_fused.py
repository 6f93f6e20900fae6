"""Trial groups (rp_tune.trial.fused): K trials trained as one fused model give each member what it
would have got alone.

Stated tolerance: with oneDNN (mkldnn) convolutions off, every conv of the fused model runs
the per-group arithmetic of the member's own conv, and the CPU classifier is the member's own
`F.linear`, so weights, BatchNorm buffers, validation metrics and test metrics are bit-equal
and training losses (a per-sample mean instead of cross_entropy's reduction) agree to 1e-6.
With the default backends a grouped conv's weight gradient is summed in another order
(2e-5 relative at the first step, measured), so two epochs agree to rtol 1e-3.
"""

from __future__ import annotations

import math

import pytest
import torch

from rp_tune.config import ConfigError, from_flat, run_key
from rp_tune.models import build_model
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.checkpoints import read_checkpoint
from rp_tune.trial.fused import (
    GroupedLinear,
    build_group,
    check_group,
    fuse_models,
    group_checkpoints,
    run_group,
    train_group,
)
from rp_tune.trial.train import run_trial

BASE = {
    "model.name": "cifar_resnet_8_4",
    "data.name": "synthetic",
    "data.synthetic_train": 160,
    "data.synthetic_test": 40,
    "train.batch_size": 32,
    "train.epochs": 2,
    "train.deterministic": True,
    "resources.gpus_per_worker": 0,
    "sparsity.score_batch": 32,
}
MEMBERS = [
    {"sparsity.scheme": "erk", "sparsity.density": 0.1, "seed": 0},
    {"sparsity.scheme": "uniform", "sparsity.density": 0.5, "seed": 1},
    {"sparsity.scheme": "snip", "sparsity.density": 0.3, "seed": 2},  # data-dependent ratio
]


def _cfgs(**over):
    return [from_flat({**BASE, **m, **over}) for m in MEMBERS]


def _final(folder):
    return read_checkpoint(folder / "checkpoints" / "epoch_0002")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three trials alone, as one group, and as a group stopped after epoch 1 and
    resumed; all with oneDNN convolutions off (see the module docstring)."""
    root = tmp_path_factory.mktemp("fused")
    cfgs = _cfgs()
    out = {"cfgs": cfgs, "root": root}
    with torch.backends.mkldnn.flags(enabled=False):
        out["solo"] = [run_trial(c, root / "solo" / run_key(c), device="cpu") for c in cfgs]
        dirs = [root / "group" / run_key(c) for c in cfgs]
        seen = []
        out["group"] = run_group(
            cfgs, dirs, device="cpu", on_epoch=lambda i, row, f: seen.append((i, row["epoch"], f))
        )
        out["seen"] = seen
        broken = [root / "broken" / run_key(c) for c in cfgs]
        first = run_group(cfgs, broken, device="cpu", stop_after=1)
        out["stopped"] = first
        resume = group_checkpoints(broken)
        out["resumed_from"] = resume
        out["resumed"] = run_group(cfgs, broken, device="cpu", resume=resume)
    return out


def test_each_member_trains_as_it_would_alone(runs):
    for cfg, solo, group in zip(runs["cfgs"], runs["solo"], runs["group"]):
        assert len(solo["history"]) == len(group["history"]) == 2
        for a, b in zip(solo["history"], group["history"]):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
            assert b["train_acc"] == a["train_acc"]
            assert (b["val_loss"], b["val_acc"]) == (a["val_loss"], a["val_acc"])
        for k in ("test_acc", "test_loss", "fgsm_acc", "test_acc_best_val", "achieved_density"):
            assert group[k] == solo[k], k
        assert group["group_size"] == 3 and "group_size" not in solo
        a = _final(runs["root"] / "solo" / run_key(cfg))
        b = _final(runs["root"] / "group" / run_key(cfg))
        assert a["model"].keys() == b["model"].keys()
        for name, t in a["model"].items():
            assert torch.equal(t, b["model"][name]), name


def test_masks_equal_and_pruned_weights_exactly_zero(runs):
    for cfg in runs["cfgs"]:
        solo = runs["root"] / "solo" / run_key(cfg)
        group = runs["root"] / "group" / run_key(cfg)
        masks = Masks.load(group / "masks.parquet")
        assert masks.equals(Masks.load(solo / "masks.parquet"))
        final = _final(group)
        assert masks.equals(Masks.load(group / "checkpoints/epoch_0002/artifacts/masks.parquet"))
        for name, m in masks.masks.items():
            w = final["model"][f"{name}.weight"]
            assert torch.count_nonzero(w[~m]) == 0, name
            assert torch.count_nonzero(w[m]) > 0.9 * int(m.sum()), name
        assert masks.density() == pytest.approx(cfg.sparsity.density, abs=2e-3)


def test_member_checkpoints_are_a_trial_alones(runs):
    """Same keys and optimizer format as a trial alone, and about its size: a member's weights
    are views into the fused tensors, and a saved view would carry every member's storage."""
    for cfg in runs["cfgs"]:
        a = _final(runs["root"] / "solo" / run_key(cfg))
        b = _final(runs["root"] / "group" / run_key(cfg))
        assert a.keys() == b.keys()
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
        assert a["scheduler"] == b["scheduler"] and a["epoch"] == b["epoch"] == 2
        sizes = [
            (runs["root"] / r / run_key(cfg) / "checkpoints/epoch_0002/state.pt").stat().st_size
            for r in ("group", "solo")
        ]
        assert sizes[0] < 1.2 * sizes[1]


def test_every_member_reported_every_epoch_with_its_checkpoint(runs):
    seen = sorted((i, e) for i, e, _ in runs["seen"])
    assert seen == [(i, e) for i in range(3) for e in (1, 2)]
    for i, epoch, folder in runs["seen"]:
        assert folder.name == f"epoch_{epoch:04d}"
        assert folder.parent.parent.name == run_key(runs["cfgs"][i])


def test_resumed_group_equals_an_unbroken_one(runs):
    assert all(r.get("stopped") for r in runs["stopped"])
    assert [f.name for f in runs["resumed_from"]] == ["epoch_0001"] * 3
    for cfg, a, b in zip(runs["cfgs"], runs["group"], runs["resumed"]):
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
        assert a["test_acc"] == b["test_acc"]
        wa = _final(runs["root"] / "group" / run_key(cfg))["model"]
        wb = _final(runs["root"] / "broken" / run_key(cfg))["model"]
        for name in wa:
            assert torch.equal(wa[name], wb[name]), name


def test_a_member_checkpoint_resumes_alone(runs, tmp_path):
    """A group's epoch-1 checkpoint continued by `run_trial` alone ends where the trial
    alone ends: the checkpoint is in a trial alone's format, nothing group-specific in it."""
    cfg = runs["cfgs"][1]
    folder = runs["resumed_from"][1]
    import shutil

    out = tmp_path / run_key(cfg)
    shutil.copytree(folder.parent.parent, out)
    with torch.backends.mkldnn.flags(enabled=False):
        res = run_trial(cfg, out, device="cpu", resume=out / "checkpoints" / folder.name)
    assert res["test_acc"] == runs["solo"][1]["test_acc"]
    a = _final(runs["root"] / "solo" / run_key(cfg))["model"]
    b = _final(out)["model"]
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_diverging_member_fails_alone(runs, tmp_path):
    """Member 1's weights turned to NaN before training: it is stopped and reported failed
    after its first epoch; members 0 and 2 end bit-equal to the unbroken group's."""
    cfgs = runs["cfgs"]
    dirs = [tmp_path / run_key(c) for c in cfgs]
    failures = []
    with torch.backends.mkldnn.flags(enabled=False):
        group = build_group(cfgs, dirs, device="cpu")
        with torch.no_grad():
            group.members[1].model.conv1.weight.fill_(math.nan)  # a view: the fused tensor
        results = train_group(group, on_failure=lambda i, msg: failures.append((i, msg)))
    assert [i for i, _ in failures] == [1]
    assert (
        "training loss is nan in epoch 1" in failures[0][1] and run_key(cfgs[1]) in failures[0][1]
    )
    assert results[1]["failed"] == failures[0][1]
    assert not (dirs[1] / "checkpoints").exists()
    for i in (0, 2):
        assert results[i]["test_acc"] == runs["group"][i]["test_acc"]
        a = _final(runs["root"] / "group" / run_key(cfgs[i]))["model"]
        b = _final(dirs[i])["model"]
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_default_backends_agree_within_tolerance(tmp_path):
    cfgs = _cfgs(**{"train.epochs": 1})[:2]
    solo = [run_trial(c, tmp_path / "s" / run_key(c), device="cpu") for c in cfgs]
    group = run_group(cfgs, [tmp_path / "g" / run_key(c) for c in cfgs], device="cpu")
    for a, b in zip(solo, group):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)


def test_fused_model_is_the_members_side_by_side():
    """Forward of the fused model = each member's forward, for a ResNet and a VGG; a member's
    parameters in the fused tensors are the concatenation along dim 0."""
    for name in ("cifar_resnet_8", "vgg11_bn"):
        models = []
        for seed in range(3):
            torch.manual_seed(seed)
            models.append(build_model(name, 10).eval())
        fused = fuse_models(models).eval()
        x = torch.rand(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
            out = fused(x.permute(1, 0, 2, 3, 4).reshape(4, 9, 32, 32)).view(4, 3, 10)
            for k, m in enumerate(models):
                assert torch.equal(out[:, k], m(x[k])), (name, k)
        assert any(isinstance(m, GroupedLinear) for m in fused.modules())


def test_groups_refuse_what_they_cannot_train():
    ok = _cfgs()
    check_group(ok)
    with pytest.raises(ConfigError, match=r"sparsity\.mode=dynamic: SET/RigL"):
        check_group([ok[0], from_flat({**BASE, "sparsity.mode": "dynamic"})])
    with pytest.raises(ConfigError, match=r"resources\.workers=2: a trial group trains in one"):
        check_group([from_flat({**BASE, "resources.workers": 2})])
    with pytest.raises(ConfigError, match=r"differ only in sparsity\.\* and the seeds.*train\.lr"):
        check_group([ok[0], from_flat({**BASE, **MEMBERS[1], "train.lr": 0.05})])
    imagenet = {"data.name": "imagenet", "model.name": "resnet18", "train.recipe": "imagenet"}
    with pytest.raises(ConfigError, match=r"data\.name=imagenet"):
        check_group([from_flat(imagenet)])
    check_group([ok[0], from_flat({**BASE, "sparsity.density": 1.0, "seeds.data": 7})])


@pytest.mark.slow
def test_the_gpu_benchmark_runs_reduced_on_the_cpu(tmp_path):
    """benchmarks/fused_speed.py, the one command for a GPU check, runs its small version
    here so it cannot rot; its JSON names the machine, torch and commit (no timing asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "benchmarks/fused_speed.py", "--reduced", "--out", str(out)],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"device", "torch", "commit", "date", "cpus"} <= set(data["machine"])
    assert data["reduced"] and data["gpu_tests"]["ran"] is False
    modes = {(x["model"], x["mode"], x["k"]) for x in data["results"]}
    assert modes == {("cifar_resnet_8_4", m, k) for m, k in
                     (("alone", 1), ("fused", 1), ("fused", 2), ("packed", 2))}  # fmt: skip
    assert all(x["images_per_second"] > 0 for x in data["results"])
