"""MLflow tracking: tracker logic on an embedded store, and a real server on loopback."""

import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rp_tune.adapters.mlflow.tracking import PENDING_FILE, SweepTracker
from tests.helpers import finished_row, mlflow_runs

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


def _states(client):
    """{run name: (MLflow status, rp_tune.status tag)} of the experiment's runs."""
    parents, children = mlflow_runs(client, "exp")
    return {r.info.run_name: (r.info.status, r.data.tags.get("rp_tune.status"))
            for r in parents + children}  # fmt: skip


def test_no_run_is_left_running_after_the_sweep_stops_or_its_driver_is_killed(tmp_path):
    """Ctrl-C: the sweep ends with k2 still training; k2 is KILLED (interrupted) beside its
    KILLED parent, k1 stays FINISHED. --resume: the parent is RUNNING again at once, k2 when
    its first epoch arrives. A driver killed then (SIGKILL) could end nothing: the next
    command's `close_abandoned_runs` marks the parent and k2 KILLED, and a second call finds
    nothing left to do."""
    from rp_tune.adapters.mlflow.states import close_abandoned_runs

    uri, sweep = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "sweep")
    t = SweepTracker(uri, "exp", sweep_path=sweep, space="smoke", sweep_dir=sweep)
    t.trial_result("k1", _flat(), {"epoch": 1, "train_loss": 1.0})
    t.trial_end("k1", _flat(), {"epoch": 2, "test_acc": 0.5}, "finished")
    t.trial_result("k2", _flat(), {"epoch": 1, "train_loss": 1.0})
    t.sweep_end({"total": 2, "finished": 1, "unfinished": 1})
    assert t.close(timeout_s=60) == 0
    client = MlflowClient(uri)
    assert _states(client) == {"sweep": ("KILLED", "interrupted"),
                               "k1": ("FINISHED", "finished"),
                               "k2": ("KILLED", "interrupted")}  # fmt: skip
    t2 = SweepTracker(uri, "exp", sweep_path=sweep, space="smoke", sweep_dir=sweep, driver="t2")
    t2.trial_result("k2", _flat(), {"epoch": 2, "train_loss": 0.5})
    assert t2.close(timeout_s=60) == 0  # then killed: no sweep_end
    assert _states(client)["sweep"] == ("RUNNING", "running")
    assert _states(client)["k2"] == ("RUNNING", "running")
    # a command whose dead lease is not the driver that last started the parent: no change
    assert close_abandoned_runs(uri, sweep, driver="another-driver") == 0
    assert close_abandoned_runs(uri, sweep, driver="t2") == 2
    assert _states(client) == {"sweep": ("KILLED", "interrupted"),
                               "k1": ("FINISHED", "finished"),
                               "k2": ("KILLED", "interrupted")}  # fmt: skip
    assert close_abandoned_runs(uri, sweep) == 0
    assert close_abandoned_runs(uri, str(tmp_path / "never-tracked")) == 0
    # the next driver after a killed one closes them itself before it starts
    t3 = SweepTracker(uri, "exp", sweep_path=sweep, space="smoke", sweep_dir=sweep,
                      after_a_killed_driver="dead-token", driver="t3")  # fmt: skip
    assert t3.close(timeout_s=60) == 0
    assert _states(client)["sweep"] == ("RUNNING", "running")
    parents, _ = mlflow_runs(client, "exp")
    assert parents[0].data.tags["rp_tune.driver"] == "t3"


