import math

import pytest
import torch

from rp_tune.methods.dst import death_rate, is_update_step, update_masks_


def _layer(seed=0, shape=(8, 4, 3, 3), density=0.25):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    m = torch.zeros(n)
    m[torch.randperm(n, generator=g)[: int(density * n)]] = 1
    m = m.view(shape)
    w = torch.randn(shape, generator=g) * m
    grad = torch.randn(shape, generator=g)
    return w, m, grad


@pytest.mark.parametrize("growth", ["random", "gradient"])
def test_counts_constant_and_growth_among_all_inactive_after_the_drop(growth):
    layers = [_layer(s) for s in range(3)]
    ws, ms, gs = ([x[i] for x in layers] for i in range(3))
    momenta = [torch.ones_like(w) for w in ws]
    g = torch.Generator().manual_seed(1)
    for _step in range(5):
        before = [m.clone() for m in ms]
        counts = [int(m.sum()) for m in ms]
        weights_before = [w.clone() for w in ws]
        stats = update_masks_(ws, ms, gs, 0.3, growth, g, momenta)
        for i, (m, b, k, mom, w) in enumerate(zip(ms, before, counts, momenta, ws)):
            assert int(m.sum()) == k  # exact count
            grown = (m > 0) & (b == 0)
            dropped = (m == 0) & (b > 0)
            assert int(grown.sum()) == int(dropped.sum()) == stats.per_layer[i]
            assert stats.per_layer[i] <= int(0.3 * k)  # RigL drops floor(0.3 k)
            # new connections start at zero with zero momentum; surviving weights keep theirs
            assert torch.all(w[grown] == 0) and torch.all(w[dropped] == 0)
            assert torch.all(mom[grown] == 0)
            assert torch.all(w[m == 0] == 0)
            stayed = (m > 0) & (b > 0)
            assert torch.equal(w[stayed], weights_before[i][stayed])
        assert stats.changed == sum(stats.per_layer)
        for w, m in zip(ws, ms):  # let the surviving weights "train" a little
            w.add_(torch.randn_like(w) * 0.1 * m)


