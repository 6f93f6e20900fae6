"""The smoke versions of Gadhikar et al.'s spaces as a user runs them: run_sweep.py through
Ray and MLflow, then --report (slow: each starts its own Ray)."""

import pyarrow.csv as pacsv
import pytest
from mlflow.tracking import MlflowClient

from rp_tune.planning.space import expand_space
from tests.helpers import cli, incli, mlflow_runs


@pytest.mark.slow
@pytest.mark.parametrize(
    "space,method,source,per_epoch,artifact",
    [
        ("slt_sparse_to_sparse", "slt", "er 0.5", "slt_density", "masks.parquet"),
        ("granet_sparse_to_sparse", "granet", "erk 0.5", "granet_density", "granet_updates.csv"),
    ],
)
def test_a_sparse_to_sparse_smoke_sweep_trains_tracks_and_compares_its_starts(
    tmp_path, capsys, space, method, source, per_epoch, artifact
):
    """Every trial finishes; MLflow holds its per-epoch density, its training FLOPs per
    epoch and its artifact; the report prints and writes the dense start beside the random
    one at the final density, the random one cheaper to train."""
    smoke = expand_space(space, smoke=True)
    n = len(smoke)
    res = tmp_path / "res"
    # 4 logical CPUs on 2 cores: both trials at once (their start-up is mostly waiting)
    args = ("--space", space, "--smoke", "--storage", str(res), "--num-cpus", "4")
    r = cli(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"trials: {n}  finished: {n}  failed: 0" in r.stdout
    client = MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    _, children = mlflow_runs(client, space)
    assert len(children) == n
    for run in children:
        rid = run.info.run_id
        epochs = len(client.get_metric_history(rid, "train_loss"))
        assert epochs == smoke[0].total_epochs
        assert len(client.get_metric_history(rid, per_epoch)) == epochs
        flops = [m.value for m in client.get_metric_history(rid, "epoch_train_flops")]
        assert len(flops) == epochs
        assert run.data.metrics["train_flops_sparse"] == pytest.approx(sum(flops))
        assert artifact in [a.path for a in client.list_artifacts(rid)]
        if method == "granet":  # the density after every update, at its training step
            updates = client.get_metric_history(rid, "granet_update_density")
            steps = sorted(m.step for m in updates)
            assert steps and steps == list(range(4, 4 * len(steps) + 1, 4))
    rep = incli(capsys, *args, "--report")
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "sparse to sparse: each method from a dense start" in rep.stdout
    folder = res / f"{space}-smoke" / "report"
    table = pacsv.read_csv(folder / "sparse_to_sparse.csv").to_pylist()
    assert [(t["method"], t["start"]) for t in table] == [(method, "dense"), (method, source)]
    assert table[0]["train_flops_vs_dense_start"] == 1.0
    assert 0 < table[1]["train_flops_vs_dense_start"] < 1.0  # the random start trains less
    assert (folder / "sparse_to_sparse.png").is_file()


@pytest.mark.slow
def test_the_ratio_comparison_smoke_sweep_trains_each_ratio_as_one_fused_group(tmp_path, capsys):
    """gadhikar_ratios' smoke (uniform, ERK, balanced, pyramidal at one density) as one
    trial group of 4: an MLflow run and a report row per ratio."""
    res = tmp_path / "res"
    args = ("--space", "gadhikar_ratios", "--smoke", "--storage", str(res), "--num-cpus", "2",
            "--group-size", "4")  # fmt: skip
    r = cli(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "trials: 4  finished: 4  failed: 0" in r.stdout
    client = MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    _, children = mlflow_runs(client, "gadhikar_ratios")
    schemes = sorted(run.data.params["sparsity.scheme"] for run in children)
    assert schemes == ["balanced", "erk", "pyramidal", "uniform"]
    assert {run.data.metrics["group_size"] for run in children} == {4.0}
    for run in children:  # each member's training FLOPs, epoch by epoch, at its own mask
        flops = client.get_metric_history(run.info.run_id, "epoch_train_flops")
        assert run.data.metrics["train_flops_sparse"] == pytest.approx(sum(m.value for m in flops))
    rep = incli(capsys, *args, "--report")
    assert rep.returncode == 0, rep.stderr[-3000:]
    agg = pacsv.read_csv(res / "gadhikar_ratios-smoke" / "report" / "aggregate.csv").to_pylist()
    assert sorted(a["scheme"] for a in agg) == schemes
