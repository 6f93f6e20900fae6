"""The sweep CLI: expansion and validation without Ray; real local Ray runs marked slow."""

import json
import os
import re
import signal
import time
import types

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from rp_tune.config import run_key
from rp_tune.core.errors import SweepError
from rp_tune.planning.space import expand_space
from search_spaces import space_names
from tests.helpers import cli, incli

N_SMOKE = len(expand_space("smoke"))


def test_every_space_expands_and_validates_full_and_smoke():
    for name in space_names():
        assert expand_space(name), name
        assert expand_space(name, smoke=True), name


def test_width_scan_count_and_dense_dedup():
    cfgs = expand_space("width_scan")
    # 6 widths x 3 seeds x (5 schemes x 9 sparse densities + 1 dense)
    assert len(cfgs) == 6 * 3 * (5 * 9 + 1) == 828
    dense = [c for c in cfgs if c.sparsity.density == 1.0]
    assert len(dense) == 18 and all(run_key(c).split("-")[1] == "dense" for c in dense)
    assert len({run_key(c) for c in cfgs}) == len(cfgs)


def test_overrides_apply_to_every_trial():
    cfgs = expand_space("depth_scan", {"data.name": "cifar100", "train.epochs": "3"})
    assert {c.data.name for c in cfgs} == {"cifar100"} and {c.train.epochs for c in cfgs} == {3}


