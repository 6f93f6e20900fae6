"""GraNet inside a random source (sparsity.mode=granet): the cubic schedule's density at every
update exactly, regrowth kept inside the source when asked, exact resume mid-schedule."""

import pytest
import torch

from rp_tune.config import ConfigError, from_flat, run_key
from rp_tune.core.layout import ARTIFACTS_DIR, CHECKPOINT_FILE
from rp_tune.methods.granet import cubic_density
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.checkpoints import latest_checkpoint
from rp_tune.trial.train import run_trial
from tests.helpers import QUICK_TRIAL

GRANET = {
    **QUICK_TRIAL,
    "data.synthetic_test": 64,
    "sparsity.scheme": "er",
    "sparsity.mode": "granet",
    "sparsity.start_density": 0.5,
    "sparsity.density": 0.1,
    "sparsity.update_frequency": 2,
    "sparsity.prune_end": 0.75,
    "train.epochs": 3,
}


def _cfg(**over):
    return from_flat({**GRANET, **over})


def test_the_cubic_schedule_of_zhu_and_gupta():
    assert cubic_density(0, 10, 50, 0.5, 0.1) == 0.5
    assert cubic_density(50, 10, 50, 0.5, 0.1) == 0.1 == cubic_density(90, 10, 50, 0.5, 0.1)
    assert cubic_density(30, 10, 50, 0.5, 0.1) == pytest.approx(0.1 + 0.4 * 0.5**3)