def test_a_resumed_sweep_runs_again_after_replaying_the_stopped_drivers_end(tmp_path):
    """A driver stopped by Ctrl-C while MLflow was down left its events, its sweep's end
    among them, in the pending file: the next --resume replays them (parent and trial
    KILLED, as they stopped), then starts: the parent is RUNNING, and the trial is when
    its next epoch arrives."""
    import json

    uri, sweep = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "sweep"
    sweep.mkdir()
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in _flat().items()}
    events = [
        {"type": "start"},
        {"type": "result", "run_key": "k1", "flat": flat, "result": {"epoch": 1, "train_loss": 1}},
        {"type": "sweep_end", "summary": {"total": 1, "unfinished": 1}, "artifacts": []},
    ]
    (sweep / PENDING_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    t = SweepTracker(uri, "exp", sweep_path=str(sweep), space="smoke", sweep_dir=str(sweep))
    t.trial_result("k1", _flat(), {"epoch": 2, "train_loss": 0.5})
    assert t.close(timeout_s=60) == 0
    assert not (sweep / PENDING_FILE).exists()
    states = _states(MlflowClient(uri))
    assert states == {"sweep": ("RUNNING", "running"), "k1": ("RUNNING", "running")}


@pytest.mark.slow  # a process of its own or a longer loop: seconds
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


def test_matching_density_and_grouping_by_hand():
    from rp_tune.results.grouping import groups
    from rp_tune.results.tables import smallest_matching_density

    rows = [finished_row("m", "uniform", 1.0, s, a) for s, a in ((0, 0.90), (1, 0.92))]
    rows += [finished_row("m", "erk", 0.5, s, a) for s, a in ((0, 0.91), (1, 0.90))]
    rows += [finished_row("m", "erk", 0.1, s, a) for s, a in ((0, 0.80), (1, 0.82))]
    rows += [finished_row("m", "snip", 0.5, 0, 0.85)]
    g = groups(rows)
    dense_mean, dense_std, n = g[0].stat("test_acc")
    assert g[0].dense and (dense_mean, n) == (pytest.approx(0.91), 2)
    assert dense_std == pytest.approx(0.0141421, rel=1e-4)
    assert [x.density for x in g if x.label == "erk"] == [0.5, 0.1]
    match = {m["scheme"]: m["smallest_matching_density"] for m in smallest_matching_density(rows)}
    # erk at 0.5 averages 0.905 >= 0.91 - 0.0141; at 0.1 it does not; snip never does
    assert match == {"erk": 0.5, "snip": None}


def test_report_separates_static_set_and_rigl():
    from rp_tune.results.grouping import groups

    rows = [
        finished_row("m", "erk", 0.1, 0, 0.5),
        {
            **finished_row("m", "erk", 0.1, 0, 0.6),
            "sparsity.mode": "dynamic",
            "sparsity.growth": "gradient",
        },
        {
            **finished_row("m", "erk", 0.1, 0, 0.7),
            "sparsity.mode": "dynamic",
            "sparsity.growth": "random",
        },
    ]
    assert sorted(g.label for g in groups(rows)) == ["erk", "erk+rigl", "erk+set"]


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

    from rp_tune.adapters.mlflow.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    run = client.create_run(exp).info.run_id
    client.log_batch(run, metrics=[Metric("train_loss", 1.0 / e, 0, e) for e in (1, 3)])
    tracker = SweepTracker(uri, "x", sweep_path=str(tmp_path), space="x", sweep_dir=str(tmp_path))
    try:
        history = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.1 * e} for e in (1, 2, 3)]
        assert tracker.runs.backfill_epochs(run, history) == 1
        assert tracker.runs.backfill_epochs(run, history) == 0
    finally:
        tracker.close()
    steps = sorted(m.step for m in client.get_metric_history(run, "train_loss"))
    assert steps == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run, "val_acc")] == [2]