def test_dry_run_says_what_the_sweep_varies_and_costs(tmp_path, capsys):
    r = incli(capsys, "--space", "width_scan", "--dry-run", "--storage", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "space width_scan: 828 trials over 4 axes" in out
    # numeric order; the default width 16 is the network's one name, cifar_resnet_20
    assert "cifar_resnet_20_8, cifar_resnet_20, cifar_resnet_20_24" in out
    assert "seed              0, 1, 2" in out and "fixed: data.name=cifar10" in out
    # the device kind is this machine's (the CPU here, a GPU where there is one)
    assert re.search(r"828 trials; estimated 69.8 device-hours \((CPU|GPU)\)", out), out
    assert "at an assumed 25 TFLOP/s per device: no finished trial under" in out
    assert f"results would go to {tmp_path / 'res' / 'width_scan'}" in out
    assert len(out.splitlines()) < 15 and "add -v" in out
    assert not (tmp_path / "res").exists()


def test_a_search_dry_run_says_which_probes_fuse_into_trial_groups_and_why_not(tmp_path, capsys):
    base = ["--space", "smoke", "--search", "matching", "--dry-run", "--group-size", "4"]
    r = incli(capsys, *base, "--storage", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    assert "trial groups of up to 4: the probes queued at once of 2 of 2 groups" in r.stdout
    r = incli(capsys, *base, "--set", "resources.workers=2", "--storage", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    assert "of 0 of 2 groups" in r.stdout
    assert "alone (2: cifar_resnet_8 erk, cifar_resnet_8 uniform): resources.workers=2" in r.stdout
    assert not (tmp_path / "res").exists()


def test_help_lists_the_spaces_with_what_they_reproduce(capsys):
    r = incli(capsys, "--help")
    assert r.returncode == 0
    assert "width_scan" in r.stdout and "Liu et al. Fig. 2" in r.stdout


def test_status_reads_the_sweep_without_ray(tmp_path, capsys):
    from rp_tune.planning.records import write_stored_trials

    r = incli(capsys, "--space", "smoke", "--status", "--storage", str(tmp_path / "res"))
    assert r.returncode == 2 and "no sweep at" in r.stderr
    write_stored_trials(str(tmp_path / "res" / "smoke"), expand_space("smoke"))
    r = incli(capsys, "--space", "smoke", "--status", "--storage", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    assert (
        f"trials: {N_SMOKE}  finished: 0  running: 0  failed: 0  stopped: 0  pending: " in r.stdout
    )
    assert "no driver is running it; continue it with: python run_sweep.py" in r.stdout
    assert "--resume" in r.stdout and "--status --resume" not in r.stdout


def test_dry_run_verbose_lists_every_trial(tmp_path, capsys):
    r = incli(capsys, "--space", "width_scan", "--dry-run", "-v", "--storage", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "828 trials; estimated" in r.stdout and "device-hours" in r.stdout
    assert (
        len([ln for ln in r.stdout.splitlines() if "-s0-" in ln or "-s1-" in ln or "-s2-" in ln])
        == 828
    )
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--space", "nope"], "unknown search space 'nope'; valid choices: ["),
        (["--space", "smoke", "--set", "train.epoch=2"], "unknown config key(s) ['train.epoch']"),
        (["--space", "smoke", "--set", "train.epochs=two"], "train.epochs='two' is invalid"),
        (
            ["--space", "smoke", "--set", "sparsity.density=1.5"],
            "search space 'smoke': sparsity.density=1.5 is invalid; valid: a number in (0, 1]",
        ),
        (["--space", "smoke", "--set", "sparsity.scheme=magic"], "sparsity.scheme='magic'"),
        (
            ["--space", "smoke", "--gpus-per-trial", "0.5", "--workers-per-trial", "2"],
            "NCCL cannot run several DDP workers on one GPU",
        ),
        (["--space", "smoke", "--set", "nonsense"], "is not KEY=VALUE"),
        (
            [
                "--space",
                "smoke",
                "--set",
                "data.name=cifar10",
                "--set",
                "data.download=false",
                "--set",
                "data.root=/nonexistent/rp",
            ],
            "dataset cifar10 at data.root='/nonexistent/rp': missing or corrupt (no such folder)",
        ),
        (["--space", "smoke", "--max-concurrent", "0"], "--max-concurrent=0 is invalid"),
        (["--space", "smoke", "--num-cpus", "0"], "--num-cpus=0 is invalid"),
        (["--space", "smoke", "--storage", "/proc/x"], "--storage '/proc/x' cannot be used"),
        (["--space", "smoke", "--storage", "/etc/hostname/sub"], "/etc/hostname is a file"),
        (["--space", "smoke", "--gpus-per-trial", "inf"], "gpus_per_worker=inf is invalid"),
        (["--space", "smoke", "--gpus-per-trial", "nan"], "gpus_per_worker=nan is invalid"),
        (["--space", "smoke", "--assumed-tflops", "-1", "--dry-run"], "--assumed-tflops=-1"),
        (["--space", "smoke", "--set", "train.weight_decay=nan"], "a finite number"),
        (["--space", "smoke", "--set", "resources.cpus_per_worker=inf"], "a finite number"),
        (["--space", "smoke", "--set", "train.batch_size=4096"], "larger than the training shard"),
        (["--space", "smoke", "--set", "sparsity.density=1e-9"], "keeps no weight in 10 of 10"),
        (
            ["--space", "smoke", "--set", "data.name=cifar10", "--set", "data.root=/etc/hostname"],
            "that is a file, not a folder",
        ),
        # the matching-density search (README: --search matching)
        (
            ["--space", "smoke", "--search", "matching", "--set", "sparsity.density=0.5"],
            "space 'smoke' has no density axis (its densities: [0.5])",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "low=0"],
            "search bound low=0.0 is invalid; valid: in (0, 1]",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "high=1.5"],
            "search bound high=1.5 is invalid; valid: in (0, 1]",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "resolution=1"],
            "search resolution 1.0 is invalid; valid: a factor > 1",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "seed_cap=0"],
            "search seed cap 0 is invalid; valid: integers >= 1",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "seed_cap=3.7"],
            "search setting seed_cap='3.7' is invalid; valid: an integer",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "dense_seeds=1"],
            "search dense_seeds 1 is invalid; valid: integers >= 2",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "seeds=3"],
            "search settings ['seeds'] are unknown; valid: low, high, resolution",
        ),
        (
            ["--space", "smoke", "--search", "matching", "--extend"],
            "--search matching decides its own trials and --extend adds",
        ),
        (
            ["--space", "smoke", "--search", "bisect"],
            "--search 'bisect' is invalid; valid: grid, matching",
        ),
        (["--space", "smoke", "--search-set", "low=0.1"], "--search-set sets a search"),
        (
            ["--space", "smoke", "--search", "matching", "--search-set", "margin=-1"],
            "search margin -1.0 is invalid; valid: a number >= 0",
        ),
        (
            ["--space", "imp_sparse_to_sparse", "--search", "matching", "--dry-run"],
            "group 'cifar_resnet_20 er+imp' cannot train density 0.999",
        ),
        (
            ["--space", "smoke", "--toy-trials", "0.01", "--set", "data.name=cifar10"],
            "--toy-trials 0.01 replaces training by a known curve, for tests",
        ),
    ],
)
def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, capsys, args, message):
    storage = [] if "--storage" in args else ["--storage", str(tmp_path / "res")]
    r = incli(capsys, *args, *storage)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists()


