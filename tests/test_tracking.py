"""MLflow tracking: tracker logic on an embedded store, and a real server on loopback."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rp_tune.masks import Masks
from rp_tune.models import build_model, layer_specs
from rp_tune.plan import expand_space
from rp_tune.sparsity import layer_densities
from rp_tune.tracking import PENDING_FILE, SweepTracker
from rp_tune.train import checkpoint_masks_file
from tests.helpers import free_port, mlflow_runs, start_mlflow_server, stop_process_group

ROOT = Path(__file__).resolve().parents[1]


def _flat(key="k1"):
    return {
        "model.name": "cifar_resnet_8",
        "sparsity.scheme": "erk",
        "sparsity.density": 0.1,
        "train.epochs": 2,
        "train.milestones": (1, 2),
    }


def test_tracker_nests_children_and_never_duplicates(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = SweepTracker(
        uri,
        "exp",
        sweep_path=str(tmp_path / "sweep"),
        space="smoke",
        sweep_dir=str(tmp_path / "sweep"),
    )
    for epoch in (1, 2):
        t.trial_result("k1", _flat(), {"epoch": epoch, "train_loss": 3.0 - epoch, "lr": 0.1})
    t.trial_result("k1", _flat(), {"epoch": 2, "train_loss": 99.0})  # re-reported: ignored
    t.trial_end("k1", _flat(), {"epoch": 2, "test_acc": 0.5, "ood_used": "gaussian"}, "finished")
    assert t.close(timeout_s=60) == 0
    # a second tracker (a resumed sweep) finds the same parent and child
    t2 = SweepTracker(
        uri,
        "exp",
        sweep_path=str(tmp_path / "sweep"),
        space="smoke",
        sweep_dir=str(tmp_path / "sweep"),
    )
    t2.trial_result("k1", _flat(), {"epoch": 3, "train_loss": 0.5})
    assert t2.close(timeout_s=60) == 0
    client = MlflowClient(uri)
    parents, children = mlflow_runs(client, "exp")
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert child.info.run_name == "k1"
    assert child.data.params["train.milestones"] == "1,2"
    assert child.data.params["sparsity.density"] == "0.1"
    hist = client.get_metric_history(child.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in hist] == [(1, 2.0), (2, 1.0), (3, 0.5)]
    assert child.data.metrics["test_acc"] == 0.5
    assert child.data.tags["rp_tune.ood_used"] == "gaussian"
    # another sweep of the same grid in the same experiment gets children of its own
    t3 = SweepTracker(uri, "exp", sweep_path=str(tmp_path / "other"), space="smoke")
    t3.trial_result("k1", _flat(), {"epoch": 1, "train_loss": 7.0})
    assert t3.close(timeout_s=60) == 0
    parents, children = mlflow_runs(client, "exp")
    assert len(parents) == 2 and len(children) == 2
    by_parent = {c.data.tags["mlflow.parentRunId"]: c for c in children}
    assert set(by_parent) == {p.info.run_id for p in parents}
    hist = client.get_metric_history(child.info.run_id, "train_loss")
    assert [m.step for m in hist] == [1, 2, 3]  # the first sweep's child is untouched


def test_unreachable_server_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sweep = tmp_path / "sweep"
    t = SweepTracker(
        f"http://127.0.0.1:{port}",
        "exp",
        sweep_path=str(sweep),
        space="smoke",
        sweep_dir=str(sweep),
    )
    t.trial_result("k1", _flat(), {"epoch": 1, "train_loss": 2.0})
    t.trial_end("k1", _flat(), {"epoch": 1, "test_acc": 0.25}, "finished")
    assert t.close(timeout_s=3) == 3  # start, result, end: all kept
    assert len((sweep / PENDING_FILE).read_text().splitlines()) == 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t2 = SweepTracker(uri, "exp", sweep_path=str(sweep), space="smoke", sweep_dir=str(sweep))
    assert t2.close(timeout_s=60) == 0
    assert not (sweep / PENDING_FILE).exists()
    _, children = mlflow_runs(MlflowClient(uri), "exp")
    assert len(children) == 1 and children[0].data.metrics["test_acc"] == 0.25


@pytest.mark.slow
def test_server_restart_and_killed_workers(tmp_path):
    """The smoke sweep against a real server that goes down midway, every trial's training
    worker SIGKILLed once at epoch 2: all trials resume from their epoch-1 checkpoint with the
    same masks, and MLflow holds one child per trial with one value per epoch."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(folder, port)
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    log_file = open(tmp_path / "sweep.log", "w")  # a pipe would fill up and stall the sweep
    sweep = subprocess.Popen(
        [
            sys.executable,
            "run_sweep.py",
            "--space",
            "smoke",
            "--storage",
            str(tmp_path / "res"),
            "--num-cpus",
            "2",
            "--tracking-uri",
            uri,
            "--set",
            "train.epochs=3",
            "--inject-fault",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    client = MlflowClient(uri)
    restarted_at = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # wait for the first child run, then take the server down
            time.sleep(1)
            if sweep.poll() is not None:
                break
            exp = client.get_experiment_by_name("smoke")
            if exp and mlflow_runs(client, "smoke")[1]:
                break
        stop_process_group(server)
        time.sleep(8)  # trials keep training while the server is down
        server = start_mlflow_server(folder, port)
        restarted_at = time.time() * 1000
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    try:
        out = (tmp_path / "sweep.log").read_text()
        assert sweep.returncode == 0, out[-4000:]
        n = len(expand_space("smoke"))
        assert (
            f"trials: {n}  finished: {n}  failed: 0  unfinished: 0  resumed from a checkpoint: {n}"
            in out
        )
        assert len(list((tmp_path / "res" / "smoke-train" / "_faults").iterdir())) == n
        parents, children = mlflow_runs(client, "smoke")
        assert len(parents) == 1 and len(children) == n
        from rp_tune.plan import resolve_gpus

        # as the sweep ran them: on this CPU machine, every trial resolved to the CPU
        cpu, _ = resolve_gpus(expand_space("smoke", {"train.epochs": "3"}), {"GPU": 0}, "")
        configs = {c.to_flat()["sparsity.scheme"] + str(c.sparsity.density): c for c in cpu}
        late = 0
        for run in children:
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert run.data.tags["rp_tune.status"] == "finished"
            cfg = configs[run.data.params["sparsity.scheme"] + run.data.params["sparsity.density"]]
            assert run.info.run_name == run.data.tags["rp_tune.run_key"]
            for key, value in cfg.to_flat().items():
                expect = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                assert run.data.params[key] == expect, key
            hist = client.get_metric_history(run.info.run_id, "val_acc")
            assert [m.step for m in hist] == [1, 2, 3]
            late += any(m.timestamp >= restarted_at for m in hist)
            local = client.download_artifacts(run.info.run_id, "masks.parquet", str(tmp_path))
            model = build_model(cfg.model.name)
            plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
            assert Masks.load(local, model).equals(Masks.random(plan, cfg.seed))
            ckpts = [
                p
                for p in (tmp_path / "res" / "smoke-train" / f"train-{run.info.run_name}").glob(
                    "checkpoint_*"
                )
                if p.is_dir()
            ]
            assert ckpts and all(
                Masks.load(checkpoint_masks_file(p), model).equals(Masks.random(plan, cfg.seed))
                for p in ckpts
            )
            assert run.data.metrics["resumed_from_epoch"] == 1.0
            arts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"density_report.csv", "grad_flow.csv", "training_curves.png"} <= arts
        assert late >= 1, "nothing was logged after the server came back"
        summary = json.loads((tmp_path / "res" / "smoke" / "summary.json").read_text())
        assert len(summary["trials"]) == n
    finally:
        stop_process_group(server)


def _row(model, scheme, density, seed, acc):
    return {
        "run_key": f"{model}-{scheme}-{density}-{seed}",
        "status": "finished",
        "model.name": model,
        "sparsity.scheme": scheme,
        "sparsity.density": density,
        "seed": seed,
        "test_acc": acc,
    }


def test_matching_density_and_grouping_by_hand():
    from rp_tune.report import grouped, smallest_matching_density

    rows = [_row("m", "uniform", 1.0, s, a) for s, a in ((0, 0.90), (1, 0.92))]
    rows += [_row("m", "erk", 0.5, s, a) for s, a in ((0, 0.91), (1, 0.90))]
    rows += [_row("m", "erk", 0.1, s, a) for s, a in ((0, 0.80), (1, 0.82))]
    rows += [_row("m", "snip", 0.5, 0, 0.85)]
    g = grouped(rows, "test_acc")
    dense_mean, dense_std, n = g["m"]["dense"]
    assert (dense_mean, n) == (pytest.approx(0.91), 2)
    assert dense_std == pytest.approx(0.0141421, rel=1e-4)
    assert [p[0] for p in g["m"]["erk"]] == [0.1, 0.5]
    match = {m["scheme"]: m["smallest_matching_density"] for m in smallest_matching_density(rows)}
    # erk at 0.5 averages 0.905 >= 0.91 - 0.0141; at 0.1 it does not; snip never does
    assert match == {"erk": 0.5, "snip": None}


def test_report_separates_static_set_and_rigl():
    from rp_tune.report import grouped

    rows = [
        _row("m", "erk", 0.1, 0, 0.5),
        {
            **_row("m", "erk", 0.1, 0, 0.6),
            "sparsity.mode": "dynamic",
            "sparsity.growth": "gradient",
        },
        {**_row("m", "erk", 0.1, 0, 0.7), "sparsity.mode": "dynamic", "sparsity.growth": "random"},
    ]
    assert sorted(grouped(rows, "test_acc")["m"]) == ["erk", "erk+rigl", "erk+set"]


def test_a_child_created_without_its_params_gets_them_when_found_again(tmp_path):
    """The server can go down between creating a trial's run and logging its params; the
    retried event finds the run and must still log the params."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = str(tmp_path / "sweep")
    t = SweepTracker(uri, "exp", sweep_path=sweep, space="smoke")
    t.trial_result("k0", _flat(), {"epoch": 1, "train_loss": 1.0})
    assert t.close(timeout_s=60) == 0
    client = MlflowClient(uri)
    parents, _ = mlflow_runs(client, "exp")
    exp = client.get_experiment_by_name("exp").experiment_id
    bare = client.create_run(
        exp,
        run_name="k1",
        tags={"mlflow.parentRunId": parents[0].info.run_id, "rp_tune.run_key": "k1"},
    )
    t2 = SweepTracker(uri, "exp", sweep_path=sweep, space="smoke")
    t2.trial_result("k1", _flat(), {"epoch": 1, "train_loss": 2.0})
    assert t2.close(timeout_s=60) == 0
    run = client.get_run(bare.info.run_id)
    assert (
        run.data.params["sparsity.scheme"] == "erk" and run.data.params["train.milestones"] == "1,2"
    )
    assert len(mlflow_runs(client, "exp")[1]) == 2


def test_epochs_the_sweep_never_saw_are_logged_from_the_trials_history(tmp_path):
    """An epoch whose checkpoint Train registered before the driver stopped never reaches
    the tracker; the final checkpoint's history fills it in, and nothing is logged twice."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from rp_tune.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    run = client.create_run(exp).info.run_id
    client.log_batch(run, metrics=[Metric("train_loss", 1.0 / e, 0, e) for e in (1, 3)])
    tracker = SweepTracker(uri, "x", sweep_path=str(tmp_path), space="x", sweep_dir=str(tmp_path))
    try:
        history = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.1 * e} for e in (1, 2, 3)]
        assert tracker._backfill_epochs(run, history) == 1
        assert tracker._backfill_epochs(run, history) == 0
    finally:
        tracker.close()
    steps = sorted(m.step for m in client.get_metric_history(run, "train_loss"))
    assert steps == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run, "val_acc")] == [2]
