"""Strong lottery tickets inside a random source mask (sparsity.mode=slt): weights untouched,
exact per-level counts inside the source, learning on learnable data, exact resume."""

import pytest
import torch

from rp_tune.config import ConfigError, from_flat, run_key
from rp_tune.core.layout import ARTIFACTS_DIR, CHECKPOINT_FILE
from rp_tune.core.seeds import derived_seed
from rp_tune.methods.slt import level_densities
from rp_tune.models import build_model, prunable_layers
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.checkpoints import checkpoint_masks_file, latest_checkpoint
from rp_tune.trial.train import run_trial
from tests.helpers import QUICK_TRIAL

SLT = {
    **QUICK_TRIAL,
    "data.synthetic_test": 128,
    "sparsity.scheme": "er",
    "sparsity.mode": "slt",
    "sparsity.start_density": 0.5,
    "sparsity.density": 0.1,
    "sparsity.levels": 3,
    "train.epochs": 2,
    "train.lr": 0.1,
    "train.milestones": (1,),
}


def _cfg(**over):
    return from_flat({**SLT, **over})


@pytest.fixture(scope="module")
def slt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("slt")
    cfg = _cfg()
    full = run_trial(cfg, root / "full", keep_checkpoints=6)
    return cfg, root, full


def test_level_densities_anneal_from_the_source_to_the_target():
    assert level_densities(0.5, 0.1, 1) == (0.1,)
    d = level_densities(0.5, 0.05, 5)
    assert d[-1] == 0.05 and all(a > b for a, b in zip((0.5, *d), d))
    assert d[0] == pytest.approx(0.5 * 0.1 ** (1 / 5))