OFFLINE = {
    # every download goes to a closed port: offline, whatever the machine's network
    **os.environ,
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "",
}


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_absent_dataset_that_cannot_be_downloaded_stops_the_sweep_at_once(tmp_path):
    """Offline, a sweep on CIFAR-10 fails before Ray starts with one message naming the
    dataset, the root, the layout and the fixes; the failed download leaves nothing behind."""
    data = tmp_path / "data"
    r = cli(
        "--space", "ratio_scan", "--smoke", "--set", "data.name=cifar10",
        "--set", f"data.root={data}", "--storage", str(tmp_path / "res"),
        env=OFFLINE, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr
    assert f"error: dataset cifar10 at data.root='{data}'" in err, err
    assert "the download failed" in err and "expected there: cifar-10-batches-py/" in err
    assert "python -m rp_tune.data prepare cifar10 --from-folder DIR" in err
    assert "Traceback" not in err and "ray" not in err.lower().replace("array", "")
    assert not (tmp_path / "res").exists() and not data.exists()


def test_a_root_left_with_only_a_lock_file_is_not_a_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".cifar10.lock").write_text("")
    r = incli(
        capsys, "--space", "smoke", "--set", "data.name=cifar10", "--set", "data.download=false",
        "--set", f"data.root={data}", "--storage", str(tmp_path / "res"),
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "dataset cifar10 at data.root=" in r.stderr and "missing or corrupt" in r.stderr
    assert not (tmp_path / "res").exists()
    assert sorted(p.name for p in data.iterdir()) == [".cifar10.lock"]  # nothing added


def test_report_needs_the_results_not_the_data(tmp_path, capsys):
    r = incli(capsys, "--space", "smoke", "--set", "data.name=cifar10", "--set",
              "data.download=false", "--set", f"data.root={tmp_path / 'none'}", "--storage",
              str(tmp_path / "res"), "--report")  # fmt: skip
    assert r.returncode == 2 and "no sweep at" in r.stderr and "dataset" not in r.stderr


def test_missing_ood_sets_stop_the_sweep_unless_left_out_explicitly(tmp_path):
    """CIFAR-10's default OoD sets (CIFAR-100, SVHN) are data the sweep needs."""
    from rp_tune.planning.space import check_data_roots
    from tests.helpers import write_tiny_cifar10

    data = tmp_path / "data"
    write_tiny_cifar10(data)
    base = {"data.name": "cifar10", "data.root": str(data), "data.download": "false"}
    with pytest.raises(SweepError) as e:
        check_data_roots(expand_space("smoke", {**base, "evaluation.ood_sets": ""}))
    assert "dataset cifar100 at data.root=" in str(e.value)
    assert "evaluation.ood_download=true" in str(e.value) and "data.download" not in str(e.value)
    # leaving them out is a choice the config states
    check_data_roots(expand_space("smoke", {**base, "evaluation.ood_sets": "gaussian"}))
    check_data_roots(
        expand_space("smoke", {**base, "evaluation.ood_sets": "", "evaluation.ood": "0"})
    )


def test_a_space_file_that_fails_to_load_names_its_file_and_line(tmp_path, monkeypatch):
    import search_spaces

    (tmp_path / "broken_syntax.py").write_text("GRID = {\nFIXED = {}\n")
    (tmp_path / "broken_import.py").write_text("DESCRIPTION = 'x'\nimport no_such_module\n")
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path)])
    with pytest.raises(SweepError, match=r"broken_syntax.py, line 1: '\{' was never closed"):
        expand_space("broken_syntax")
    with pytest.raises(SweepError, match=r"broken_import.py, line 2: ModuleNotFoundError"):
        expand_space("broken_import")
    # an error raised inside a helper the space calls names the space's own line
    (tmp_path / "space_helper.py").write_text("def widths():\n    raise ValueError('no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "uses_helper.py").write_text(
        "import sys\n\nimport space_helper\n\nW = space_helper.widths()\n"
    )
    with pytest.raises(SweepError, match=r"uses_helper.py, line 5: ValueError: no"):
        expand_space("uses_helper")


def test_density_out_of_range_inside_a_space():
    space = types.ModuleType("bad_space")
    space.DESCRIPTION, space.FIXED, space.SMOKE = "x", {}, {}
    space.GRID = {"sparsity.density": [0.5, 0.0]}
    with pytest.raises(SweepError, match=r"search space 'bad_space': sparsity.density=0.0 is inv"):
        expand_space(space)