def test_drop_smallest_and_gradient_growth_picks_largest():
    w = torch.tensor([0.5, -0.1, 0.0, 2.0, 0.0, 0.0, 0.0, 0.3])
    m = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    grad = torch.tensor([9.0, 1.0, 0.1, 9.0, -5.0, 0.2, 3.0, 0.5])
    stats = update_masks_([w], [m], [grad], 0.5, "gradient")
    # kept 4 -> drop 2 smallest |w| (positions 1 and 7), grow the 2 largest |grad| among all
    # positions inactive after the drop (1, 2, 4, 5, 6, 7): 4 (|-5|) and 6 (3)
    assert m.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert w.tolist() == [0.5, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert stats.changed == 2


def test_rigl_growth_may_pick_a_just_dropped_position():
    """RigL scores every position inactive after the drop, the dropped ones included: one
    with a large gradient comes straight back, restarting at zero."""
    w = torch.tensor([0.5, -0.1, 0.0, 2.0, 0.0, 0.0, 0.0, 0.3])
    m = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    grad = torch.tensor([9.0, 9.0, 0.1, 9.0, -5.0, 0.2, 3.0, 1.0])
    stats = update_masks_([w], [m], [grad], 0.5, "gradient")
    # drop 1 and 7; candidates 1 (9), 4 (5), 6 (3), 7 (1), ...: regrow 1 and 4
    assert m.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # position 1 is back with its value (no re-initialisation, as RigL); 4 is new, at zero
    assert w.tolist() == pytest.approx([0.5, -0.1, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    assert stats.changed == 1  # position 1 moved nowhere; 7 -> 4 moved


def test_channels_last_tensors():
    w, m, grad = _layer(4)
    w = w.contiguous(memory_format=torch.channels_last)
    m = torch.empty_like(w).copy_(m)
    k = int(m.sum())
    update_masks_([w], [m], [grad], 0.5, "gradient")
    assert int(m.sum()) == k and torch.all(w[m == 0] == 0)


def test_rigl_schedule_decays_to_zero_at_stop_at():
    """Evci et al. 2020: f(t) = a/2 (1 + cos(pi t / T_end)), T_end = 0.75 T; no update after."""
    assert death_rate(0, 1000, 0.5) == pytest.approx(0.5)
    assert death_rate(375, 1000, 0.5) == pytest.approx(0.25)
    assert death_rate(250, 1000, 0.3) == pytest.approx(0.15 * (1 + math.cos(math.pi / 3)))
    assert death_rate(749, 1000, 0.5) == pytest.approx(0.0, abs=1e-4)
    assert death_rate(750, 1000, 0.5) == 0.0 and death_rate(900, 1000, 0.5) == 0.0
    assert death_rate(500, 1000, 0.5, stop_at=1.0) == pytest.approx(0.25)
    assert is_update_step(100, 100, 1000, 0.75) and not is_update_step(0, 100, 1000, 0.75)
    assert not is_update_step(800, 100, 1000, 0.75) and not is_update_step(150, 100, 1000, 0.75)


def test_cosine_whole_run_schedule_is_the_named_variant():
    """Liu et al.'s released code: a cosine to `final` over the whole run, never stopping."""
    kw = dict(schedule="cosine_whole_run")
    assert death_rate(0, 1000, **kw) == pytest.approx(0.5)
    assert death_rate(1000, 1000, **kw) == pytest.approx(0.005)
    assert death_rate(500, 1000, **kw) == pytest.approx(0.005 + 0.4950 / 2)
    assert death_rate(250, 1000, **kw) == pytest.approx(
        0.005 + 0.2475 * (1 + math.cos(math.pi / 4))
    )
    assert is_update_step(800, 100, 1000, 0.75, "cosine_whole_run")
    with pytest.raises(ValueError, match="valid choices"):
        death_rate(0, 10, schedule="linear")


def test_bad_growth():
    w, m, g = _layer()
    with pytest.raises(ValueError, match="valid choices"):
        update_masks_([w], [m], [g], 0.5, "magic")


# --- in a trial -----------------------------------------------------------------------------

from rp_tune.config import from_flat  # noqa: E402
from rp_tune.planning.space import expand_space  # noqa: E402
from rp_tune.sparsity.masks import Masks  # noqa: E402
from rp_tune.trial.checkpoints import latest_checkpoint  # noqa: E402
from rp_tune.trial.train import run_trial  # noqa: E402


def _cfg(**over):
    flat = {
        "data.name": "synthetic",
        "data.synthetic_train": 200,
        "data.synthetic_test": 40,
        "model.name": "cifar_resnet_8",
        "sparsity.scheme": "erk",
        "sparsity.density": 0.1,
        "sparsity.mode": "dynamic",
        "sparsity.growth": "gradient",
        "sparsity.update_frequency": 4,
        "train.epochs": 3,
        "train.batch_size": 20,
        "train.deterministic": True,
        "evaluation.fgsm": False,
        "evaluation.ood_sets": ["gaussian"],
    }
    flat.update(over)
    return from_flat(flat)


@pytest.mark.parametrize("growth", ["random", "gradient"])
def test_dynamic_trial_rewires_with_exact_counts(tmp_path, growth):
    cfg = _cfg(**{"sparsity.growth": growth})
    r = run_trial(cfg, tmp_path)
    initial = Masks.load(tmp_path / "masks.parquet")
    final = Masks.load(latest_checkpoint(tmp_path) / "artifacts" / "masks.parquet")
    assert final.kept() == initial.kept()  # per-layer counts exact
    assert not final.equals(initial)  # the checkpoint follows the current mask
    # 9 steps/epoch, 27 in all, updates at 4, 8, 12, 16, 20 (stop_at 0.75 -> before 20.25)
    assert [h["dst_updates"] for h in r["history"]] == [2, 2, 1]
    assert all(h["dst_changed"] > 0 for h in r["history"][:2])
    # RigL's cosine reaches 0 at stop_at: step 20 of T_end = 20.25 drops almost nothing
    assert r["history"][0]["death_rate"] > r["history"][1]["death_rate"]
    assert r["history"][2]["death_rate"] < 0.001
    assert 0.1 < r["history"][0]["itop_rate"] < r["history"][2]["itop_rate"] <= 1.0
    state = torch.load(latest_checkpoint(tmp_path) / "state.pt", weights_only=False)["model"]
    for name, m in final.masks.items():
        assert torch.all(state[f"{name}.weight"][~m] == 0)
    # training FLOPs as RigL counts them: 3 f_S per image a step, and at each of RigL's 5
    # update steps the weight gradient dense (2 f_S + f_D); SET's random growth needs none
    f_s, f_d = r["flops_sparse"], r["flops_dense"]
    extra = 5 * 20 * (f_d - f_s) if growth == "gradient" else 0.0
    assert r["train_flops_sparse"] == pytest.approx(27 * 20 * 3 * f_s + extra)
    assert sum(h["epoch_train_flops"] for h in r["history"]) == pytest.approx(
        r["train_flops_sparse"])  # fmt: skip


def test_dynamic_resume_across_an_update_boundary(tmp_path):
    cfg = _cfg()
    full = run_trial(cfg, tmp_path / "full")
    part = run_trial(cfg, tmp_path / "part", stop_after=1)  # stops after step 8's update
    resumed = run_trial(cfg, tmp_path / "part", resume=latest_checkpoint(tmp_path / "part"))
    assert part["stopped"]
    for a, b in zip(full["history"][1:], resumed["history"][1:]):
        assert a["train_loss"] == b["train_loss"] and a["itop_rate"] == b["itop_rate"]
    fa = latest_checkpoint(tmp_path / "full")
    fb = latest_checkpoint(tmp_path / "part")
    assert Masks.load(fa / "artifacts/masks.parquet").equals(
        Masks.load(fb / "artifacts/masks.parquet")
    )
    sa = torch.load(fa / "state.pt", weights_only=False)["model"]
    sb = torch.load(fb / "state.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_dst_vs_static_space_smoke_runs(tmp_path):
    cfgs = expand_space("dst_vs_static", smoke=True)
    assert sorted((c.sparsity.mode, c.sparsity.growth) for c in cfgs) == [
        ("dynamic", "gradient"),
        ("dynamic", "random"),
        ("static", "gradient"),
    ]
    assert len(expand_space("dst_vs_static")) == 3 * 3 * 3
    for i, cfg in enumerate(cfgs):
        r = run_trial(cfg, tmp_path / str(i))
        assert r["epoch"] == 2 and 0.0 <= r["test_acc"] <= 1.0
        assert ("itop_rate" in r) == (cfg.sparsity.mode == "dynamic")


def test_each_epochs_dst_values_are_of_that_epochs_updates(tmp_path):
    """Issue 19's slip, for DST: an epoch's dst_updates, dst_changed, death_rate and itop_rate
    describe the updates made during its own steps (the drop fraction of its last update,
    ITOP after it), never the next epoch's. 9 steps an epoch, an update every 4 until 20.25:
    epoch 1 updates at 4 and 8, epoch 2 at 12 and 16, epoch 3 at 20."""
    cfg = _cfg()
    r = run_trial(cfg, tmp_path, keep_checkpoints=3)
    total, rate = 27, cfg.sparsity.death_rate
    expected_last = {1: 8, 2: 16, 3: 20}
    for row in r["history"]:
        e = row["epoch"]
        state = torch.load(tmp_path / "checkpoints" / f"epoch_{e:04d}" / "state.pt",
                           weights_only=False)  # fmt: skip
        updates = [u for u in state["dst"]["updates"] if (e - 1) * 9 <= u[0] < e * 9]
        assert [u[0] for u in updates][-1] == expected_last[e]
        assert (
            row["dst_updates"]
            == len(updates)
            == len([s for s in range((e - 1) * 9, e * 9) if is_update_step(s, 4, total, 0.75)])
        )
        assert row["dst_changed"] == sum(u[2] for u in updates)
        assert row["death_rate"] == pytest.approx(death_rate(expected_last[e], total, rate))
        ever = state["dst"]["ever"]  # as the epoch left it: its checkpoint's
        kept = sum(int(x.sum()) for x in ever) / sum(x.numel() for x in ever)
        assert row["itop_rate"] == pytest.approx(kept)
