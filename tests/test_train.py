import pytest
import torch

from rp_tune.config import ConfigError, from_flat, run_key
from rp_tune.data import DataError
from rp_tune.models import prunable_layers
from rp_tune.sparsity.masks import Masks
from rp_tune.trial.build import lr_factor
from rp_tune.trial.checkpoints import latest_checkpoint
from rp_tune.trial.cli import main
from rp_tune.trial.train import run_trial
from tests.helpers import write_tiny_cifar10


def _cfg(root, **over):
    flat = {
        "model.name": "cifar_resnet_20",
        "sparsity.scheme": "erk",
        "sparsity.density": 0.1,
        "data.name": "cifar10",
        "data.root": str(root),
        "data.download": False,
        "train.epochs": 2,
        "train.batch_size": 20,
        "evaluation.batch_size": 50,
        "train.lr": 0.05,
        "train.deterministic": True,
        "evaluation.ood_sets": ["gaussian"],
    }
    flat.update(over)
    return from_flat(flat)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar10(root, n_train=200, n_test=60)
    return root


def test_trial_trains_loss_falls_masks_hold(cifar_root, tmp_path):
    cfg = _cfg(cifar_root)
    seen = []
    result = run_trial(cfg, tmp_path / "run", on_epoch=lambda m, c: seen.append((m, c)))
    hist = result["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["train_loss"] < hist[0]["train_loss"]
    for key in (
        "test_acc",
        "test_acc_best_val",
        "best_val_acc",
        "val_loss",
        "lr",
        "images_per_second",
        "epoch_seconds",
        "achieved_density",
    ):
        assert key in result
    assert result["achieved_density"] == pytest.approx(0.1, abs=1e-5)
    assert all(c is not None and (c / "state.pt").is_file() for _, c in seen)
    # masked weights are exactly zero after training, kept ones trained
    ckpt = latest_checkpoint(tmp_path / "run")
    state = torch.load(ckpt / "state.pt", weights_only=False)["model"]
    masks = Masks.load(ckpt / "artifacts" / "masks.parquet")
    for name, m in masks.masks.items():
        w = state[f"{name}.weight"]
        assert torch.all(w[~m] == 0), name
        assert torch.count_nonzero(w[m]) == m.sum()
    assert Masks.load(tmp_path / "run" / "masks.parquet").equals(masks)


def test_resume_is_exact(cifar_root, tmp_path):
    cfg = _cfg(cifar_root, **{"train.epochs": 3})
    full = run_trial(cfg, tmp_path / "full")
    part = run_trial(cfg, tmp_path / "part", stop_after=2)
    assert part["stopped"] and part["epoch"] == 2
    ckpt = latest_checkpoint(tmp_path / "part")
    assert ckpt.name == "epoch_0002"
    resumed = run_trial(cfg, tmp_path / "part", resume=ckpt)
    assert resumed["history"][2]["train_loss"] == full["history"][2]["train_loss"]
    assert resumed["test_acc"] == full["test_acc"]
    a = torch.load(latest_checkpoint(tmp_path / "full") / "state.pt", weights_only=False)
    b = torch.load(latest_checkpoint(tmp_path / "part") / "state.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert Masks.load(tmp_path / "full" / "masks.parquet").equals(
        Masks.load(tmp_path / "part" / "masks.parquet")
    )


def test_resume_refuses_another_runs_checkpoint(cifar_root, tmp_path):
    run_trial(_cfg(cifar_root, **{"train.epochs": 1}), tmp_path / "a")
    other = _cfg(cifar_root, **{"train.epochs": 1, "seed": 5})
    with pytest.raises(ValueError, match="belongs to run"):
        run_trial(other, tmp_path / "a", resume=latest_checkpoint(tmp_path / "a"))


def test_missing_data_fails_before_anything_is_written(tmp_path):
    cfg = _cfg(tmp_path / "no-data")
    with pytest.raises(DataError, match="missing or corrupt"):
        run_trial(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["snip", "grasp", "synflow", "uniform_plus"])
def test_model_based_schemes_in_a_trial(scheme, tmp_path):
    cfg = from_flat(
        {
            "data.name": "synthetic",
            "data.synthetic_train": 120,
            "data.synthetic_test": 20,
            "model.name": "cifar_resnet_8",
            "sparsity.scheme": scheme,
            "sparsity.density": 0.2,
            "train.epochs": 1,
            "train.batch_size": 50,
            "sparsity.score_batch": 30,
        }
    )
    result = run_trial(cfg, tmp_path)
    assert result["achieved_density"] == pytest.approx(0.2, abs=1e-4)


def test_lr_schedule_warmup_and_milestones():
    cfg = from_flat({"train.recipe": "imagenet", "data.name": "imagenet", "model.name": "resnet18"})
    assert lr_factor(0, 10, cfg) == pytest.approx(1 / 50)
    assert lr_factor(49, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(300, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(950, 10, cfg) == pytest.approx(0.001)


def test_each_epoch_logs_the_rate_it_trained_at(tmp_path):
    """milestones (2,): epochs 1 and 2 train at 0.1, epoch 3 at 0.01 (read after an epoch's
    last step, the schedule has moved on: epoch 2 would show 0.01); a warmup epoch logs the
    mean of its rising rates, 0.1 x (1/S + 2/S + ... + S/S) / S = 0.1 (S + 1) / (2 S)."""
    flat = {"model.name": "cifar_resnet_8", "data.name": "synthetic",
            "data.synthetic_train": 100, "data.synthetic_test": 20, "train.batch_size": 20,
            "train.epochs": 3, "train.milestones": [2], "evaluation.ood": False,
            "evaluation.fgsm": False}  # fmt: skip
    rows = run_trial(from_flat(flat), tmp_path / "a")["history"]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01])
    warm = run_trial(from_flat({**flat, "train.warmup_epochs": 1}), tmp_path / "b")["history"]
    steps = 90 // 20  # 90 training images (10% held out), the last partial batch dropped
    assert warm[0]["lr"] == pytest.approx(0.1 * (steps + 1) / (2 * steps))
    assert [r["lr"] for r in warm[1:]] == pytest.approx([0.1, 0.01])


def test_weight_decay_groups():
    from rp_tune.models import build_model
    from rp_tune.trial.build import make_optimizer

    cfg = from_flat({"train.bn_weight_decay": False})
    opt = make_optimizer(build_model("cifar_resnet_8"), cfg)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in opt.param_groups[1]["params"])
    assert len(prunable_layers(build_model("cifar_resnet_8"))) == len(opt.param_groups[0]["params"])