@pytest.mark.slow
def test_smoke_sweep_runs_with_defaults(smoke_sweep, capsys):
    r, tmp_path = smoke_sweep.run, smoke_sweep.root.parent
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"trials: {N_SMOKE}  finished: {N_SMOKE}  failed: 0" in r.stdout
    # a quiet console: our event lines and progress, Ray's and the workers' output in files,
    # the summary table last
    lines = r.stdout.splitlines()
    assert lines[-1].startswith(f"trials: {N_SMOKE}  finished:"), r.stdout
    assert sum(" started  " in ln for ln in lines) == N_SMOKE
    assert sum(" finished " in ln and "test_acc" in ln for ln in lines) == N_SMOKE
    assert any(" done, " in ln and "ETA" in ln for ln in lines)
    assert "mlflow ui --backend-store-uri sqlite:///" in r.stdout
    assert "the sweep's trials compared: http://127.0.0.1:5000/#/experiments/" in r.stdout
    url = json.loads((tmp_path / "res" / "smoke" / "summary.json").read_text())["mlflow_url"]
    assert url and url in r.stdout
    assert "TrainingReport(" not in r.stdout + r.stderr and "Trial status" not in r.stdout
    assert "(raylet)" not in r.stdout + r.stderr  # Ray's worker-startup warning is not ours
    assert len(lines) < 40 + N_SMOKE, r.stdout
    assert (tmp_path / "res" / "smoke" / "driver.log").stat().st_size > 0
    # Tune's state of a finished trial: its run key, not its config; no per-metric statistics
    (state_file,) = (tmp_path / "res" / "smoke").glob("experiment_state-*.json")
    trial_data = json.loads(state_file.read_text())["trial_data"]
    assert len(trial_data) == N_SMOKE
    for trial_json, metadata_json in trial_data:
        assert "model.name" not in trial_json + metadata_json  # the flat config
        metadata = json.loads(metadata_json)
        assert metadata["metric_analysis"] == {} and metadata["metric_n_steps"] == {}
        assert metadata["last_result"]["test_acc"] >= 0
        assert len(trial_json) + len(metadata_json) < 12_000, (len(trial_json), metadata_json)
    status = incli(capsys, "--space", "smoke", "--storage", str(tmp_path / "res"), "--status")
    assert status.returncode == 0 and f"finished: {N_SMOKE}" in status.stdout, status.stderr
    assert url in status.stdout  # from summary.json: --status asks MLflow nothing
    summary = json.loads((tmp_path / "res" / "smoke" / "summary.json").read_text())
    assert {t["status"] for t in summary["trials"]} == {"finished"}
    for t in summary["trials"]:
        assert t["metrics"]["epoch"] == 2 and 0 <= t["metrics"]["test_acc"] <= 1
        assert "ood_auroc_gaussian" in t["metrics"]
        # cost and provenance: the trial's own time inside its wall-clock, its machine
        m = t["metrics"]
        assert 0 < m["train_seconds"] + m["eval_seconds"] < m["wall_seconds"]
        assert m["device"] == "CPU" and m["device_hours"] > 0 and m["env_gpu"] == "cpu"
    totals = summary["totals"]
    assert totals["train_seconds"] == pytest.approx(
        sum(t["metrics"]["train_seconds"] for t in summary["trials"])
    )
    assert totals["sweep_wall_seconds"] > 0 and len(summary["code"]["commit"]) in (7, 40)
    assert any(ln.startswith("cost: ") and "CPU-hours" in ln for ln in lines), r.stdout
    # embedded tracking: SQLite beside the results, one parent, a child per trial
    client = MlflowClient(f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    assert (
        sorted(r.data.tags.get("rp_tune.role", "trial") for r in runs)
        == ["sweep"] + ["trial"] * N_SMOKE
    )
    for run in runs:
        assert run.data.tags["rp_tune.git_dirty"] in ("true", "false", "none")
        if run.data.tags.get("rp_tune.role") != "sweep":
            tags = run.data.tags
            assert tags["rp_tune.env_gpu"] == "cpu" and "rp_tune.env_torch" in tags
            assert run.data.metrics["wall_seconds"] > run.data.metrics["train_seconds"] > 0
            # --system-metrics on: MLflow's monitors, one mean per epoch; the dataset input
            cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
            assert [m.step for m in cpu] == [1, 2] and all(0 <= m.value <= 100 for m in cpu)
            assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["synthetic"]
        else:
            assert float(run.data.tags["total_train_seconds"]) > 0 and not run.data.metrics
    # the report: one Parquet row per trial, figures on disk
    rep = incli(capsys, "--space", "smoke", "--storage", str(tmp_path / "res"), "--report")
    assert rep.returncode == 0, rep.stderr
    assert "mean ± std (n) over seeds" in rep.stdout and "no finished dense trial" in rep.stdout
    assert (tmp_path / "res" / "smoke" / "report" / "aggregate.csv").is_file()
    table = pq.read_table(tmp_path / "res" / "smoke" / "report" / "results.parquet")
    assert sorted(table.column("run_key").to_pylist()) == sorted(
        t["run_key"] for t in summary["trials"]
    )
    by_key = {t["run_key"]: t for t in summary["trials"]}
    for row in table.to_pylist():
        t = by_key[row["run_key"]]
        assert row["test_acc"] == pytest.approx(t["metrics"]["test_acc"])
        assert row["sparsity.density"] == pytest.approx(t["metrics"]["achieved_density"])
        assert row["status"] == "finished" and row["model.name"] == "cifar_resnet_8"
    for metric in ("test_acc", "test_ece", "test_loss", "fgsm_acc", "ood_auroc_gaussian"):
        assert (tmp_path / "res" / "smoke" / "report" / f"{metric}_vs_sparsity.png").is_file()
    # a second run without --resume refuses to touch the finished sweep
    again = cli("--space", "smoke", "--storage", str(tmp_path / "res"), "--num-cpus", "2")
    assert again.returncode == 2 and "pass --resume" in again.stderr
    # --extend: two more densities for erk, trained as one fused trial group of 2; the four
    # finished trials are kept, not retrained; each member is a trial of its own everywhere
    before = {
        p.parent.name: p.read_bytes() for p in (tmp_path / "res" / "smoke").glob("*/result.json")
    }
    more = ["--extend", "--set", "sparsity.scheme=erk", "--grid", "sparsity.density=0.1,0.3,0.7",
            "--group-size", "2"]  # fmt: skip
    ext = cli("--space", "smoke", "--storage", str(tmp_path / "res"), "--num-cpus", "2", *more)
    assert ext.returncode == 0, ext.stdout[-3000:] + ext.stderr[-3000:]
    assert "extended: 2 new trials, 4 finished before and kept" in ext.stdout
    assert "trial groups of up to 2: 2 trials in 1 groups, 0 alone" in ext.stdout
    assert f"trials: {N_SMOKE + 2}  finished: {N_SMOKE + 2}  failed: 0" in ext.stdout
    assert sum(" finished " in ln and "test_acc" in ln for ln in ext.stdout.splitlines()) == 2
    for key, content in before.items():
        assert (tmp_path / "res" / "smoke" / key / "result.json").read_bytes() == content, key
    summary = json.loads((tmp_path / "res" / "smoke" / "summary.json").read_text())
    members = [t for t in summary["trials"] if t["metrics"].get("group_size") == 2]
    assert sorted(t["metrics"]["achieved_density"] for t in members) == pytest.approx([0.3, 0.7])
    assert {t["metrics"]["group"] for t in members} == {members[0]["metrics"]["group"]}
    assert all(t["metrics"]["device_hours"] > 0 and t["epoch"] == 2 for t in members)
    status = incli(capsys, "--space", "smoke", "--storage", str(tmp_path / "res"), "--status")
    assert f"finished: {N_SMOKE + 2}" in status.stdout and "group-" not in status.stdout
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("rp_tune.role") != "sweep"]
    assert len(runs) == N_SMOKE + 3 and len({r.data.tags["rp_tune.run_key"] for r in children}) == 6
    for run in children:  # the members' own runs: per-epoch metrics and their masks
        if run.data.tags["rp_tune.run_key"] in {t["run_key"] for t in members}:
            assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
            arts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert "masks.parquet" in arts
    rep = incli(capsys, "--space", "smoke", "--storage", str(tmp_path / "res"), "--report")
    table = pq.read_table(tmp_path / "res" / "smoke" / "report" / "results.parquet")
    assert table.num_rows == N_SMOKE + 2 and not any(
        k.startswith("group-") for k in table.column("run_key").to_pylist()
    )


