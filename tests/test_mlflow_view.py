"""What the MLflow UI shows of a sweep: its saved comparison view, run colours, dataset inputs,
system metrics; quick, on an embedded store (the browser test is test_mlflow_browser.py)."""

import json

import pytest
from mlflow.tracking import MlflowClient

from rp_tune.adapters.mlflow import view as mlflow_view
from rp_tune.adapters.mlflow.tracking import SweepTracker, SystemMetrics, system_metrics_on
from rp_tune.planning.space import expand_space
from tests.helpers import mlflow_runs


def _flat(scheme="erk", density=0.1, model="cifar_resnet_20_32"):
    return {"model.name": model, "sparsity.scheme": scheme, "sparsity.density": density,
            "seed": 0, "train.epochs": 2}  # fmt: skip


def test_the_view_shows_this_sweeps_trials_with_their_key_columns_and_charts():
    configs = expand_space("smoke")
    view = mlflow_view.comparison_view(configs, "abc123")
    assert view["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc123'"
    assert view["orderByKey"] == "metrics.`test_acc`" and view["orderByAsc"] is False
    assert view["runsHiddenMode"] == "SHOW_ALL"
    cols = view["selectedColumns"]
    for key in ("model.name", "arch.depth", "arch.width", "sparsity.scheme",
                "sparsity.density", "seed", "sparsity.mode"):  # fmt: skip
        assert f"params.`{key}`" in cols, key
    for m in ("test_acc", "test_loss", "test_ece", "fgsm_acc", "ood_auroc_gaussian",
              "achieved_density"):  # fmt: skip
        assert f"metrics.`{m}`" in cols, m
    assert "attributes.`Dataset`" in cols
    charts = {c["uuid"]: c for c in view["compareRunCharts"]}
    scatter = charts["rp_tune-test_acc-vs-density"]
    assert scatter["type"] == "SCATTER"
    assert scatter["xaxis"] == {"key": "sparsity.density", "type": "PARAM"}
    assert scatter["yaxis"] == {"key": "test_acc", "type": "METRIC"}
    parallel = charts["rp_tune-parallel"]
    assert parallel["selectedParams"][-2:] == ["sparsity.scheme", "sparsity.density"]
    assert parallel["selectedMetrics"] == ["test_acc"]
    # every chart sits in the view's own section, first and unfolded
    section = view["compareRunSections"][0]
    assert section["display"] and all(
        c["metricSectionId"] == section["uuid"] for c in charts.values()
    )


def test_the_view_names_what_a_width_scan_varies_and_fits_an_experiment_tag():
    configs = expand_space("width_scan")
    view = mlflow_view.comparison_view(configs, "p")
    parallel = next(c for c in view["compareRunCharts"] if c["type"] == "PARALLEL")
    assert parallel["selectedParams"] == ["arch.width", "sparsity.scheme", "sparsity.density"]
    # MLflow refuses experiment tag values over 20,000 characters
    tags = mlflow_view.view_tags(configs, "/r/width_scan", "p")
    assert all(len(v) < 20_000 for v in tags.values())
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_share_keys_colours_and_urls():
    assert mlflow_view.share_key("/r/a") == mlflow_view.share_key("/r/a")
    assert mlflow_view.share_key("/r/a") != mlflow_view.share_key("/r/b")
    erk, uniform = mlflow_view.run_color(_flat("erk")), mlflow_view.run_color(_flat("uniform"))
    assert erk != uniform and erk == mlflow_view.run_color(_flat("erk", 0.5))
    assert mlflow_view.run_color(_flat("erk", 1.0)) == mlflow_view.DENSE_COLOR
    assert mlflow_view.arch_params("cifar_resnet_20") == {"arch.depth": 20, "arch.width": 16}
    assert mlflow_view.arch_params("vgg16_bn") == {}
    url = mlflow_view.comparison_url("http://h:5000/", "7", "/r/a")
    assert url.startswith("http://h:5000/#/experiments/7/runs?viewStateShareKey=rp_tune-")
    assert "workflowType=machine_learning" in url and "compareRunsMode=CHART" in url


def test_the_tracker_writes_the_view_colours_depth_width_and_the_dataset_input_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = str(tmp_path / "sweep")
    configs = expand_space("smoke")
    record = {"name": "cifar10", "source": "/data", "digest": "d" * 32, "train_examples": 45000,
              "val_examples": 5000, "test_examples": 10000, "num_classes": 10}  # fmt: skip
    t = SweepTracker(uri, "exp", sweep_path=sweep, space="smoke", sweep_dir=sweep, configs=configs)
    first = {"epoch": 1, "train_loss": 1.0, "dataset": json.dumps(record)}
    t.trial_result("k1", _flat(), first)
    t.trial_result("k1", _flat(), {**first, "epoch": 2})  # a restart: its first row again
    t.sweep_end({"total": 1, "finished": 1}, totals={"train_seconds": 12.5})
    assert t.close(timeout_s=60) == 0
    client = MlflowClient(uri)
    (parent,), (child,) = mlflow_runs(client, "exp")
    exp = client.get_experiment_by_name("exp")
    view = json.loads(exp.tags[mlflow_view.SHARE_TAG_PREFIX + mlflow_view.share_key(sweep)])
    assert view["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert child.data.tags["mlflow.runColor"] == mlflow_view.run_color(_flat())
    assert child.data.params["arch.depth"] == "20" and child.data.params["arch.width"] == "32"
    (inp,) = child.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("cifar10", "d" * 32)
    assert json.loads(inp.dataset.profile)["val_examples"] == 5000
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    # the parent: counts and cost as tags, no metrics for the chart view to draw
    assert parent.data.tags["finished"] == "1" and parent.data.tags["total_train_seconds"] == "12.5"
    assert not parent.data.metrics
    # what the sweep prints and keeps in summary.json, made once: the view of this sweep
    link = mlflow_view.comparison_url("http://127.0.0.1:5000", exp.experiment_id, sweep)
    assert t.link == link


def test_system_metrics_are_mlflows_monitors_averaged_per_epoch():
    system = SystemMetrics(interval=0.05).start()
    try:
        first = system.epoch()
        second = system.epoch()
    finally:
        system.stop()
    for row in (first, second):
        assert 0.0 <= row["system/cpu_utilization_percentage"] <= 100.0
        assert row["system/system_memory_usage_megabytes"] > 0
        assert all(k.startswith("system/") for k in row)
    assert system_metrics_on("auto", "cuda") and not system_metrics_on("auto", "cpu")
    assert system_metrics_on("on", "cpu") and not system_metrics_on("off", "cuda")
    with pytest.raises(ValueError, match="valid: 'auto', 'on', 'off'"):
        system_metrics_on("yes", "cpu")


def test_a_workers_gpus_are_its_own_cudas_in_cudas_order():
    """NVML lists every GPU of the node; the trial's are those its CUDA sees (Ray's
    CUDA_VISIBLE_DEVICES), matched by UUID whatever the numbering, in CUDA's order."""
    from rp_tune.adapters.mlflow.tracking import worker_gpus

    handles = ["h0", "h1", "h2", "h3"]
    uuids = {"h0": b"GPU-aaa", "h1": "GPU-bbb", "h2": "GPU-ccc", "h3": "GPU-ddd"}
    assert worker_gpus(handles, uuids.get, ["ccc", "aaa"]) == ["h2", "h0"]
    assert worker_gpus(handles, uuids.get, []) == handles  # CUDA names none: all
    assert worker_gpus(handles, uuids.get, ["zzz"]) == []
