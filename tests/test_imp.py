"""Iterative magnitude pruning inside a random mask (sparsity.mode=imp): the schedule, the
pruning step, a 3-round trial end to end (subset masks, exact densities, rewinding, resume
mid-round), classic IMP from a dense start, and the refusals."""

import json

import pytest
import torch

from rp_tune.config import ConfigError, from_flat, run_key, trial_epochs
from rp_tune.core.layout import ARTIFACTS_DIR, CHECKPOINT_FILE, IMP_MASKS_DIR, IMP_ROUNDS_FILE
from rp_tune.methods import METHODS, imp
from rp_tune.methods.imp import round_densities
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.build import setup
from rp_tune.trial.checkpoints import latest_checkpoint
from rp_tune.trial.groups import group_refusal
from rp_tune.trial.train import run_trial

# Three rounds at 0.5, 0.25, 0.125 of an ER start; rounds of 3, then 2 epochs each (rewound
# to epoch 1): trial epochs 1-3, 4-5, 6-7
IMP_FLAT = {
    "model.name": "cifar_resnet_8",
    "data.name": "synthetic",
    "data.synthetic_train": 192,
    "data.synthetic_test": 64,
    "train.epochs": 3,
    "train.batch_size": 32,
    "train.milestones": [2],
    "train.deterministic": True,
    "sparsity.mode": "imp",
    "sparsity.scheme": "er",
    "sparsity.start_density": 0.5,
    "sparsity.density": 0.125,
    "sparsity.prune_fraction": 0.5,
    "sparsity.rewind_epoch": 1,
    "evaluation.ood": False,
    "evaluation.fgsm": False,
}


def _round_masks(ckpt):
    folder = ckpt / ARTIFACTS_DIR / IMP_MASKS_DIR
    return [Masks.load(p) for p in sorted(folder.glob("round_*.parquet"))]


def _subset(a: Masks, b: Masks) -> bool:
    return all(not (a.masks[n] & ~b.masks[n]).any() for n in a.masks)


def test_schedule_epochs_and_run_key():
    cfg = from_flat(IMP_FLAT)
    assert round_densities(cfg.sparsity) == (0.5, 0.25, 0.125)
    assert cfg.total_epochs == 3 + 2 * 2 == trial_epochs(cfg.to_flat())
    assert run_key(cfg).startswith("cifar_resnet_8-er0.5-imp-d0.125-s0-")
    assert [imp.round_of(e, 3, 1) for e in range(7)] == [
        (0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)
    ]  # fmt: skip
    assert imp.round_ends(3, 1, 3) == [3, 5, 7]
    # the last round is clamped to the target: 0.5 * 0.8^k never lands on 0.3 exactly
    dens = from_flat({**IMP_FLAT, "sparsity.density": 0.3, "sparsity.prune_fraction": 0.2})
    assert round_densities(dens.sparsity) == pytest.approx((0.5, 0.4, 0.32, 0.3))
    dense = from_flat({**IMP_FLAT, "sparsity.start_density": 1.0})
    assert run_key(dense).startswith("cifar_resnet_8-dense-imp-d0.125-")
    assert trial_epochs(from_flat({"train.epochs": 7}).to_flat()) == 7  # not IMP: its epochs


@pytest.mark.parametrize(
    "over, message",
    [
        ({"sparsity.density": 0.6}, "must be below the start"),
        ({"sparsity.density": 0.5}, "must be below the start"),
        ({"sparsity.prune_fraction": 1.0}, r"sparsity.prune_fraction=1.0 is invalid; valid: a "
                                            r"fraction in \(0, 1\)"),
        ({"sparsity.prune_fraction": 0.0}, "prune_fraction=0.0 is invalid"),
        ({"sparsity.start_density": 1.5}, "start_density=1.5 is invalid"),
        ({"sparsity.rewind_epoch": 3}, r"rewind_epoch=3 with train.epochs=3.*0 \(the "
                                       r"initialization\) to 2"),
        ({"sparsity.rewind_epoch": -1}, "rewind_epoch=-1 is invalid"),
        ({"sparsity.growth": "random"}, "sparsity.growth with sparsity.mode='imp'.*one mode"),
        ({"sparsity.update_frequency": 5}, "update_frequency with sparsity.mode='imp'"),
        ({"sparsity.prune_scope": "row"}, r"prune_scope='row' is invalid; valid: \['global', "
                                          r"'layer'\]"),
        ({"sparsity.prune_fraction": 0.01}, "takes 139 rounds of training; at most 100"),
    ],
)  # fmt: skip
def test_bad_imp_values_are_refused_with_one_message(over, message):
    with pytest.raises(ConfigError, match=message):
        from_flat({**IMP_FLAT, **over})


