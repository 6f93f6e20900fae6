"""Evaluating finished trials again from their final checkpoints (--evaluate): new values
reach the results table and the trial's MLflow run once, whatever interrupts it."""

import json

import pytest
from mlflow.tracking import MlflowClient

from rp_tune.config import from_flat, run_key
from rp_tune.core.errors import SweepError
from rp_tune.planning.records import EVALUATIONS_FILE, write_stored_trials
from rp_tune.results.evaluate import evaluate_sweep, new_metrics
from rp_tune.results.sweep_rows import read_trials
from rp_tune.trial.train import run_trial

FLAT = {"model.name": "cifar_resnet_8", "data.name": "synthetic", "data.synthetic_train": 128,
        "data.synthetic_test": 64, "train.epochs": 1, "train.batch_size": 32,
        "sparsity.scheme": "erk", "sparsity.density": 0.3, "evaluation.ood": False,
        "train.deterministic": True}  # fmt: skip


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A sweep folder as Tune leaves it around one trial trained here for real."""
    root = tmp_path_factory.mktemp("res")
    cfg = from_flat(FLAT)
    key = run_key(cfg)
    final = run_trial(cfg, root / "train" / key, key=key)
    sweep = root / "tiny"
    write_stored_trials(str(sweep), [cfg])
    (sweep / key).mkdir()
    entry = {"trial": {"flat": cfg.to_flat(), "run_key": key}}
    (sweep / key / "params.json").write_text(json.dumps(entry, default=list))
    last = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
    last["checkpoint_path"] = str(root / "train" / key / "checkpoints" / "epoch_0001")
    (sweep / key / "result.json").write_text(json.dumps(last) + "\n")
    return sweep, key, last


def _mlflow(tmp_path, sweep, key):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tiny")
    parent = client.create_run(exp, tags={"rp_tune.role": "sweep",
                                          "rp_tune.sweep_path": str(sweep)})  # fmt: skip
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id,
                                         "rp_tune.run_key": key})  # fmt: skip
    return uri, client, child.info.run_id


def test_a_new_ood_set_fgsm_eps_and_top5_are_added_once(finished_sweep, tmp_path):
    sweep, key, last = finished_sweep
    assert "fgsm_acc" in last and "test_top5" not in last and "ood_auroc_gaussian" not in last
    over = {"evaluation.fgsm_eps": "0.01", "evaluation.top5": "true", "evaluation.ood": "true",
            "evaluation.ood_sets": "gaussian"}  # fmt: skip
    (first,) = evaluate_sweep(str(sweep), over)  # no MLflow yet: saved, not logged
    assert first["status"] == "evaluated" and not first["logged"]
    assert sorted(first["metrics"]) == ["fgsm_acc_eps0.01", "ood_auroc_gaussian", "test_top5"]
    assert 0.0 <= first["metrics"]["test_top5"] <= 1.0
    (row,) = read_trials(sweep)  # the results table reads them beside the trial's own
    assert row["test_top5"] == first["metrics"]["test_top5"] and row["test_acc"] == last["test_acc"]
    uri, client, run_id = _mlflow(tmp_path, sweep, key)
    for _ in range(2):  # the interrupted one is logged now; again, nothing twice
        (again,) = evaluate_sweep(str(sweep), over, tracking_uri=uri)
        assert again["status"] == "saved before" and again["logged"]
    for name, value in first["metrics"].items():
        history = client.get_metric_history(run_id, name)
        assert [(m.value, m.step) for m in history] == [(pytest.approx(value), 1)]
    saved = json.loads((sweep / key / EVALUATIONS_FILE).read_text())
    assert len(saved) == 1 and saved[0]["logged"] and saved[0]["settings"]["evaluation.top5"]


def test_the_same_settings_add_nothing_and_training_keys_are_refused(finished_sweep):
    sweep, key, last = finished_sweep
    (o,) = evaluate_sweep(str(sweep), {"evaluation.batch_size": "16"})
    assert o["status"] == "evaluated" and o["metrics"] == {}  # every value was there
    with pytest.raises(SweepError, match=r"\['train.epochs'\] are not evaluation.\* keys"):
        evaluate_sweep(str(sweep), {"train.epochs": "3"})
    with pytest.raises(SweepError, match="no sweep at"):
        evaluate_sweep(str(sweep.parent / "other"), {})


def test_new_metrics_names_fgsm_at_another_eps():
    assert new_metrics({"fgsm_acc": 0.2, "test_acc": 0.9}, {"test_acc": 0.9}, 0.01) == {
        "fgsm_acc_eps0.01": 0.2
    }
    assert new_metrics({"fgsm_acc": 0.2}, {"fgsm_acc": 0.3}, 8 / 255) == {}