def test_weights_stay_bit_identical_and_every_level_keeps_its_count_inside_the_source(slt_run):
    cfg, root, full = slt_run
    assert cfg.total_epochs == 3 * 2 and [h["slt_level"] for h in full["history"]] == [
        0, 0, 1, 1, 2, 2]  # fmt: skip
    # the model's initialization, rebuilt from the seed: what the weights were at the start
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed_of("init"), "init"))
        init = build_model(cfg.model.name, 10)
    init_w = {n: m.weight.detach() for n, m in prunable_layers(init)}
    source = Masks.load(root / "full" / "masks.parquet")  # the random source, drawn at setup
    total = source.total()
    assert sum(source.kept().values()) == round(0.5 * total)
    for level, d in enumerate(level_densities(0.5, 0.1, 3)):
        folder = root / "full" / "checkpoints" / f"epoch_{2 * level + 2:04d}"
        state = torch.load(folder / CHECKPOINT_FILE, weights_only=False)
        subnet = Masks.load(checkpoint_masks_file(folder))
        assert sum(subnet.kept().values()) == round(d * total)  # exact at every level
        for name, m in subnet.masks.items():
            assert not (m & ~source.masks[name]).any(), name  # inside the source
            # the weights computed with: the initialization itself where kept, 0 elsewhere
            w = state["model"][f"{name}.weight"]
            assert torch.equal(w[m], init_w[name][m]) and not w[~m].any(), name
            assert torch.equal(state["slt"]["initial"][list(subnet.masks).index(name)],
                               init_w[name] * source.masks[name])  # fmt: skip
        # BatchNorm's affine parameters never moved; the classifier's bias is 0
        bns = [n for n, m in init.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for n in bns:
            for k in (f"{n}.weight", f"{n}.bias"):
                assert torch.equal(state["model"][k], init.state_dict()[k]), k
        assert not state["model"]["fc.bias"].any()
    final = Masks.load(latest_checkpoint(root / "full") / ARTIFACTS_DIR / "masks.parquet")
    assert final.density() == pytest.approx(round(0.1 * total) / total)
    assert full["achieved_density"] == pytest.approx(final.density())


def test_slt_learns_learnable_data_with_its_weights_frozen(slt_run):
    cfg, _, full = slt_run
    assert full["test_acc"] > 0.3  # 10 classes: chance is 0.1
    assert full["history"][-1]["train_loss"] < full["history"][0]["train_loss"]
    # model selection within the last level: the best-validation model is at the target
    assert full["best_epoch"] in (5, 6)
    assert [h["slt_density"] for h in full["history"]][-1] == pytest.approx(
        full["achieved_density"]
    )


def test_training_flops_follow_each_level_and_the_score_gradient_covers_the_source(slt_run):
    from rp_tune.trial import metrics

    cfg, root, full = slt_run
    source = Masks.load(root / "full" / "masks.parquet")
    total, per = metrics.layer_flops(build_model(cfg.model.name, 10), (3, 32, 32))
    f_source = metrics.sparse_flops(total, per, {n: int(m.sum()) / m.numel()
                                                 for n, m in source.masks.items()})  # fmt: skip
    epochs = [h["epoch_train_flops"] for h in full["history"]]
    # the last level computes with the final subnetwork; its scores' gradient covers the
    # source: 2 f(subnet) + f(source) per image, 7 batches of 32 an epoch
    assert epochs[-1] == pytest.approx(7 * 32 * (2 * full["flops_sparse"] + f_source))
    assert epochs[0] == epochs[1] > epochs[2] == epochs[3] > epochs[4] == epochs[5]
    assert full["train_flops_sparse"] == pytest.approx(sum(epochs))


def test_resume_mid_level_is_exact(slt_run, tmp_path):
    cfg, root, full = slt_run
    part = run_trial(cfg, tmp_path / "part", stop_after=3)  # stops inside level 1
    assert part["stopped"]
    resumed = run_trial(cfg, tmp_path / "part", resume=latest_checkpoint(tmp_path / "part"))
    assert [h["train_loss"] for h in resumed["history"]] == [
        h["train_loss"] for h in full["history"]
    ]
    assert resumed["test_acc"] == full["test_acc"]
    assert resumed["train_flops_sparse"] == pytest.approx(full["train_flops_sparse"])
    a = Masks.load(latest_checkpoint(root / "full") / ARTIFACTS_DIR / "masks.parquet")
    b = Masks.load(latest_checkpoint(tmp_path / "part") / ARTIFACTS_DIR / "masks.parquet")
    assert a.equals(b)


@pytest.mark.parametrize(
    "over,message",
    [
        ({"sparsity.density": 0.6}, "sparsity.density=0.6 with sparsity.start_density=0.5"),
        ({"sparsity.levels": 0}, "sparsity.levels"),
        ({"sparsity.growth": "random"}, "sparsity.growth"),
        ({"sparsity.prune_fraction": 0.5}, "only iterative magnitude pruning"),
        ({"sparsity.mode": "static"}, "sparsity.start_density=0.5 with sparsity.mode='static'"),
        (
            {"sparsity.mode": "imp", "sparsity.prune_fraction": 0.5},
            "sparsity.levels=3 with sparsity.mode='imp'",
        ),
    ],
)
def test_bad_slt_configs_are_refused_with_one_message(over, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _cfg(**over)


def test_an_slt_trial_is_named_by_its_source():
    assert "-er0.5-slt-d0.1-" in run_key(_cfg())
    dense_source = _cfg(**{"sparsity.start_density": 1.0})
    assert "-dense-slt-d0.1-" in run_key(dense_source)


def test_the_slt_space_pairs_each_source_with_its_targets_and_its_smoke_trains(tmp_path):
    from rp_tune.planning.space import expand_space

    full = expand_space("slt_sparse_to_sparse")
    pairs = {(c.sparsity.start_density, c.sparsity.density) for c in full}
    assert pairs == {(0.5, 0.2), (0.5, 0.1), (0.5, 0.05), (0.5, 0.01), (0.3, 0.1),
                     (0.2, 0.05), (1.0, 0.2), (1.0, 0.1), (1.0, 0.05), (1.0, 0.01)}  # fmt: skip
    assert len(full) == 10 * 2 * 3 and all(c.total_epochs == 500 for c in full)
    assert {c.model.name for c in full} == {"cifar_resnet18", "vgg16_bn"}
    smoke = expand_space("slt_sparse_to_sparse", smoke=True)
    assert sorted((c.sparsity.start_density, c.sparsity.density) for c in smoke) == [
        (0.5, 0.1), (1.0, 0.1)]  # fmt: skip
    for i, cfg in enumerate(smoke):
        r = run_trial(cfg, tmp_path / str(i))
        assert r["epoch"] == 2 and r["achieved_density"] == pytest.approx(
            cfg.sparsity.density, abs=1e-3
        )