def test_per_update_values_are_logged_at_their_training_step(tmp_path):
    """GraNet's density after each update rides in the epoch's row as [[step, density], ...]
    and reaches MLflow at step = the training step, beside the per-epoch metrics; an epoch
    the sweep never saw brings its updates from the trial's history."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = SweepTracker(uri, "exp", sweep_path=str(tmp_path / "sweep"), space="smoke")
    from rp_tune.adapters.ray.trainable import _report_row

    row = {"epoch": 1, "train_loss": 2.0, "granet_density": 0.3,
           "granet_update_density": [[4, 0.4], [8, 0.3]]}  # fmt: skip
    t.trial_result("k1", _flat(), _report_row(row))  # as Tune delivers it: JSON text
    assert t.close(timeout_s=60) == 0
    client = MlflowClient(uri)
    _, (child,) = mlflow_runs(client, "exp")
    run = child.info.run_id
    history = [{"epoch": e, "train_loss": 1.0, "granet_update_density": [[4 * e + 4, 0.2]]}
               for e in (1, 2)]  # fmt: skip
    t2 = SweepTracker(uri, "exp", sweep_path=str(tmp_path / "sweep"), space="smoke")
    try:
        assert t2.runs.backfill_epochs(run, history) == 1  # epoch 2 only
    finally:
        t2.close()
    hist = client.get_metric_history(run, "granet_update_density")
    assert sorted((m.step, m.value) for m in hist) == [(4, 0.4), (8, 0.3), (12, 0.2)]
    assert [m.step for m in client.get_metric_history(run, "granet_density")] == [1]


def test_the_queue_hands_over_what_waits_and_retries_only_what_is_not_done():
    """Events waiting are handed over as one list; a handler that fails midway is given the
    events it had not done, so each is done exactly once, in order."""
    import threading

    from rp_tune.adapters.mlflow.queue import DurableQueue

    done, calls, failed_once = [], [], threading.Event()

    def handle_batch(events):
        calls.append(len(events))
        while events:
            if events[0]["n"] == 3 and not failed_once.is_set():
                failed_once.set()
                raise ConnectionError("server down")
            done.append(events[0]["n"])
            del events[0]

    q = DurableQueue(handle_batch, None, "test")
    for n in range(10):  # all waiting before the thread starts
        q.put({"n": n})
    q.start()
    assert q.close(timeout_s=30) == 0
    assert done == list(range(10)) and q.failures == 1
    assert calls == [10, 7]  # one list; then the seven left after the failure


def test_each_runs_waiting_rows_go_to_mlflow_in_one_call(tmp_path):
    """40 rows of 3 trials waiting at once: one log_batch of metrics per trial (whole rows,
    under MLflow's 1000 a call), every epoch stored once; the same rows again (re-reported
    after a restart) store nothing."""
    from rp_tune.adapters.mlflow.runs import MlflowRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = MlflowRuns(uri, "exp", str(tmp_path / "sweep"), "smoke")
    client = runs._client_()
    metric_calls = []
    real = client.log_batch

    def counting(run_id, metrics=(), **kw):
        if metrics:
            metric_calls.append((run_id, len(metrics)))
        return real(run_id, metrics=metrics, **kw)

    client.log_batch = counting
    rows = [{"type": "result", "run_key": f"k{r}", "flat": _flat(),
             "result": {"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.1 * r, "lr": 0.1}}
            for e in range(1, 41) for r in range(3)]  # fmt: skip
    events = [{"type": "start"}, *rows]
    runs.handle_batch(events)
    assert events == []  # every event done and taken off the list
    assert len(metric_calls) == 3 and all(n == 40 * 4 for _, n in metric_calls)
    runs.handle_batch(list(rows))
    assert len(metric_calls) == 3
    _, children = mlflow_runs(MlflowClient(uri), "exp")
    for child in children:
        steps = [m.step for m in MlflowClient(uri).get_metric_history(child.info.run_id, "lr")]
        assert steps == list(range(1, 41))


@pytest.mark.slow
def test_the_tracking_rate_benchmark_runs_reduced(capsys):
    """benchmarks/tracking_rate.py on 2 trials x 3 epochs into SQLite: it runs and counts
    every value it produced (no speed asserted)."""
    import json
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.tracking_rate import main

    assert main(["--runs", "2", "--epochs", "3", "--store", "sqlite"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["values_stored"] == out["values_expected"] and out["left_pending"] == 0