@pytest.mark.parametrize(
    "space,figure,count",
    [
        ("imagenet_fig5", "Fig. 5", 4 * 4 + (2 * 3 + 1)),
        ("width_multiplier", "Fig. 7", 3 * 6 * 3 * (4 + 1)),
        ("classifier_sparsity", "Fig. 14 left", 5),
        ("grasp_ratio", "Appendix C", 5 * 3 * (3 * 5 + 1)),
        ("er_width", "Gadhikar et al.", 3 * (2 + 4 + 6 + 8 + 1)),
    ],
)
def test_the_papers_experiments_have_spaces_naming_their_figure(space, figure, count):
    from search_spaces import load_space

    assert figure in load_space(space).DESCRIPTION
    cfgs = expand_space(space)
    assert len(cfgs) == count == len({run_key(c) for c in cfgs})
    assert expand_space(space, smoke=True)


def test_fig5_space_pairs_every_imagenet_model_with_its_dense_twin():
    cfgs = expand_space("imagenet_fig5")
    by_model: dict = {}
    for c in cfgs:
        by_model.setdefault(c.model.name, set()).add((c.sparsity.scheme, c.sparsity.density))
    for name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        assert by_model[name] == {("snip", d) for d in (0.7, 0.5, 0.3)} | {("uniform", 1.0)}
    wrn = by_model["wide_resnet50_2"]
    assert wrn == {(s, d) for s in ("snip", "erk_plus") for d in (0.7, 0.5, 0.3)} | {
        ("uniform", 1.0)
    }
    assert all(c.train.recipe == "imagenet" and c.data.val_fraction == 0.0 for c in cfgs)