def test_imp_keys_without_imp_mode_are_refused():
    with pytest.raises(
        ConfigError, match=r"only iterative magnitude pruning \(sparsity.mode='imp'\) reads it"
    ):
        from_flat({"sparsity.mode": "dynamic", "sparsity.prune_fraction": 0.3})


def test_a_trial_group_refuses_imp_with_the_reason():
    assert "IMP trials run alone" in group_refusal(from_flat(IMP_FLAT))


def test_apportion_is_exact_proportional_and_never_grows():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 8, (1,), generator=g))
        prev = {f"l{i}": int(torch.randint(0, 50, (1,), generator=g)) for i in range(n)}
        keep = int(torch.randint(0, sum(prev.values()) + 1, (1,), generator=g))
        out = imp.apportion(prev, keep)
        assert sum(out.values()) == keep
        assert all(0 <= out[k] <= prev[k] for k in prev)
        total = sum(prev.values())
        if total:
            assert all(abs(out[k] - prev[k] * keep / total) < 1 for k in prev)
    with pytest.raises(ValueError, match="cannot keep 11 of 10"):
        imp.apportion({"a": 10}, 11)


def test_pruning_keeps_the_largest_kept_weights_globally_or_per_layer():
    w = {"a": torch.tensor([[5.0, -4.0, 3.0, 9.0]]), "b": torch.tensor([[-1.0, 8.0, 2.0, 7.0]])}
    m = {"a": torch.tensor([[True, True, True, False]]), "b": torch.tensor([[True] * 4])}
    # global: the 3 largest |w| among kept positions; a's 9.0 is outside the mask: never back
    new = imp.prune_by_magnitude(w, m, 3)
    assert new["a"].tolist() == [[True, False, False, False]]
    assert new["b"].tolist() == [[False, True, False, True]]
    per = imp.prune_by_magnitude(w, m, {"a": 2, "b": 1})
    assert per["a"].tolist() == [[True, True, False, False]]
    assert per["b"].tolist() == [[False, True, False, False]]
    with pytest.raises(ValueError, match="cannot keep 8 of the 7"):
        imp.prune_by_magnitude(w, m, 8)


@pytest.fixture(scope="module")
def imp_runs(tmp_path_factory):
    """The 3-round trial unbroken, and stopped mid-round 1 (after trial epoch 4, the first
    of its two) then resumed from its checkpoint: the resumed run must prune at the end of
    round 1 from the stored rewind point, and train round 2."""
    cfg = from_flat(IMP_FLAT)
    root = tmp_path_factory.mktemp("imp")
    full = run_trial(cfg, root / "full", keep_checkpoints=10)
    part = run_trial(cfg, root / "part", stop_after=4, keep_checkpoints=10)
    assert part["stopped"] and part["epoch"] == 4
    ckpt = latest_checkpoint(root / "part")
    assert ckpt.name == "epoch_0004"
    resumed = run_trial(cfg, root / "part", resume=ckpt, keep_checkpoints=10)
    return cfg, root, full, resumed


