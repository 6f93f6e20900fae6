"""Results across sweeps under one results root: a trial whose config finished in another
sweep is reused, not retrained; --extend adds trials to a finished sweep; --resume of an
extended sweep continues it. Sweeps written as Tune leaves them (no Ray: a sweep with
nothing to train never starts it)."""

import json

import pytest
from mlflow.tracking import MlflowClient

from rp_tune.core.errors import SweepError
from rp_tune.planning.capacity import resolve_gpus
from rp_tune.planning.plan import check_resume, plan_trials
from rp_tune.planning.records import write_stored_trials
from rp_tune.planning.space import expand_space, parse_grid
from tests.test_sweep import incli


def _finished_sweep(root, name, over=None, unfinished=()):
    """A sweep folder as a finished local CPU sweep leaves it: trials.json, and per trial
    params.json and result.json (its last line the final epoch, unless in `unfinished`)."""
    cfgs, _ = resolve_gpus(expand_space("smoke", over or {}), {"GPU": 0}, "")
    entries = write_stored_trials(str(root / name), cfgs)
    for i, (e, c) in enumerate(zip(entries, cfgs)):
        folder = root / name / e["run_key"]
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps({"trial": e}, default=list))
        last = {"epoch": c.train.epochs, "test_acc": 0.5 + i / 100, "time_total_s": 9.0}
        if e["run_key"] in unfinished or i in unfinished:
            last = {"epoch": 1, "time_total_s": 4.0}
        (folder / "result.json").write_text(json.dumps(last) + "\n")
    return entries


def test_a_second_sweep_over_finished_trials_trains_nothing(tmp_path, capsys):
    """The smoke grid finished once (as `smoke`); the same grid as another sweep, with the
    network spelled with its default width, reuses all four: no Ray, no training, each
    trial under the run key its sweep gave it, MLflow gets the new sweep's parent only."""
    root = tmp_path / "res"
    first = _finished_sweep(root, "smoke")
    r = incli(capsys, "--space", "smoke", "--name", "again", "--storage", str(root),
              "--set", "model.name=cifar_resnet_8_16")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "reused 4 trials that finished in other sweeps" in r.stdout and "4 from smoke" in r.stdout
    )
    assert "nothing to train, no Ray" in r.stdout
    assert "finished: 4" in r.stdout and "reused from other sweeps: 4" in r.stdout
    stored = json.loads((root / "again" / "trials.json").read_text())
    assert sorted(e["run_key"] for e in stored) == sorted(e["run_key"] for e in first)
    assert {e["reused_from"] for e in stored} == {"smoke"}
    status = incli(capsys, "--space", "smoke", "--name", "again", "--storage", str(root),
                   "--status")  # fmt: skip
    assert "finished: 4" in status.stdout, status.stdout
    summary = json.loads((root / "again" / "summary.json").read_text())
    assert {t["reused_from"] for t in summary["trials"]} == {"smoke"}
    runs = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_runs(
        [
            MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
            .get_experiment_by_name("smoke")
            .experiment_id
        ]
    )
    assert [r.data.tags.get("rp_tune.role") for r in runs] == ["sweep"]  # no duplicate runs
    rep = incli(capsys, "--space", "smoke", "--name", "again", "--storage", str(root), "--report")
    assert rep.returncode == 0 and "4 of 4 trials finished" in rep.stdout
    # --no-reuse would train them: planned, not run here
    cfgs, _ = resolve_gpus(expand_space("smoke"), {"GPU": 0}, "")
    assert len(plan_trials(cfgs, str(root), "third", reuse=False).train) == 4


def test_extend_plans_only_the_new_trials_and_resume_continues_the_extension(tmp_path):
    root = tmp_path / "res"
    held = _finished_sweep(root, "smoke")
    more, _ = resolve_gpus(expand_space("smoke", parse_grid(["seed=0,1"])), {"GPU": 0}, "")
    plan = plan_trials(more, str(root), "smoke", held)
    assert len(plan.entries) == 8 and len(plan.kept) == 4 and len(plan.train) == 4
    assert {e["flat"]["seed"] for e in plan.train} == {1}
    assert [e["run_key"] for e in plan.entries[:4]] == [e["run_key"] for e in held]
    (root / "smoke" / "trials.json").write_text(json.dumps(plan.entries, default=list))
    # --resume with the extension's options: the sweep holds them, the rest finished
    check_resume(str(root / "smoke"), more)
    only_new = [c for c in more if c.seed == 1]
    check_resume(str(root / "smoke"), only_new)
    with pytest.raises(SweepError, match="keys differ"):
        check_resume(str(root / "smoke"), expand_space("smoke", {"train.epochs": "5"}))


def test_extend_refuses_what_it_cannot_do_and_touches_nothing(tmp_path, capsys):
    root = tmp_path / "res"
    r = incli(capsys, "--space", "smoke", "--storage", str(root), "--extend")
    assert r.returncode == 2 and "--extend: no sweep at" in r.stderr
    _finished_sweep(root, "smoke", unfinished=(0,))
    before = (root / "smoke" / "trials.json").read_text()
    r = incli(capsys, "--space", "smoke", "--storage", str(root), "--extend", "--grid", "seed=0,1")
    assert (
        r.returncode == 2
        and "1 trials of the sweep" in r.stderr
        and "--resume it first" in r.stderr
    )
    assert (root / "smoke" / "trials.json").read_text() == before
    r = incli(capsys, "--space", "smoke", "--storage", str(root), "--extend", "--resume")
    assert r.returncode == 2 and "pick one" in r.stderr
    r = incli(capsys, "--space", "smoke", "--storage", str(root))
    assert r.returncode == 2 and "--extend to add trials to it" in r.stderr
    bad_grids = (
        (["--grid", "seed"], "is not KEY=V1,V2"),
        (["--grid", "train.milestones=1,2"], "give such an axis in a space"),
    )
    for bad, message in bad_grids:
        r = incli(capsys, "--space", "smoke", "--storage", str(root), *bad)
        assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_the_report_borrows_a_dense_reference_and_reads_several_sweeps(tmp_path, capsys):
    """A sparse-only sweep takes its dense reference of the same model, data and recipe
    from another sweep under the root; the root's report is one table of every sweep, a
    trial two sweeps hold counted once."""
    from rp_tune.results.report import build_report, print_report

    root = tmp_path / "res"
    _finished_sweep(root, "dense", {"sparsity.density": "1.0"})
    _finished_sweep(root, "sparse")
    _finished_sweep(root, "other_data", {"sparsity.density": "1.0", "data.synthetic_train": "128"})
    rep = build_report(str(root / "sparse"), tmp_path / "out")
    assert [r["sweep"] for r in rep["borrowed"]] == ["dense"]  # not other_data's: other data
    assert rep["no_dense"] == [] and rep["matching"]
    print_report(rep)
    assert "borrowed from the sweep dense" in capsys.readouterr().out
    r = incli(capsys, "--space", "smoke", "--name", "again", "--storage", str(root))
    assert r.returncode == 0, r.stderr  # reuses "sparse"'s four
    everything = build_report(str(root), tmp_path / "all")
    assert everything["trials"] == 1 + 4 + 1  # again's four are sparse's, counted once
    assert {r.get("sweep") for r in everything["borrowed"]} == set()