def test_classifier_sparsity_space_holds_the_overall_density_at_70_percent_sparsity():
    from rp_tune.models import build_model, layer_specs
    from rp_tune.sparsity import layer_densities

    specs = layer_specs(build_model("wide_resnet50_2", 1000))
    for c in expand_space("classifier_sparsity"):
        fc = c.sparsity.fc_density
        plan = layer_densities("erk", specs, 0.3, overrides={"fc": fc})
        assert plan.achieved_density == pytest.approx(0.3, abs=1e-6)
        assert plan.as_dict()["fc"] == pytest.approx(fc, abs=1e-4)
        # the erk_plus preset is the same plan, up to one weight of rounding per layer
        preset = layer_densities("erk_plus", specs, 0.3, fc_density=fc)
        assert all(abs(a - b) <= 1 for a, b in zip(plan.kept, preset.kept))


def test_er_width_space_widens_each_density_up_to_its_factor():
    from rp_tune.models import parse_cifar_resnet
    from rp_tune.sparsity import width_factor

    assert width_factor(0.5) == pytest.approx(1.4427, abs=1e-4)
    assert width_factor(0.1) == pytest.approx(9.4912, abs=1e-4)
    widths: dict = {}
    for c in expand_space("er_width"):
        widths.setdefault(c.sparsity.density, set()).add(parse_cifar_resnet(c.model.name)[1])
    assert widths.pop(1.0) == {16}  # the dense target
    for p, ws in widths.items():
        top = sorted(ws)
        assert top[0] == 16 and top[-1] / 16 >= width_factor(p) > top[-2] / 16, (p, top)


def test_gpus_by_default_wherever_the_cluster_has_them():
    """No flag: one GPU per training worker where there are GPUs, the CPU where there are
    none; an explicit value (a flag, a space, --set; 0 = CPU) is kept."""
    from rp_tune.planning.capacity import resolve_gpus

    cfgs = expand_space("width_scan", smoke=True)
    assert {c.resources.gpus_per_worker for c in cfgs} == {None}  # unset: the sweep decides
    on_gpus, why = resolve_gpus(cfgs, {"CPU": 64, "GPU": 8}, "the Ray cluster")
    assert {c.resources.gpus_per_worker for c in on_gpus} == {1.0}
    assert "the Ray cluster has 8" in why and "1 GPU" in why
    on_cpu, why = resolve_gpus(cfgs, {"CPU": 2}, "this machine")
    assert {c.resources.gpus_per_worker for c in on_cpu} == {0.0} and "has none" in why
    asked = expand_space("width_scan", {"resources.gpus_per_worker": "0"}, smoke=True)
    kept, why = resolve_gpus(asked, {"GPU": 8}, "the Ray cluster")
    assert {c.resources.gpus_per_worker for c in kept} == {0.0} and "as set: 0" in why
    later, why = resolve_gpus(cfgs, None, "the Ray cluster")
    assert {c.resources.gpus_per_worker for c in later} == {None} and "decided when" in why
    assert len({run_key(c) for c in on_gpus}) == len(cfgs)