def test_every_round_mask_is_a_subset_of_the_last_and_of_the_random_start(imp_runs, tmp_path):
    cfg, root, full, _ = imp_runs
    final = latest_checkpoint(root / "full")
    assert final.name == "epoch_0007"
    rounds = _round_masks(final)
    assert len(rounds) == 3
    # round 0 is the random start: the ER mask a static trial at density 0.5 would draw
    static = from_flat(
        {k: v for k, v in IMP_FLAT.items() if k not in METHODS["imp"].keys}
        | {"sparsity.mode": "static", "sparsity.density": 0.5}
    )
    assert rounds[0].equals(setup(static, tmp_path, run_key(static), "cpu").masks)
    for before, after in zip(rounds, rounds[1:]):
        assert _subset(after, before) and _subset(after, rounds[0])
    # the trial's final mask is the last round's; pruned weights are exactly zero
    last = Masks.load(final / ARTIFACTS_DIR / "masks.parquet")
    assert last.equals(rounds[-1])
    state = torch.load(final / CHECKPOINT_FILE, weights_only=False)
    for name, mask in last.masks.items():
        assert (state["model"][f"{name}.weight"][~mask] == 0).all()


def test_each_round_hits_its_density_exactly(imp_runs):
    cfg, root, full, _ = imp_runs
    rounds = _round_masks(latest_checkpoint(root / "full"))
    total = rounds[0].total()
    start = sum(rounds[0].kept().values())
    assert [sum(r.kept().values()) for r in rounds] == [start, round(0.25 * total),
                                                        round(0.125 * total)]  # fmt: skip
    records = [h for h in full["history"] if "round_test_acc" in h]
    assert [h["epoch"] for h in records] == [3, 5, 7]
    assert [h["imp_round"] for h in records] == [0, 1, 2]
    assert [h["round_kept"] for h in records] == [sum(r.kept().values()) for r in rounds]
    assert full["achieved_density"] == round(0.125 * total) / total
    # FLOPs: each round at its own density, summed; fewer than training at the start density
    flops = [h["round_train_flops"] for h in records]
    assert flops[0] > flops[1] > flops[2] > 0
    assert records[-1]["cumulative_train_flops"] == pytest.approx(sum(flops))
    assert full["train_flops_sparse"] == pytest.approx(sum(flops))
    assert [h["imp_round"] for h in full["history"]] == [0, 0, 0, 1, 1, 2, 2]
    # the records are an artifact (CSV) too, one row per round
    lines = (latest_checkpoint(root / "full") / ARTIFACTS_DIR / IMP_ROUNDS_FILE).read_text()
    assert len(lines.strip().splitlines()) == 1 + 3


def test_pruning_rewinds_the_survivors_to_the_stored_epoch(imp_runs):
    cfg, root, *_ = imp_runs
    ckpts = root / "full" / "checkpoints"
    after_epoch_1 = torch.load(ckpts / "epoch_0001" / CHECKPOINT_FILE, weights_only=False)
    end_round_0 = torch.load(ckpts / "epoch_0003" / CHECKPOINT_FILE, weights_only=False)
    rewind = end_round_0["imp"]["rewind"]
    # the rewind point is the model at the start of epoch rewind_epoch (after epoch 1)...
    for k, v in after_epoch_1["model"].items():
        assert torch.equal(rewind[k], v), k
    # ... and round 1 starts from it: survivors (BatchNorm included) as they were, the
    # newly pruned weights zero, momentum reset
    mask_1 = _round_masks(ckpts / "epoch_0003")[1]
    for k, v in end_round_0["model"].items():
        layer = k[: -len(".weight")]
        expected = rewind[k] * mask_1.masks[layer] if layer in mask_1.masks else rewind[k]
        assert torch.equal(v, expected), k
    assert end_round_0["optimizer"]["state"] == {}
    assert end_round_0["best"]["epoch"] == -1  # model selection starts again each round


