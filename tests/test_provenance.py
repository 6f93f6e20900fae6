"""Cost and provenance: what a trial cost (from what Tune recorded), the code a sweep ran
(commit, dirty flag, diff) and the machine a trial ran on."""

import json
import subprocess

import pytest

from rp_tune.core.provenance import code_state
from rp_tune.planning.plan import SweepSummary, TrialOutcome, cost_totals, trial_cost
from rp_tune.trial.machine import environment
from rp_tune.trial.train import time_spent

GPU_TRIAL = {"resources.workers": 4, "resources.gpus_per_worker": 1.0,
             "resources.cpus_per_worker": 8}  # fmt: skip
CPU_TRIAL = {"resources.workers": 1, "resources.gpus_per_worker": 0.0,
             "resources.cpus_per_worker": 0.5}  # fmt: skip


def _r(epoch, seconds, total, **more):
    return {"epoch": epoch, "epoch_seconds": seconds, "val_seconds": 1.0,
            "time_total_s": total, **more}  # fmt: skip


def test_trial_cost_counts_epochs_trained_again_after_a_failure_as_retries():
    """Epochs 2 and 3 reported, the worker killed, the trial resumed from epoch 1's
    checkpoint: epochs 2 and 3 were trained twice; the second report of a finished trial's
    last epoch (the same row handed over again) is no retry."""
    results = [_r(1, 10.0, 15.0), _r(2, 10.0, 26.0), _r(3, 12.0, 39.0),
               _r(2, 11.0, 70.0), _r(3, 11.0, 82.0), _r(4, 10.0, 93.0),
               _r(4, 10.0, 95.0)]  # fmt: skip
    cost = trial_cost(results, GPU_TRIAL)
    assert cost["retry_seconds"] == pytest.approx(10.0 + 1.0 + 12.0 + 1.0)
    assert cost["wall_seconds"] == 95.0 and cost["device"] == "GPU"
    assert cost["device_hours"] == pytest.approx(95.0 * 4 / 3600)
    cpu = trial_cost(results[:3], CPU_TRIAL)
    assert cpu["retry_seconds"] == 0.0 and cpu["device"] == "CPU"
    assert cpu["device_hours"] == pytest.approx(39.0 * 0.5 / 3600)
    assert trial_cost([], GPU_TRIAL) == {}


def test_time_spent_sums_the_kept_epochs_and_the_final_evaluation():
    history = [{"epoch_seconds": 3.0, "val_seconds": 0.5}, {"epoch_seconds": 2.0,
               "val_seconds": 0.5, "final_eval_seconds": 4.0}]  # fmt: skip
    assert time_spent(history) == {"train_seconds": 5.0, "eval_seconds": 5.0}


def test_the_summary_holds_the_sweeps_totals_and_its_code():
    trials = [
        TrialOutcome("a", "finished", 2, 2, 0, {"train_seconds": 5.0, "eval_seconds": 1.0,
                     "wall_seconds": 20.0, "retry_seconds": 2.0, "device_hours": 0.5,
                     "device": "GPU"}),
        TrialOutcome("b", "finished", 2, 2, 0, {"train_seconds": 3.0, "eval_seconds": 1.0,
                     "wall_seconds": 10.0, "retry_seconds": 0.0, "device_hours": 0.25,
                     "device": "CPU"}),
        TrialOutcome("c", "pending", 0, 2, 0),
    ]  # fmt: skip
    assert cost_totals([t.metrics for t in trials]) == {
        "wall_seconds": 30.0, "train_seconds": 8.0, "eval_seconds": 2.0, "retry_seconds": 2.0,
        "device_hours_gpu": 0.5, "device_hours_cpu": 0.25,
    }  # fmt: skip
    summary = SweepSummary("s", "/x/s", trials, wall_seconds=65.0,
                           code={"commit": "abc", "dirty": True, "diff": "x"})  # fmt: skip
    data = json.loads(summary.to_json())
    assert data["totals"]["sweep_wall_seconds"] == 65.0 and data["totals"]["train_seconds"] == 8
    assert data["code"] == {"commit": "abc", "dirty": True}  # the diff goes to its own file
    assert summary.cost_line() == (
        "cost: 1m05s wall for the sweep; trials 8s training, 2s evaluation, 2s retried, "
        "30s wall in all; 0.5 GPU-hours, 0.25 CPU-hours"
    )


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_code_state_names_the_commit_and_says_when_the_tree_is_dirty(tmp_path):
    assert code_state(tmp_path) == {"commit": "unknown", "dirty": None, "diff": ""}
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = code_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False and clean["diff"] == ""
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("y = 1\n")
    dirty = code_state(tmp_path)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True
    assert "+x = 2" in dirty["diff"] and "# untracked: new.py" in dirty["diff"]


def test_environment_names_versions_and_the_device():
    env = environment("cpu")
    assert env["env_gpu"] == "cpu" and env["env_python"].count(".") == 2
    for key in ("env_torch", "env_torchvision", "env_numpy", "env_ray", "env_mlflow",
                "env_cuda", "env_cudnn"):  # fmt: skip
        assert env[key], key
    assert all(isinstance(v, str) for v in env.values())
