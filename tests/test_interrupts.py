"""Ctrl-C (and SIGTERM, which the driver turns into it) at every moment of a sweep's life,
planning included, ends it as Ctrl-C during training does: exit 1, the --resume command
printed, the lock let go, MLflow's parent run not left RUNNING, and that --resume goes on.

The moments before Tune runs are reached here by a KeyboardInterrupt raised from the step
that is running (as Python raises it from whatever runs when SIGINT arrives), in this
process; the slow test sends real signals to a real driver of a large sweep."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rp_tune.adapters.ray.sweep as driver_module
import run_sweep
from benchmarks.sweep_scale import stop_timed
from tests.helpers import ROOT, incli

ARGS = ["--space", "smoke", "--num-cpus", "2"]
LOCAL = {"CPU": 2.0, "GPU": 0.0}  # what a local Ray of --num-cpus 2 reports here


class ReachedRay(Exception):
    """--resume got past every refusal and its planning to Ray's start (not started here)."""


def _raise(exc):
    def stand_in(*args, **kwargs):
        raise exc

    return stand_in


def _after(real, exc):
    """`real`, then the interrupt: Ctrl-C arriving just after that step."""

    def stand_in(*args, **kwargs):
        real(*args, **kwargs)
        raise exc

    return stand_in


# where the interrupt lands: (module, attribute, how), and whether the trials were stored
MOMENTS = {
    "expanding the space": (run_sweep, "_configs", "raise", False),
    "planning reuse": (driver_module, "plan_trials", "raise", False),
    "starting Ray": (driver_module, "_start_or_join_ray", "raise", False),
    "after the plan was stored": (driver_module, "_record_the_plan", "after", True),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_before_tune_runs_leaves_a_sweep_that_resume_continues(
    tmp_path, capsys, monkeypatch, moment
):
    where, attr, how, stored = MOMENTS[moment]
    res = tmp_path / "res"
    args = [*ARGS, "--storage", str(res), "--no-tracking"]
    real = getattr(where, attr)
    with monkeypatch.context() as m:
        if attr == "_record_the_plan":  # no Ray here: the local plan stands for the cluster's
            m.setattr(driver_module, "_start_or_join_ray", lambda d: None)
            m.setattr(driver_module, "cluster_capacity", lambda remote: LOCAL)
        stand_in = (
            _raise(KeyboardInterrupt()) if how == "raise" else _after(real, KeyboardInterrupt())
        )
        m.setattr(where, attr, stand_in)
        r = incli(capsys, *args)
    assert r.returncode == 1, r.stdout + r.stderr
    resume = " ".join(["python", "run_sweep.py", *args, "--resume"])
    assert f"continue it with: {resume}" in r.stdout
    if stored:
        assert "what the sweep stored is kept" in r.stdout
        assert len(json.loads((res / "smoke" / "trials.json").read_text())) == 4
    else:
        assert "before the sweep stored its trials: none trained" in r.stdout
        assert (res / "smoke" / "interrupted.json").is_file()
    assert not (res / ".smoke.driver.json").exists()  # the lock let go

    # the printed --resume gets past every check and its planning, up to Ray's start
    monkeypatch.setattr(driver_module, "_start_or_join_ray", _raise(ReachedRay()))
    with pytest.raises(ReachedRay):
        incli(capsys, *args, "--resume")
    out = capsys.readouterr().out
    assert "never reached Ray Tune before it was stopped: starting it" in out
    assert not (res / ".smoke.driver.json").exists()


def test_ctrl_c_while_tracking_has_started_leaves_no_mlflow_run_running(
    tmp_path, capsys, monkeypatch
):
    """Stopped after the MLflow parent run exists and before Tune: KILLED, tagged
    interrupted, as after a Ctrl-C during training."""
    from mlflow.tracking import MlflowClient

    res = tmp_path / "res"
    monkeypatch.setattr(driver_module, "_start_or_join_ray", lambda d: None)
    monkeypatch.setattr(driver_module, "_new_tuner", _raise(KeyboardInterrupt()))
    r = incli(capsys, *ARGS, "--storage", str(res))
    assert r.returncode == 1 and "continue it with: " in r.stdout, r.stdout + r.stderr
    client = MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert parent.info.status == "KILLED" and parent.data.tags["rp_tune.status"] == "interrupted"


@pytest.mark.slow
def test_ctrl_c_and_sigterm_while_a_large_sweep_plans_then_resume_continues(tmp_path):
    """A sweep of 4,000 trials, as a user runs it: SIGINT while it plans (before its lock
    exists), then SIGTERM while it starts Ray (its lock there): each exits within 10 s with
    the --resume command; that --resume starts Ray Tune on the planned trials, and its own
    Ctrl-C once the first trial started leaves every trial stored, none lost."""
    res = tmp_path / "res"
    seeds = ",".join(str(i) for i in range(1000))
    args = [*ARGS, "--storage", str(res), "--no-tracking", "--grid", f"seed={seeds}",
            "--set", "train.epochs=1", "--set", "data.synthetic_train=256"]  # fmt: skip
    lock = res / ".smoke.driver.json"

    def run_until(extra, ready, sig, name):
        out = tmp_path / f"{name}.out"
        proc = subprocess.Popen(
            [sys.executable, "run_sweep.py", *args, *extra], cwd=ROOT, stdout=open(out, "w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 300
        while not ready(proc, out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        running = proc.poll() is None
        took = stop_timed(proc, sig, timeout=60)  # SIGKILLed if it does not end
        assert running, out.read_text()[-3000:]
        return proc.returncode, out.read_text(), took

    # planning: main() runs (the space's expansion is what loads torch) and no lock yet
    def planning(proc, out):
        try:
            return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text() and not lock.exists()
        except OSError:
            return False

    rc, out, took = run_until([], planning, signal.SIGINT, "first")
    assert rc == 1 and took < 10, (rc, took, out[-3000:])
    assert "continue it with: " in out and not lock.exists()

    rc, out, took = run_until([], lambda proc, f: lock.exists(), signal.SIGTERM, "second")
    assert rc == 1 and took < 10, (rc, took, out[-3000:])
    assert "continue it with: " in out and not lock.exists()

    started = lambda proc, f: " started  " in f.read_text()  # noqa: E731
    rc, out, took = run_until(["--resume"], started, signal.SIGINT, "resumed")
    assert rc == 1 and took < 30, (rc, took, out[-3000:])
    assert "trials: 4000" in out and "continue it with: " in out, out[-3000:]
    stored = json.loads((res / "smoke" / "trials.json").read_text())
    assert len(stored) == 4000