def test_resume_mid_round_is_bit_for_bit(imp_runs):
    cfg, root, full, resumed = imp_runs
    assert [h["train_loss"] for h in resumed["history"]] == [
        h["train_loss"] for h in full["history"]
    ]
    assert resumed["test_acc"] == full["test_acc"]
    a = torch.load(latest_checkpoint(root / "full") / CHECKPOINT_FILE, weights_only=False)
    b = torch.load(latest_checkpoint(root / "part") / CHECKPOINT_FILE, weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    full_masks = _round_masks(latest_checkpoint(root / "full"))
    part_masks = _round_masks(latest_checkpoint(root / "part"))
    assert len(full_masks) == len(part_masks) == 3
    assert all(x.equals(y) for x, y in zip(full_masks, part_masks))
    timing = ("epoch_seconds", "images_per_second", "val_seconds", "final_eval_seconds",
              "train_seconds", "eval_seconds")  # fmt: skip
    for x, y in zip(full["history"], resumed["history"]):
        assert {k: v for k, v in x.items() if k not in timing and not k.startswith("env_")} == {
            k: v for k, v in y.items() if k not in timing and not k.startswith("env_")
        }
    rounds = [(latest_checkpoint(root / d) / ARTIFACTS_DIR / IMP_ROUNDS_FILE).read_text()
              for d in ("full", "part")]  # fmt: skip
    assert rounds[0] == rounds[1]
    history = json.loads(
        (latest_checkpoint(root / "part") / ARTIFACTS_DIR / "history.json").read_text()
    )
    assert [h["epoch"] for h in history] == list(range(1, 8))


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_a_dense_start_is_classic_imp(tmp_path):
    """Round 0 from a dense start is dense training (the same run as a static dense trial
    of that seed); round 1 keeps the global top |w| of its final weights, rewound to the
    initialization."""
    flat = {**IMP_FLAT, "sparsity.start_density": 1.0, "sparsity.density": 0.5,
            "sparsity.rewind_epoch": 0, "sparsity.scheme": "uniform"}  # fmt: skip
    cfg = from_flat(flat)
    assert round_densities(cfg.sparsity) == (1.0, 0.5)
    run_trial(cfg, tmp_path / "imp", keep_checkpoints=10)
    dense = from_flat(
        {k: v for k, v in flat.items() if not k.startswith("sparsity.")}
        | {"sparsity.density": 1.0, "sparsity.scheme": "uniform"}
    )
    run_trial(dense, tmp_path / "dense", keep_checkpoints=10)
    trained = torch.load(
        tmp_path / "dense" / "checkpoints" / "epoch_0003" / CHECKPOINT_FILE, weights_only=False
    )["model"]
    round_0_end = tmp_path / "imp" / "checkpoints" / "epoch_0003"
    masks = _round_masks(round_0_end)
    assert all(m.all() for m in masks[0].masks.values())  # a dense start keeps every weight
    names = list(masks[0].masks)
    weights = torch.cat([trained[f"{n}.weight"].abs().flatten() for n in names])
    keep = round(0.5 * weights.numel())
    threshold = weights.sort(descending=True).values[keep - 1]
    kept = torch.cat([masks[1].masks[n].flatten() for n in names])
    assert int(kept.sum()) == keep
    assert (weights[kept] >= threshold).all() and (weights[~kept] <= threshold).all()
    init = setup(dense, tmp_path / "init", run_key(dense), "cpu").model.state_dict()
    state = torch.load(round_0_end / CHECKPOINT_FILE, weights_only=False)["model"]
    for n in names:
        assert torch.equal(state[f"{n}.weight"], init[f"{n}.weight"] * masks[1].masks[n])


def _imp_row(start, target, seed, scheme="er"):
    return {"run_key": f"r-{start}-{target}-{seed}", "status": "finished",
            "model.name": "cifar_resnet_20", "sparsity.scheme": scheme, "sparsity.mode": "imp",
            "sparsity.start_density": start, "sparsity.density": target, "seed": seed,
            "sparsity.prune_fraction": 0.5, "test_acc": 0.8}  # fmt: skip


def test_the_imp_figure_draws_accuracy_and_cost_per_start_counting_shared_rounds_once(tmp_path):
    """Trials of one start and seed that differ in their target share their first rounds:
    the figure counts such a round once per seed, and a dense start is its own line."""
    from rp_tune.results.figures import imp_summary, plot_imp_rounds

    def rec(r, d, acc, flops):
        return {"imp_round": r, "round_density": d, "round_test_acc": acc,
                "cumulative_train_flops": flops}  # fmt: skip

    rows, rounds = [], {}
    for seed in (0, 1):
        for target in (0.25, 0.125):
            row = _imp_row(0.5, target, seed)
            rows.append(row)
            recs = [rec(0, 0.5, 0.70 + seed / 100, 10.0), rec(1, 0.25, 0.72 + seed / 100, 15.0)]
            if target == 0.125:
                recs.append(rec(2, 0.125, 0.60, 17.5))
            rounds[row["run_key"]] = recs
        dense = _imp_row(1.0, 0.25, seed, scheme="uniform")
        rows.append(dense)
        rounds[dense["run_key"]] = [rec(0, 1.0, 0.75, 20.0), rec(1, 0.5, 0.74, 30.0),
                                    rec(2, 0.25, 0.71, 35.0)]  # fmt: skip
    acc_panel, cost_panel = plot_imp_rounds(rows, rounds, tmp_path / "imp.png")
    assert (tmp_path / "imp.png").stat().st_size > 1000
    assert acc_panel["xscale"] == "log" and acc_panel["xlabel"] == "density of the round"
    # n=2 at every density: counted once per seed (twice that if shared rounds counted twice)
    assert sorted(acc_panel["series"]) == ["dense start (n=2)", "er start 0.5 (n=2)"]
    xs, ys = acc_panel["points"]["er start 0.5 (n=2)"]
    assert xs == [0.5, 0.25, 0.125] and ys == pytest.approx([0.705, 0.725, 0.60])
    assert cost_panel["points"]["dense start (n=2)"] == ([1.0, 0.5, 0.25], [20.0, 30.0, 35.0])
    summary = {(r["start"], r["density"]): r for r in imp_summary(rows, rounds)}
    assert summary[("er", 0.25)]["n"] == 2 and summary[("er", 0.125)]["n"] == 2
    assert summary[("dense", 1.0)]["cumulative_train_flops_mean"] == 20.0
    assert plot_imp_rounds(rows, {}, tmp_path / "none.png") is None


def test_round_records_are_tracked_at_step_round_and_the_rest_at_step_epoch():
    from rp_tune.trial.metrics import METRICS, step_of

    row = {"epoch": 480, "imp_round": 2, "round_test_acc": 0.9, "train_loss": 0.1}
    assert step_of("round_test_acc", row) == 2 and step_of("cumulative_train_flops", row) == 2
    assert step_of("train_loss", row) == 480 and step_of("imp_round", row) == 480
    assert all(m.step == "round" for n, m in METRICS.items() if n.startswith("round_"))


@pytest.mark.slow
def test_the_imp_space_smoke_sweep_tracks_rounds_and_reports_them(tmp_path):
    """The new space's smoke version through run_sweep.py (Ray, MLflow) and --report: a
    dense start in 3 rounds and an ER start in 2, each round in MLflow at its step with its
    mask as an artifact, the report's round table and figure."""
    from mlflow.tracking import MlflowClient

    from rp_tune.results.report import build_report
    from tests.helpers import cli, mlflow_runs

    res = tmp_path / "res"
    # 4 logical CPUs on 2 cores: both trials at once (their start-up is mostly waiting)
    r = cli("--space", "imp_sparse_to_sparse", "--smoke", "--storage", str(res),
            "--num-cpus", "4")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "trials: 2  finished: 2  failed: 0" in r.stdout
    assert " 4/4 " in r.stdout and " 3/3 " in r.stdout  # every round's epochs, as one trial's
    client = MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    _, children = mlflow_runs(client, "imp_sparse_to_sparse")
    seen = {}
    for run in children:
        key = run.data.tags["rp_tune.run_key"]
        history = client.get_metric_history(run.info.run_id, "round_density")
        seen[key.split("-")[1]] = [(m.step, m.value) for m in history]
        accs = client.get_metric_history(run.info.run_id, "round_test_acc")
        assert sorted(m.step for m in accs) == [s for s, _ in sorted(seen[key.split("-")[1]])]
        masks = [a.path for a in client.list_artifacts(run.info.run_id, "imp_masks")]
        assert masks == [f"imp_masks/round_{i:02d}.parquet" for i in range(len(history))]
    assert sorted(seen["dense"]) == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert sorted(seen["er0.5"]) == [(0, pytest.approx(0.5, abs=1e-3)), (1, 0.25)]
    rep = build_report(res / "imp_sparse_to_sparse-smoke", space="imp_sparse_to_sparse")
    shown = rep["paper_figures"]["Gadhikar et al. IMP"]
    assert shown and all(f.endswith("imp_rounds.png") for f in shown)
    import pyarrow.parquet as pq

    table = pq.read_table(rep["imp_rounds"]).to_pylist()
    assert len(table) == 3 + 2
    assert {(t["sparsity.start_density"], t["imp_round"]) for t in table} == {
        (1.0, 0), (1.0, 1), (1.0, 2), (0.5, 0), (0.5, 1)
    }  # fmt: skip
    acc_panel, _ = rep["drawn"]["imp_rounds.png"]
    assert sorted(acc_panel["series"]) == ["dense start (n=1)", "er start 0.5 (n=1)"]
    # the dense start beside the random one at the target, the random one cheaper to train
    starts = [(s["start"], s["density"]) for s in rep["sparse_to_sparse"]]
    assert starts == [("dense", 0.25), ("er 0.5", 0.25)]
    assert 0 < rep["sparse_to_sparse"][1]["train_flops_vs_dense_start"] < 1


def test_later_rounds_replay_the_recipe_from_the_rewind_point(imp_runs):
    """milestones (2,), rewind to epoch 1: every round trains its recipe epochs 1..2 at lr
    0.1 then 0.01, not at the decayed rate where round 0 ended."""
    cfg, root, full, _ = imp_runs
    assert [h["lr"] for h in full["history"]] == pytest.approx(
        [0.1, 0.1, 0.01, 0.1, 0.01, 0.1, 0.01]
    )
    pruning = imp.IterativePruning(densities=(0.5, 0.25, 0.125), epochs=3, rewind_epoch=1,
                                   scope="global", start_kept=10, total=40)  # fmt: skip
    assert [pruning.recipe_step(s, 10) for s in (0, 29, 30, 49, 50, 69)] == [0, 29, 10, 29, 10, 29]


@pytest.mark.parametrize("epoch", [2, 3])
def test_resume_before_a_round_end_and_at_it_matches_the_unbroken_run(imp_runs, tmp_path, epoch):
    """From epoch 2 the resumed run trains round 0's last epoch, records the round and
    prunes itself; from epoch 3 (the round boundary) it starts round 1 from the checkpoint's
    pruned, rewound model. Either way the same end as the unbroken run."""
    import shutil

    cfg, root, full, _ = imp_runs
    out = tmp_path / "again"
    source = root / "full" / "checkpoints" / f"epoch_{epoch:04d}"
    shutil.copytree(source, out / "checkpoints" / source.name)
    resumed = run_trial(cfg, out, resume=out / "checkpoints" / source.name)
    assert [h["train_loss"] for h in resumed["history"]] == [
        h["train_loss"] for h in full["history"]
    ]
    a = torch.load(latest_checkpoint(root / "full") / CHECKPOINT_FILE, weights_only=False)
    b = torch.load(latest_checkpoint(out) / CHECKPOINT_FILE, weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["imp"]["rounds"] == b["imp"]["rounds"] and len(b["imp"]["rounds"]) == 3


def test_layer_scope_shrinks_every_layer_by_the_same_share_exactly(tmp_path):
    cfg = from_flat({**IMP_FLAT, "sparsity.prune_scope": "layer", "train.epochs": 1,
                     "sparsity.rewind_epoch": 0})  # fmt: skip
    run_trial(cfg, tmp_path)
    rounds = _round_masks(latest_checkpoint(tmp_path))
    total = rounds[0].total()
    for before, after in zip(rounds, rounds[1:]):
        assert _subset(after, before)
        k0, k1 = before.kept(), after.kept()
        share = sum(k1.values()) / sum(k0.values())
        assert all(abs(k1[n] - k0[n] * share) < 1 for n in k0)  # per layer, to one weight
    assert [sum(r.kept().values()) for r in rounds[1:]] == [round(0.25 * total),
                                                            round(0.125 * total)]  # fmt: skip