def test_cli_runs_and_resumes(tmp_path, capsys):
    argv = [
        "--model",
        "cifar_resnet_8",
        "--scheme",
        "erk",
        "--density",
        "0.1",
        "--epochs",
        "2",
        "--data",
        "synthetic",
        "--out",
        str(tmp_path / "cli"),
        "--set",
        "data.synthetic_train=200",
        "--set",
        "train.batch_size=50",
    ]
    assert main(argv) == 0
    assert "test_acc=" in capsys.readouterr().out
    assert latest_checkpoint(tmp_path / "cli").name == "epoch_0002"
    assert main([*argv, "--resume"]) == 0  # finished: nothing left to train
    assert main(["--scheme", "nope"]) == 2
    assert "sparsity.scheme='nope'" in capsys.readouterr().err


def test_resuming_a_finished_run_reports_its_last_epoch_again(cifar_root, tmp_path):
    """A sweep stopped after the last checkpoint but before Tune recorded it must still end
    with the final metrics: the last epoch is handed to on_epoch again, with its checkpoint."""
    cfg = _cfg(cifar_root, **{"train.epochs": 2})
    full = run_trial(cfg, tmp_path / "run")
    ckpt = latest_checkpoint(tmp_path / "run")
    seen = []
    again = run_trial(cfg, tmp_path / "run", resume=ckpt, on_epoch=lambda m, d: seen.append((m, d)))
    assert len(seen) == 1
    metrics, ckpt_dir = seen[0]
    assert metrics["epoch"] == 2 and metrics["test_acc"] == full["test_acc"]
    assert ckpt_dir == ckpt and (ckpt_dir / "state.pt").is_file()
    assert again["test_acc"] == full["test_acc"]