def test_dry_run_says_which_device_the_trials_get_and_why(tmp_path, capsys, monkeypatch):
    r = incli(capsys, "--space", "smoke", "--dry-run", "--storage", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    import torch

    if not torch.cuda.is_available():
        assert "GPUs: this machine has none, so trials train on the CPU" in r.stdout
    # on a `ray up` head node the autoscaler's node types say how many GPUs there will be
    conf = tmp_path / "bootstrap.yaml"
    conf.write_text(
        "max_workers: 2\nhead_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 8}, max_workers: 0}\n"
        "  gpu: {resources: {CPU: 48, GPU: 4}, max_workers: 2}\n"
    )
    monkeypatch.setenv("RP_TUNE_AUTOSCALING_CONFIG", str(conf))
    r = incli(capsys, "--space", "smoke", "--dry-run", "-v", "--address", "auto")
    assert r.returncode == 0, r.stderr
    assert "GPUs: the cluster's node types" in r.stdout and "has 8, so each" in r.stdout
    rows = [ln.split() for ln in r.stdout.splitlines() if "-s0-" in ln]
    assert rows and all(row[4] == "1" for row in rows)  # the gpu/w column
    r = incli(capsys, "--space", "smoke", "--dry-run", "--gpus-per-trial", "0")
    assert "GPUs per training worker as set: 0" in r.stdout


FAKE_GPU_CLUSTER = """
import ray, time
ctx = ray.init(num_cpus=1, num_gpus=2, include_dashboard=False)
print(ctx.address_info["gcs_address"], ctx.address_info["session_dir"], flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_dry_run_counts_the_gpus_of_the_cluster_it_is_pointed_at(tmp_path):
    """`--address` at a running Ray (here one with 2 fake GPUs, as `ray start --head
    --num-gpus 2` makes): the dry run joins it for a moment, says it has 2 GPUs and gives
    every trial one per worker, as the sweep will. Where nothing answers, it says so and
    leaves the choice to the sweep."""
    import subprocess
    import sys

    from rp_tune.adapters.ray.cluster import stop_ray_session
    from tests.helpers import free_port

    # without token authentication on either side (Ray 2.60 turns it on for local clusters;
    # ~/.ray/auth_token may not exist here)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-c", FAKE_GPU_CLUSTER], stdout=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)  # fmt: skip
    session = None
    try:
        address, session = proc.stdout.readline().split()
        r = cli("--space", "smoke", "--dry-run", "-v", "--address", address,
                "--storage", str(tmp_path / "res"), timeout=180, env=env)  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"GPUs: the Ray cluster at {address} has 2, so each training worker" in r.stdout
        rows = [ln.split() for ln in r.stdout.splitlines() if "-s0-" in ln]
        assert rows and all(row[4] == "1" for row in rows)  # the gpu/w column
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if session:
            stop_ray_session(session)
    nobody = f"127.0.0.1:{free_port()}"
    r = cli("--space", "smoke", "--dry-run", "--address", nobody, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"GPUs: decided when the sweep joins the Ray cluster at {nobody} (not reachable" in (
        r.stdout
    )


@pytest.mark.slow
def test_a_local_ray_with_gpus_resolves_to_a_gpu_per_worker():
    """On a local Ray that reports GPUs (a fake GPU resource here), the capacity the sweep
    reads gives every unset trial one GPU per worker."""
    import ray

    from rp_tune.adapters.ray.cluster import cluster_capacity
    from rp_tune.planning.capacity import default_concurrency, resolve_gpus

    ray.init(num_cpus=1, num_gpus=3, include_dashboard=False)
    try:
        capacity = cluster_capacity(joined=False)
    finally:
        ray.shutdown()
    cfgs, why = resolve_gpus(expand_space("smoke"), capacity, "the Ray cluster")
    assert {c.resources.gpus_per_worker for c in cfgs} == {1.0} and "has 3" in why
    assert default_concurrency(cfgs, capacity) == 3


def test_a_local_sweep_starts_its_own_ray_rather_than_joining_one(tmp_path, monkeypatch):
    """Without --address (and RAY_ADDRESS), the sweep asks Ray for a new local instance, so
    it never joins whatever cluster /tmp/ray/ray_current_cluster names."""
    import ray

    from rp_tune.adapters.ray.sweep import run_sweep

    calls = []

    class Stop(Exception):
        pass

    def fake_init(**kw):
        calls.append(kw)
        raise Stop

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(Stop):
        run_sweep(expand_space("smoke"), name="x", storage=str(tmp_path), tracking=False)
    assert calls and calls[0]["address"] == "local"


def test_sigterm_stops_a_sweep_as_ctrl_c_does():
    """A scheduler's SIGTERM becomes the SIGINT Tune handles as Ctrl-C (state saved, summary
    and --resume command printed); a second SIGTERM goes to the handler it replaced (Ray's,
    which stops its processes). The real thing: test_fault_tolerance's SIGTERM of a driver."""
    from rp_tune.adapters.ray.cluster import stop_on_sigterm

    seen = []
    before = signal.signal(signal.SIGTERM, lambda *a: seen.append("ray's handler"))
    # Python's own Ctrl-C (an earlier in-process sweep may have left Tune's handler installed)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert seen == ["ray's handler"]
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)