@pytest.mark.parametrize("inside", [False, True])
def test_every_update_hits_the_schedules_density_exactly(tmp_path, inside):
    cfg = _cfg(**{"sparsity.regrow_in_source": inside})
    r = run_trial(cfg, tmp_path)
    state = torch.load(latest_checkpoint(tmp_path) / CHECKPOINT_FILE, weights_only=False)
    source = Masks.load(tmp_path / "masks.parquet")  # drawn at setup: ER at 0.5
    total = source.total()
    assert sum(source.kept().values()) == round(0.5 * total)
    steps = 3 * (230 // 32)  # 230 training images (10% held out), 7 full batches an epoch
    end = int(0.75 * steps)
    log = state["dst"]["densities"]
    assert [s for s, _ in log] == list(range(2, steps, 2))  # every update_frequency steps
    for step, density in log:  # after each update: the schedule's count, exactly
        expected = round(cubic_density(step, 0, end, 0.5, 0.1) * total) if step <= end else (
            round(0.1 * total))  # fmt: skip
        assert round(density * total) == expected, step
    final = Masks.load(latest_checkpoint(tmp_path) / ARTIFACTS_DIR / "masks.parquet")
    assert sum(final.kept().values()) == round(0.1 * total)
    assert r["achieved_density"] == pytest.approx(round(0.1 * total) / total)
    assert all(h["dst_changed"] >= 0 for h in r["history"]) and r["history"][0]["dst_updates"]
    # each epoch's row: the density after each of its updates, at its step
    assert [x for h in r["history"] for x in h["granet_update_density"]] == log
    csv = (latest_checkpoint(tmp_path) / ARTIFACTS_DIR / "granet_updates.csv").read_text()
    assert len(csv.strip().splitlines()) == 1 + len(log)  # an artifact: every update's density
    if inside:  # the strict reading: nothing outside the source, ever
        for name, m in final.masks.items():
            assert not (m & ~source.masks[name]).any(), name
        ever = state["dst"]["ever"]
        for name, e in zip(source.masks, ever):
            assert not (e.view(source.masks[name].shape) & ~source.masks[name]).any(), name
    weights = state["model"]
    for name, m in final.masks.items():  # pruned weights exactly zero
        assert not weights[f"{name}.weight"][~m].any(), name
    # training FLOPs: every step at the densities it computed with, the weight gradient
    # dense at each update step (regrowth by gradient), so they fall as the mask thins
    epochs = [h["epoch_train_flops"] for h in r["history"]]
    assert epochs[0] > epochs[1] > epochs[2] > 0
    assert r["train_flops_sparse"] == pytest.approx(sum(epochs))
    per_step = 3 * r["flops_sparse"] * 32  # a step at the final mask, no update
    assert epochs[2] > 7 * per_step  # the epoch starts denser and has updates


def test_training_flops_price_every_step_at_the_masks_it_computed_with(tmp_path):
    """An update every 7 steps, 7 steps an epoch: the masks change after the first step of
    epochs 2 and 3 only, so each epoch's FLOPs follow from the masks its checkpoints hold:
    that first step at the previous mask with a dense weight gradient (2 f(old) + f(dense),
    regrowth by gradient), the other 6 at 3 f(new), 32 images a step."""
    from rp_tune.models import build_model
    from rp_tune.trial import metrics
    from rp_tune.trial.checkpoints import checkpoint_masks_file

    cfg = _cfg(**{"sparsity.update_frequency": 7})
    r = run_trial(cfg, tmp_path, keep_checkpoints=3)
    dense, per = metrics.layer_flops(build_model(cfg.model.name, 10), (3, 32, 32))

    def f(masks):
        return metrics.sparse_flops(dense, per, {n: int(m.sum()) / m.numel()
                                                 for n, m in masks.masks.items()})  # fmt: skip

    source = f(Masks.load(tmp_path / "masks.parquet"))
    m2, m3 = (f(Masks.load(checkpoint_masks_file(tmp_path / "checkpoints" / f"epoch_000{e}")))
              for e in (2, 3))  # fmt: skip
    assert source > m2 > m3  # the cubic schedule pruned at both updates
    expected = [7 * 32 * 3 * source,
                32 * (2 * source + dense) + 6 * 32 * 3 * m2,
                32 * (2 * m2 + dense) + 6 * 32 * 3 * m3]  # fmt: skip
    assert [h["epoch_train_flops"] for h in r["history"]] == pytest.approx(expected)
    assert r["train_flops_sparse"] == pytest.approx(sum(expected))


def test_resume_mid_schedule_is_exact(tmp_path):
    cfg = _cfg()
    full = run_trial(cfg, tmp_path / "full")
    part = run_trial(cfg, tmp_path / "part", stop_after=1)
    assert part["stopped"]
    resumed = run_trial(cfg, tmp_path / "part", resume=latest_checkpoint(tmp_path / "part"))
    assert [h["train_loss"] for h in resumed["history"]] == [
        h["train_loss"] for h in full["history"]
    ]
    a = torch.load(latest_checkpoint(tmp_path / "full") / CHECKPOINT_FILE, weights_only=False)
    b = torch.load(latest_checkpoint(tmp_path / "part") / CHECKPOINT_FILE, weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["dst"]["densities"] == b["dst"]["densities"]
    assert resumed["train_flops_sparse"] == pytest.approx(full["train_flops_sparse"])


@pytest.mark.parametrize(
    "over,message",
    [
        ({"sparsity.density": 0.5}, "sparsity.density=0.5 with sparsity.start_density=0.5"),
        ({"sparsity.prune_end": 1.2}, "end before or at its end"),
        ({"sparsity.prune_start": 0.8}, "0 <= prune_start < prune_end <= 1"),
        ({"sparsity.prune_start": -0.1}, "start at or after the start of training"),
        ({"sparsity.growth": "random"}, "GraNet regrows by gradient"),
        ({"sparsity.drop_schedule": "cosine_whole_run"}, "its own cosine"),
        ({"sparsity.prune_fraction": 0.3}, "only iterative magnitude pruning"),
        ({"sparsity.levels": 3}, "only strong lottery tickets"),
        (
            {"sparsity.mode": "slt", "sparsity.update_frequency": 100},
            "sparsity.prune_end=0.75 with sparsity.mode='slt': only GraNet",
        ),
    ],
)
def test_bad_granet_configs_are_refused_with_one_message(over, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        _cfg(**over)


def test_a_granet_trial_is_named_by_its_source():
    assert "-er0.5-granet-d0.1-" in run_key(_cfg())
    assert "-dense-granet-d0.1-" in run_key(_cfg(**{"sparsity.start_density": 1.0}))


def test_the_granet_space_and_its_smoke(tmp_path):
    from rp_tune.planning.space import expand_space

    full = expand_space("granet_sparse_to_sparse")
    starts = sorted({(c.sparsity.scheme, c.sparsity.start_density) for c in full})
    assert starts == [("balanced", 0.05), ("erk", 0.5), ("pyramidal", 0.1), ("uniform", 1.0)]
    assert len(full) == 4 * 3 and {c.sparsity.density for c in full} == {0.01}
    assert all(c.model.name == "vgg16_bn" and c.sparsity.update_frequency == 1000 for c in full)
    assert all(c.sparsity.flow_preservation for c in full)  # as the paper's runs
    smoke = expand_space("granet_sparse_to_sparse", smoke=True)
    assert len(smoke) == 2
    for i, cfg in enumerate(smoke):
        r = run_trial(cfg, tmp_path / str(i))
        assert r["epoch"] == 2 and r["achieved_density"] == pytest.approx(0.1, abs=1e-3)


def test_flow_preservation_connects_every_unit_with_as_few_weights_as_that_takes():
    from rp_tune.methods.granet import preserve_flow_

    linear = torch.zeros(3, 4, dtype=torch.bool)
    linear[0, 0] = linear[2, 3] = True  # row 1 (an output) and columns 1, 2 (inputs) dead
    conv = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    conv[1:, 0, 1, 1] = True  # filter 0 and input channels 1, 2 dead
    dense = torch.ones(2, 2, dtype=torch.bool)
    before = {"fc": linear.clone(), "conv": conv.clone(), "dense": dense.clone()}
    masks = {"fc": linear, "conv": conv, "dense": dense}
    added = preserve_flow_(masks, seed=0)
    for name, m in masks.items():
        units = m.view(m.shape[0], m.shape[1], -1).any(dim=2)
        assert units.any(dim=1).all() and units.any(dim=0).all(), name  # every unit connected
        assert (m | before[name]).equal(m), name  # nothing removed
        assert int(m.sum()) - int(before[name].sum()) == added.get(name, 0), name
    # one per dead output, then one per input still dead after that: with seed 0, fc's row 1
    # gets column 0 (connected already), so columns 1 and 2 take one each: 3; conv's filter 0
    # lands in input channel 1 or 2, so one more does: 2 (their code, counting the inputs
    # before the first pass, would add 3)
    assert added == {"fc": 3, "conv": 2}
    # a second call adds nothing, and the same seed draws the same positions
    assert preserve_flow_(masks, seed=0) == {}
    again = {k: v.clone() for k, v in before.items()}
    preserve_flow_(again, seed=0)
    assert all(again[k].equal(masks[k]) for k in masks)


def test_flow_preservation_in_a_granet_trial(tmp_path):
    """A pyramidal source at 0.05 leaves units of the last layers unconnected; with
    flow_preservation each gets one weight before training, counted in flow_added."""
    over = {"sparsity.scheme": "pyramidal", "sparsity.start_density": 0.05,
            "sparsity.density": 0.02, "sparsity.allow_empty_layers": True,
            "train.epochs": 1}  # fmt: skip

    def dead_units(masks):
        return sum(
            int((~u.any(dim=1)).sum() + (~u.any(dim=0)).sum())
            for u in (m.view(m.shape[0], m.shape[1], -1).any(dim=2) for m in masks.values())
        )

    plain = run_trial(_cfg(**over), tmp_path / "plain")
    assert "flow_added" not in plain
    assert dead_units(Masks.load(tmp_path / "plain" / "masks.parquet").masks) > 0
    cfg = _cfg(**over, **{"sparsity.flow_preservation": True})
    r = run_trial(cfg, tmp_path / "flow")
    source = Masks.load(tmp_path / "flow" / "masks.parquet")
    assert dead_units(source.masks) == 0
    drawn = Masks.load(tmp_path / "plain" / "masks.parquet")
    assert sum(source.kept().values()) - sum(drawn.kept().values()) == r["flow_added"] > 0
    assert "-pyramidal0.05-granet-" in run_key(cfg)
    with pytest.raises(ConfigError, match="sparsity.flow_preservation=True with sparsity.mod"):
        from_flat({**QUICK_TRIAL, "sparsity.flow_preservation": True})