def _ddp_draw_masks(rank, world, init, out, flat):
    """One DDP rank (gloo, CPU): draws the trial's masks from a batch only this rank has."""
    import torch.distributed as dist

    from rp_tune.data import Normalize, synthetic_arrays
    from rp_tune.models import build_model
    from rp_tune.trial.build import draw_masks
    from rp_tune.trial.state import TrialData

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = from_flat(flat)
        torch.manual_seed(0)
        model = build_model(cfg.model.name, 10)
        x, y = synthetic_arrays(32, 10, seed=100 + rank)  # this rank's shard: its own images
        batch = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y))
        data = TrialData([batch], None, None, 10, 1, resident=False)
        masks = draw_masks(cfg, model, data, torch.device("cpu"), Normalize("synthetic"))
        masks.save(f"{out}/rank{rank}.parquet")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_every_ddp_rank_trains_the_same_mask_for_data_dependent_schemes(tmp_path):
    """SNIP scores a batch; under DDP each rank holds another shard. The counts come from
    rank 0 and are broadcast, so both ranks build identical masks (2 CPU ranks, gloo)."""
    import torch.multiprocessing as mp

    flat = {"model.name": "cifar_resnet_8", "sparsity.scheme": "snip", "sparsity.density": 0.1}
    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_ddp_draw_masks, args=(2, init, str(tmp_path), flat), nprocs=2, join=True)
    m0 = Masks.load(tmp_path / "rank0.parquet")
    m1 = Masks.load(tmp_path / "rank1.parquet")
    assert m0.equals(m1)
    # the test can fail: rank 1's own batch alone gives another SNIP ratio
    from rp_tune.data import Normalize, synthetic_arrays
    from rp_tune.models import build_model, layer_specs
    from rp_tune.sparsity import layer_densities

    torch.manual_seed(0)
    model = build_model("cifar_resnet_8", 10)
    x, y = synthetic_arrays(32, 10, seed=101)
    px = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    batch = (Normalize("synthetic")(px), torch.from_numpy(y))
    own = layer_densities("snip", layer_specs(model), 0.1, model=model, batch=batch).kept
    assert list(own) != list(m0.kept().values())


def test_saliency_scores_normalized_images_and_grasp_takes_ten_per_class(tmp_path):
    """SNIP/GraSP see the images as training does (normalized); GraSP's batch is class-
    balanced with 10 images per class (Wang et al. 2020)."""
    from rp_tune.data import Normalize
    from rp_tune.models import build_model, layer_specs
    from rp_tune.sparsity import layer_densities
    from rp_tune.trial.build import draw_masks, load_data, score_batch

    flat = {
        "data.name": "synthetic",
        "data.synthetic_train": 400,
        "model.name": "cifar_resnet_8",
        "sparsity.scheme": "snip",
        "sparsity.density": 0.1,
    }
    cfg = from_flat(flat)
    cpu = torch.device("cpu")
    data = load_data(cfg, cpu, 0, 1)
    norm = Normalize("synthetic")
    x, y = score_batch(cfg, data, cpu, norm)
    assert x.shape[0] == 128 and x.min() < -0.5  # normalized, not [0, 1] pixels
    raw = (x * norm.std + norm.mean, y)  # the same images as [0, 1] pixels
    torch.manual_seed(0)
    model = build_model("cifar_resnet_8", 10)
    masks = draw_masks(cfg, model, data, cpu, norm)
    specs = layer_specs(model)
    scored = layer_densities("snip", specs, 0.1, model=model, batch=(x, y)).kept
    on_pixels = layer_densities("snip", specs, 0.1, model=model, batch=raw).kept
    assert list(masks.kept().values()) == list(scored) != list(on_pixels)
    gx, gy = score_batch(cfg.replace(**{"sparsity.scheme": "grasp"}), data, cpu, norm)
    assert torch.bincount(gy, minlength=10).tolist() == [10] * 10 and len(gx) == 100


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """A finished 3-epoch trial that kept a checkpoint per epoch."""
    out = tmp_path_factory.mktemp("ckpts")
    cfg = from_flat(
        {
            "data.name": "synthetic",
            "data.synthetic_train": 120,
            "model.name": "cifar_resnet_8",
            "train.epochs": 3,
            "train.batch_size": 30,
            "evaluation.fgsm": False,
            "evaluation.ood": False,
        }
    )
    run_trial(cfg, out, keep_checkpoints=3)
    return out


