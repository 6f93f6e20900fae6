"""Running on a cluster: cluster.yaml against Ray's own schema, shared storage and data
through URIs, autoscaling-aware concurrency, and a real multi-node Ray cluster that loses a
worker node while the smoke sweep runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from rp_tune import storage
from rp_tune.config import run_key
from rp_tune.masks import Masks
from rp_tune.models import build_model, layer_specs
from rp_tune.sparsity import layer_densities
from rp_tune.sweep import (
    HEAD_RESOURCE,
    default_concurrency,
    expand_space,
    max_cluster_resources,
    trial_driver_resources,
)
from tests.helpers import free_port, mlflow_runs, start_mlflow_server, stop_process_group

ROOT = Path(__file__).resolve().parents[1]


def _epochs_reported(sweep: Path) -> dict[str, int]:
    """Trial folder -> last epoch Tune has recorded in result.json."""
    out = {}
    if not sweep.is_dir():
        return out
    for trial in sweep.iterdir():
        f = trial / "result.json"
        if f.is_file():
            rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
            out[trial.name] = max((int(r.get("epoch", 0)) for r in rows), default=0)
    return out


@pytest.mark.parametrize("uri", [False, True])
def test_storage_reads_and_writes_paths_and_uris(tmp_path, uri):
    base = tmp_path.as_uri() if uri else str(tmp_path)
    f = storage.join(base, "sweep", "summary.json")
    assert not storage.exists(f) and storage.list_names(storage.join(base, "sweep")) == []
    storage.write_text(f, "a\n")
    storage.append_text(f, "b\n")
    assert storage.read_text(f) == "a\nb\n" and (tmp_path / "sweep" / "summary.json").is_file()
    assert storage.list_names(storage.join(base, "sweep")) == ["summary.json"]
    storage.copy_to_local(storage.join(base, "sweep"), tmp_path / "copy")
    assert (tmp_path / "copy" / "summary.json").read_text() == "a\nb\n"
    storage.delete(f)
    assert not storage.exists(f)
    assert storage.resolve("rel") == str(Path("rel").resolve())
    assert storage.resolve("s3://bucket/prefix/") == "s3://bucket/prefix"


def test_max_cluster_resources_counts_what_the_autoscaler_may_start():
    autoscaling = {
        "max_workers": 5,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 16}},
            "cpu": {"max_workers": 10, "resources": {"CPU": 32}},
            "gpu": {"max_workers": 4, "resources": {"CPU": 48, "GPU": 4}},
        },
    }
    # GPU types first: 4 GPU nodes, then 1 CPU node fills the global max of 5 workers
    now = {"CPU": 16.0, "memory": 1e9}
    cap = max_cluster_resources(now, autoscaling)
    assert cap == {"CPU": 16 + 4 * 48 + 32, "GPU": 16.0, "memory": 1e9}
    assert max_cluster_resources(now, None) == now
    # never less than what is up now
    assert max_cluster_resources({"CPU": 500.0}, autoscaling)["CPU"] == 500.0
    gpu_trials = expand_space("smoke", {"resources.gpus_per_worker": "0.25"})
    assert default_concurrency(gpu_trials, cap) == 64  # 16 GPUs / 0.25
    assert default_concurrency(gpu_trials, now) == 1  # no GPU up yet: one at a time
    # 1.5-CPU trials: 16 CPUs now fit 10 (1.5 + 0.01 each)
    cpu_trials = expand_space("smoke", {"resources.cpus_per_worker": "1.5"})
    assert default_concurrency(cpu_trials, now) == 10


def test_trial_drivers_go_to_the_head_node_when_it_has_a_cpu():
    head = {"Alive": True, "Resources": {"CPU": 8.0, HEAD_RESOURCE: 1.0}}
    worker = {"Alive": True, "Resources": {"CPU": 48.0, "GPU": 4.0}}
    assert trial_driver_resources([head, worker]) == {"CPU": 0.01, HEAD_RESOURCE: 0.001}
    cpuless_head = {"Alive": True, "Resources": {HEAD_RESOURCE: 1.0}}
    assert trial_driver_resources([cpuless_head, worker]) == {"CPU": 0.01}


def test_remote_storage_without_a_tracking_server_fails_before_ray(tmp_path):
    shared = tmp_path / "bucket"
    r = subprocess.run(
        [sys.executable, "run_sweep.py", "--space", "smoke", "--storage", shared.as_uri()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "is remote: pass --tracking-uri" in r.stderr and "Traceback" not in r.stderr
    assert "Started a local Ray instance" not in r.stdout + r.stderr
    assert not shared.exists()


def test_storage_default_comes_from_the_environment(tmp_path):
    env = {**os.environ, "RP_TUNE_STORAGE": str(tmp_path / "shared")}
    r = subprocess.run(
        [sys.executable, "run_sweep.py", "--space", "smoke", "--report"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2 and f"no sweep at {tmp_path / 'shared' / 'smoke'}" in r.stderr


def test_report_reads_a_sweep_on_a_uri(tmp_path):
    from rp_tune.report import build_report

    sweep = tmp_path / "bucket" / "smoke"
    for cfg in expand_space("smoke"):
        key = run_key(cfg)
        (sweep / key).mkdir(parents=True)
        (sweep / key / "params.json").write_text(
            json.dumps({"trial": {"flat": cfg.to_flat(), "run_key": key}})
        )
        rows = [{"epoch": 1}, {"epoch": 2, "test_acc": 0.5, "test_ece": 0.1}]
        (sweep / key / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = build_report(sweep.as_uri(), tmp_path / "out")
    assert rep["trials"] == len(expand_space("smoke"))
    table = pq.read_table(rep["table"]).to_pylist()
    assert {r["status"] for r in table} == {"finished"} and {r["test_acc"] for r in table} == {0.5}


@pytest.mark.slow
def test_smoke_sweep_on_a_multinode_cluster_survives_losing_a_worker_node(tmp_path):
    """Head (1 CPU: trial drivers, no room for a training worker) + two worker nodes (3 CPUs:
    two 1.5-CPU training workers each), storage shared through a file:// URI, MLflow on a
    server. Once every trial has checkpointed, the node running training workers is killed
    (SIGKILL, no warning): its trials restart on the other node from their checkpoints, every
    trial finishes, and MLflow holds each trial once with one value per epoch."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    epochs = 6
    overrides = {
        "train.epochs": str(epochs),
        "data.synthetic_train": "3072",
        "resources.cpus_per_worker": "1.5",
    }
    n = len(expand_space("smoke", overrides))
    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    port = free_port()
    server = start_mlflow_server(server_dir, port)
    uri = f"http://127.0.0.1:{port}"
    shared = tmp_path / "shared"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_port": free_port(),
        },
    )
    sweep = None
    try:
        workers = [cluster.add_node(num_cpus=3) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        log_file = open(tmp_path / "sweep.log", "w")
        sweep = subprocess.Popen(
            [
                sys.executable,
                "run_sweep.py",
                "--space",
                "smoke",
                "--address",
                cluster.address,
                "--storage",
                shared.as_uri(),
                "--tracking-uri",
                uri,
                "--max-concurrent",
                str(n),
                *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")],
            ],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300
        reported: dict[str, int] = {}
        while time.time() < deadline and sweep.poll() is None:
            reported = _epochs_reported(shared / "smoke")
            if len(reported) == n and min(reported.values()) >= 1:
                break
            time.sleep(0.2)
        assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-4000:]
        assert len(reported) == n and min(reported.values()) >= 1, reported
        assert max(reported.values()) < epochs, f"trials finished too early: {reported}"
        # the trial drivers sit on the head node; the training workers on the worker nodes
        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        train_workers = [a for a in actors if "RayTrainWorker" in a.class_name]
        head_id = cluster.head_node.node_id
        assert len(train_workers) == n and all(a.node_id != head_id for a in train_workers)
        victim = max(workers, key=lambda w: sum(a.node_id == w.node_id for a in train_workers))
        killed = sum(a.node_id == victim.node_id for a in train_workers)
        assert killed >= 1
        cluster.remove_node(victim, allow_graceful=False)
        sweep.wait(timeout=600)
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
        ray.shutdown()
        cluster.shutdown()
    try:
        out = (tmp_path / "sweep.log").read_text()
        assert sweep.returncode == 0, out[-4000:]
        assert f"trials: {n}  finished: {n}  failed: 0" in out, out[-3000:]
        summary = json.loads(storage.read_text(storage.join(shared.as_uri(), "smoke/summary.json")))
        resumed = [t for t in summary["trials"] if t["resumed_from_epoch"] >= 1]
        assert len(resumed) >= killed, summary
        assert all(t["status"] == "finished" and t["epoch"] == epochs for t in summary["trials"])
        client = MlflowClient(uri)
        parents, children = mlflow_runs(client, "smoke")
        assert len(parents) == 1 and len(children) == n
        assert len({r.data.tags["rp_tune.run_key"] for r in children}) == n
        configs = {c.sparsity.scheme: c for c in expand_space("smoke", overrides)}
        for run in children:
            assert run.data.tags["rp_tune.status"] == "finished"
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
            assert steps == list(range(1, epochs + 1)), (run.info.run_name, steps)
            cfg = configs[run.data.params["sparsity.scheme"]]
            model = build_model(cfg.model.name)
            plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
            local = client.download_artifacts(run.info.run_id, "masks.parquet", str(tmp_path))
            assert Masks.load(local, model).equals(Masks.random(plan, cfg.seed))
    finally:
        stop_process_group(server)