def test_the_local_ray_expects_each_trials_three_kinds_of_process(monkeypatch):
    """Train V2 starts a Tune trainable, a Train controller and the workers per trial: the
    local raylet is told so, or a 2-core machine prints Ray's "4x the maximum expected
    startup concurrency" warning for the smoke sweep. A user's own setting wins."""
    from rp_tune.adapters.ray.cluster import expected_startups
    from rp_tune.planning.capacity import startup_concurrency

    monkeypatch.delenv("RAY_worker_maximum_startup_concurrency", raising=False)
    smoke = expand_space("smoke")  # 0.5 CPU per worker: 3 trials at once on 2 CPUs
    assert startup_concurrency(smoke, 3) == 9
    two = expand_space("smoke", {"resources.workers": "2"})
    assert startup_concurrency(two, 3) == 12
    assert expected_startups(smoke, 2, None) == {"worker_maximum_startup_concurrency": 9}
    assert expected_startups(smoke, 2, 1) == {"worker_maximum_startup_concurrency": 3}
    assert expected_startups(smoke, 16, 1) == {"worker_maximum_startup_concurrency": 16}
    monkeypatch.setenv("RAY_worker_maximum_startup_concurrency", "4")
    assert expected_startups(smoke, 2, None) == {}


def test_a_local_ray_starts_without_a_preemption_watcher_and_leaves_the_environment_alone(
    monkeypatch,
):
    """A Ray of the sweep's own has one node, the driver's: Ray Train's per-trial preemption
    watcher (an actor process per trial) is off for it, unless the user set the variable;
    the driver's own environment is as before once Ray has started."""
    from rp_tune.adapters.ray.cluster import local_ray_environment

    name = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    monkeypatch.delenv(name, raising=False)
    with local_ray_environment():
        assert os.environ[name] == "0"  # what the raylet, and so every worker, inherits
    assert name not in os.environ
    monkeypatch.setenv(name, "1")
    with local_ray_environment():
        assert os.environ[name] == "1"
    assert os.environ[name] == "1"


def test_evaluate_refuses_what_it_cannot_do_and_creates_nothing(tmp_path, capsys):
    res = tmp_path / "res"
    r = incli(capsys, "--space", "smoke", "--evaluate", "--storage", str(res))
    assert r.returncode == 2 and "no sweep at" in r.stderr and "nothing to evaluate" in r.stderr
    r = incli(capsys, "--space", "smoke", "--evaluate", "--storage", str(res),
              "--set", "train.epochs=3")  # fmt: skip
    assert r.returncode == 2 and "are not evaluation.* keys" in r.stderr
    assert not res.exists()


def test_the_ratio_comparison_of_gadhikar_et_al_covers_its_three_data_sets():
    cfgs = expand_space("gadhikar_ratios")
    by_data = {}
    for c in cfgs:
        by_data.setdefault(c.data.name, set()).add(c.model.name)
    assert by_data == {"cifar10": {"cifar_resnet18", "vgg16_bn"},
                       "cifar100": {"cifar_resnet18", "vgg16_bn"},
                       "tinyimagenet": {"tiny_resnet50"}}  # fmt: skip
    sparse = [c for c in cfgs if c.sparsity.density < 1.0]
    assert {c.sparsity.scheme for c in sparse} == {"uniform", "erk", "balanced", "pyramidal"}
    assert len(sparse) == 5 * 4 * 4 * 3 and len(cfgs) == len(sparse) + 5 * 3  # + dense nets
    assert len(expand_space("gadhikar_ratios", smoke=True)) == 4


def test_the_callback_classes_are_one_class_whatever_asks_and_by_the_old_path():
    """Tune unpickles a sweep's callbacks by their import path (releases before the layered
    packages: rp_tune.sweep.*); --resume swaps them for live ones by isinstance, so the class
    the driver builds and the one unpickling finds must be the same."""
    import rp_tune.sweep as old_path
    from rp_tune.adapters.ray import sweep

    for name in ("TrackingCallback", "ConsoleCallback"):
        built = sweep.__getattr__(name)
        assert built is getattr(sweep, name) is sweep.__getattr__(name)
        assert getattr(old_path, name) is built