def test_a_damaged_newest_checkpoint_is_passed_over_by_path(three_checkpoints, tmp_path, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(three_checkpoints, out)
    newest = out / "checkpoints" / "epoch_0003"
    assert latest_checkpoint(out) == newest
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert latest_checkpoint(out) == out / "checkpoints" / "epoch_0002"
    assert f"{state}" in caplog.text
    (out / "checkpoints" / "epoch_0002" / "artifacts" / "masks.parquet").write_bytes(b"PAR1 broken")
    assert latest_checkpoint(out) == out / "checkpoints" / "epoch_0001"


def test_the_sweep_worker_resumes_from_the_newest_checkpoint_that_reads(
    three_checkpoints, tmp_path
):
    """Ray Train hands over its latest checkpoint; a damaged one is skipped for the newest
    older checkpoint beside it in the Train run's folder."""
    import shutil

    import ray.train

    from rp_tune.adapters.ray.trainable import _readable_checkpoint

    run = tmp_path / "train-x"
    names = [f"checkpoint_2026-12-01_10-00-0{i}.000000" for i in (1, 2, 3)]
    for i, name in enumerate(names, 1):
        shutil.copytree(three_checkpoints / "checkpoints" / f"epoch_{i:04d}", run / name)
    latest = ray.train.Checkpoint.from_directory(str(run / names[2]))
    folder, epoch, skipped = _readable_checkpoint(latest, tmp_path / "tmp")
    assert epoch == 3 and folder is not None and skipped == []
    # Train registered epoch 2, but a whole epoch-3 checkpoint was written after its driver
    # stopped: the trial goes on from the newer one instead of training epoch 3 again
    older = ray.train.Checkpoint.from_directory(str(run / names[1]))
    assert _readable_checkpoint(older, tmp_path / "tmp1")[1] == 3
    (run / names[2] / "state.pt").write_bytes(b"")
    folder, epoch, skipped = _readable_checkpoint(latest, tmp_path / "tmp2")
    assert epoch == 2 and torch.load(folder / "state.pt", weights_only=False)["epoch"] == 2
    assert len(skipped) == 1 and names[2] in skipped[0]  # what the console reports
    for name in names[:2]:
        (run / name / "state.pt").write_bytes(b"x")
    assert _readable_checkpoint(latest, tmp_path / "tmp3")[:2] == (None, 0)


def test_the_single_trial_cli_refuses_an_untrainable_config_in_one_line(tmp_path, capsys):
    args = ["--model", "cifar_resnet_8", "--scheme", "uniform", "--density", "1e-9",
            "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "keeps no weight in 10 of 10 layers" in err


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_a_checkpoint_of_the_layout_before_the_artifacts_folder_still_resumes_and_logs(
    cifar_root, tmp_path
):
    """Releases before the artifacts folder kept masks, history and gradient flow at the top
    of a checkpoint: resuming reads those masks, and trackers log them (with the density
    report those releases' trackers wrote themselves)."""
    import shutil

    from rp_tune.adapters.mlflow.runs import _fetch_artifacts

    cfg = _cfg(cifar_root, **{"train.epochs": 2})
    full = run_trial(cfg, tmp_path / "full")
    run_trial(cfg, tmp_path / "old", stop_after=1)
    ckpt = latest_checkpoint(tmp_path / "old")
    for name in ("masks.parquet", "history.json", "grad_flow.csv"):
        shutil.move(ckpt / "artifacts" / name, ckpt / name)
    shutil.rmtree(ckpt / "artifacts")
    logged = _fetch_artifacts(str(ckpt), tmp_path / "fetched")
    assert sorted(p.name for p in logged.iterdir()) == [
        "density_report.csv", "grad_flow.csv", "history.json", "masks.parquet"
    ]  # fmt: skip
    # nor did their epochs count their training FLOPs: the total is not half of it
    state = torch.load(ckpt / "state.pt", weights_only=False)
    for row in state["history"]:
        del row["epoch_train_flops"]
    torch.save(state, ckpt / "state.pt")
    resumed = run_trial(cfg, tmp_path / "old", resume=latest_checkpoint(tmp_path / "old"))
    assert resumed["history"][1]["train_loss"] == full["history"][1]["train_loss"]
    assert resumed["train_flops_sparse"] == pytest.approx(full["train_flops_sparse"])


def test_the_cli_resumes_a_run_saved_under_an_earlier_releases_run_key(
    cifar_root, tmp_path, monkeypatch, capsys
):
    """`--resume` of a run whose checkpoint an earlier release saved (its config lacks a
    field added since, so its run key differs): found in runs/ by its config, resumed under
    the key it was saved with."""
    monkeypatch.chdir(tmp_path)
    args = ["--model", "cifar_resnet_8", "--density", "0.1", "--data", "cifar10", "--epochs",
            "2", "--data-root", str(cifar_root), "--device", "cpu", "--set",
            "evaluation.ood_sets=gaussian", "--set", "train.batch_size=20"]  # fmt: skip
    from rp_tune.trial.cli import config_from_args

    cfg = config_from_args(_parse_args_for_test(args)).replace(**{"resources.gpus_per_worker": 0.0})
    old_key = run_key(cfg).rsplit("-", 1)[0] + "-0123456789"  # what the earlier release named it
    run_trial(cfg, tmp_path / "runs" / old_key, key=old_key, stop_after=1)
    ckpt = latest_checkpoint(tmp_path / "runs" / old_key)
    state = torch.load(ckpt / "state.pt", weights_only=False)
    del state["config"]["sparsity.grasp_per_class"]  # the field that release did not have
    torch.save(state, ckpt / "state.pt")
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"output: runs/{old_key}" in out
    assert latest_checkpoint(tmp_path / "runs" / old_key).name == "epoch_0002"
    assert not (tmp_path / "runs" / run_key(cfg)).exists()


def _parse_args_for_test(args):
    from rp_tune.trial.cli import _parse_args

    return _parse_args(args)


def test_mask_init_and_data_order_each_have_their_own_seed(tmp_path):
    """seeds.mask / seeds.init / seeds.data vary one source of randomness alone; unset, each
    takes the trial's seed (the same trial as before they existed, bit for bit)."""
    from rp_tune.trial.build import setup

    base = {"model.name": "cifar_resnet_8", "data.name": "synthetic",
            "data.synthetic_train": 128, "data.synthetic_test": 32, "train.batch_size": 32,
            "sparsity.scheme": "erk", "sparsity.density": 0.3}  # fmt: skip

    def parts(**over):
        cfg = from_flat({**base, **over})
        t = setup(cfg, tmp_path / run_key(cfg), run_key(cfg), device="cpu")
        masks = {k: v.clone() for k, v in t.masks.state_dict().items()}
        weights = {n: p.detach().clone() for n, p in t.model.named_parameters()}
        _, labels = next(iter(t.data.train.epoch(0)))
        return masks, weights, labels

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    m0, w0, y0 = parts()
    m, w, y = parts(**{"seeds.mask": 0, "seeds.init": 0, "seeds.data": 0})
    assert same(m, m0) and same(w, w0) and torch.equal(y, y0)
    m, w, y = parts(**{"seeds.mask": 1})
    assert not same(m, m0) and torch.equal(y, y0)
    for name, mask in m.items():  # the same initial weights, wherever both masks keep one
        both = mask & m0[name]
        assert torch.equal(w[f"{name}.weight"][both], w0[f"{name}.weight"][both])
    masked = {f"{name}.weight" for name in m}
    assert all(torch.equal(w[k], w0[k]) for k in w if k not in masked)  # BN, biases
    m, w, y = parts(**{"seeds.init": 1})
    assert same(m, m0) and not same(w, w0) and torch.equal(y, y0)
    m, w, y = parts(**{"seeds.data": 1})
    assert same(m, m0) and same(w, w0) and not torch.equal(y, y0)
    m, w, y = parts(seed=1)
    assert not same(m, m0) and not same(w, w0) and not torch.equal(y, y0)
    assert "-s0m1-" in run_key(from_flat({**base, "seeds.mask": 1}))
    with pytest.raises(ConfigError, match=r"seeds.init=-1 is invalid; valid: none"):
        from_flat({**base, "seeds.init": -1})


def test_the_first_row_of_each_run_says_what_it_trains_on(cifar_root, tmp_path):
    """The dataset record (name, digest of the integrity manifest, split sizes) rides on the
    first row a process reports, for the tracker's MLflow input; never in the history."""
    import json

    from rp_tune.data import integrity_manifest, manifest_digest

    cfg = _cfg(cifar_root, **{"train.epochs": 3})
    rows = []
    part = run_trial(cfg, tmp_path / "run", stop_after=2, on_epoch=lambda m, c: rows.append(m))
    assert "dataset" in rows[0] and "dataset" not in rows[1]
    assert all("dataset" not in h for h in part["history"])
    record = json.loads(rows[0]["dataset"])
    assert record["name"] == "cifar10" and record["num_classes"] == 10
    assert (record["train_examples"], record["val_examples"]) == (180, 20)  # 10% held out
    assert record["test_examples"] == 60
    assert record["digest"] == manifest_digest(integrity_manifest(cfg.data))
    rows.clear()  # a resumed run says it again, with the same digest
    run_trial(cfg, tmp_path / "run", resume=latest_checkpoint(tmp_path / "run"),
              on_epoch=lambda m, c: rows.append(m))  # fmt: skip
    assert json.loads(rows[0]["dataset"]) == record and len(rows) == 1


def test_each_epochs_validation_is_of_the_model_that_epoch_ended_with(cifar_root, tmp_path):
    """Issue 19's slip, for the validation values: epoch e's val_loss, val_acc and val_ece are
    those of the weights epoch e ended with (its checkpoint), not of the next epoch's; its
    images_per_second is its own images over its own seconds."""
    from rp_tune.trial.build import setup
    from rp_tune.trial.evaluation import evaluate

    cfg = _cfg(cifar_root, **{"train.epochs": 2})
    result = run_trial(cfg, tmp_path / "run", keep_checkpoints=2)
    trial = setup(cfg, tmp_path / "probe", run_key(cfg), "cpu")
    for row in result["history"]:
        folder = tmp_path / "run" / "checkpoints" / f"epoch_{row['epoch']:04d}"
        state = torch.load(folder / "state.pt", weights_only=False)
        trial.model.load_state_dict(state["model"])
        val = evaluate(trial.model, trial.normalize, trial.data.val, trial.device, True,
                       trial.autocast, with_ece=True)  # fmt: skip
        assert row["val_acc"] == pytest.approx(val["acc"], abs=1e-12)
        assert row["val_loss"] == pytest.approx(val["loss"], rel=1e-6)
        assert row["val_ece"] == pytest.approx(val["ece"], rel=1e-6)
        assert row["images_per_second"] == pytest.approx(180 // 20 * 20 / row["epoch_seconds"])


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_a_trial_on_tiny_imagenet_sees_64x64_images_and_64x64_noise(tmp_path):
    from tests.helpers import write_tiny_imagenet

    write_tiny_imagenet(tmp_path / "data", per_class=10, val_per_class=4)
    cfg = _cfg(tmp_path / "data", **{"data.name": "tinyimagenet", "model.name": "cifar_resnet_8",
                                     "train.epochs": 1, "train.batch_size": 9})  # fmt: skip
    assert cfg.data.num_classes == 0 and cfg.data.classes == 200
    r = run_trial(cfg, tmp_path / "run")
    assert r["epoch"] == 1 and 0.0 <= r["test_acc"] <= 1.0 and "ood_auroc_gaussian" in r
    # FLOPs at 64x64: four times those of the same net on 32x32 images
    small = run_trial(_cfg(tmp_path / "none", **{"data.name": "synthetic", "train.epochs": 1,
                                                 "model.name": "cifar_resnet_8",
                                                 "data.num_classes": 3}),
                      tmp_path / "small")  # fmt: skip
    assert r["flops_dense"] == pytest.approx(4 * small["flops_dense"], rel=0.02)
