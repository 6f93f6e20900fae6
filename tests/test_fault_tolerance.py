"""Nothing lost, tested for real: the sweep CLI and Ray on this machine, with its workers,
driver, MLflow server or a whole worker node killed, interrupted by Ctrl-C, a second driver
started, an upgrade between start and --resume, a damaged checkpoint, a corrupt dataset.

All `slow`: each starts Ray (and most an MLflow store or server)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from rp_tune.config import from_flat, run_key
from rp_tune.core import storage
from rp_tune.models import build_model, layer_specs
from rp_tune.planning.space import expand_space
from rp_tune.sparsity import layer_densities
from rp_tune.sparsity.masks import Masks
from tests.helpers import (
    ROOT,
    cli,
    driver,
    epochs_reported,
    free_port,
    mlflow_runs,
    start_mlflow_server,
    stop_process_group,
)

# the smoke space at one density (2 trials): what these tests need, at half the time
ONE = {"sparsity.density": "0.1"}
N_SMOKE = len(expand_space("smoke", ONE))


def _results(path: Path) -> dict[str, list[dict]]:
    out = {}
    for trial in path.iterdir():
        f = trial / "result.json"
        if f.is_file():
            out[trial.name] = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    return out


def _terminated(path: Path) -> set[str]:
    """Trial folders that Tune's newest saved experiment state holds as TERMINATED."""
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        data = json.loads(states[-1].read_text())
    except ValueError:  # being written
        return set()
    trials = [json.loads(entry[0]) for entry in data.get("trial_data", [])]
    return {t["relative_logdir"] for t in trials if t.get("status") == "TERMINATED"}


@pytest.mark.slow
def test_a_data_error_inside_a_trial_fails_it_at_once_and_is_not_retried(tmp_path, monkeypatch):
    """A node's copy of the data is corrupt (here: after the driver's check passed, as on
    another node): the trial fails on its first attempt with the data message; Ray Train
    does not restart its workers, and Tune's retries fail at once without training."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    from rp_tune.adapters.ray.sweep import run_sweep
    from tests.helpers import write_tiny_cifar10

    folder = write_tiny_cifar10(tmp_path / "data", n_train=100, n_test=20)
    over = {"data.name": "cifar10", "data.root": str(tmp_path / "data"),
            "data.download": "false", "sparsity.scheme": ["erk"], **ONE}  # fmt: skip
    cfgs = expand_space("smoke", over)
    batch = folder / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # Train records its attempts
    # a Ray of the test's own: the sweep stops the Ray it starts itself when it ends
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(cfgs, name="bad", storage=str(tmp_path / "res"), tracking=False,
                            train_max_failures=3, num_cpus=2)  # fmt: skip
        attempts = ray.get(get_state_actor().get_train_run_attempts.remote())
    finally:
        ray.shutdown()
    (t,) = summary.trials
    assert t.status == "failed" and "dataset cifar10 at data.root=" in t.error, t.error
    assert sum(len(a) for a in attempts.values()) == 1  # one worker start, no retries


@pytest.mark.slow
@pytest.mark.long  # minutes: see pyproject.toml
def test_ctrl_c_then_an_upgrade_and_a_damaged_checkpoint_lose_nothing(tmp_path):
    """A sweep started by a release without the config field `sparsity.grasp_per_class`
    (its stored configs and run keys lack it) is stopped by Ctrl-C once the first trial has
    two checkpoints (the second trial not started): it stops cleanly, is recorded as
    interrupted (summary with every trial, the parent run KILLED) and prints the --resume
    command. --resume with a --set that changes the trials is refused, naming the key. The
    newest checkpoint then damaged, --resume by this release reports it by path, continues
    each trial from its own checkpoint under its stored run key, and MLflow ends with every
    epoch of every trial exactly once."""
    res = tmp_path / "res"
    args = ["--space", "smoke", "--storage", str(res), "--num-cpus", "2", "--max-concurrent",
            "1", "--set", "train.epochs=4", "--set", "data.synthetic_train=1024",
            "--set", "sparsity.density=0.1"]  # fmt: skip
    proc = driver(*args, stdout=tmp_path / "first.out", without_field="sparsity.grasp_per_class")
    deadline, ckpts = time.time() + 240, []
    try:
        while time.time() < deadline and len(ckpts) < 2:
            time.sleep(0.5)
            ckpts = [
                p
                for p in res.glob("smoke-train/train-*/checkpoint_*")
                if (p / "state.pt").is_file()
            ]
        assert len(ckpts) >= 2, "no two checkpoints before the deadline"
        proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job: handled as Ctrl-C
        proc.wait(timeout=120)
        out = (tmp_path / "first.out").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, out[-3000:]
    assert f"trials: {N_SMOKE}  finished: 0" in out and "pending" in out
    assert f"continue it with: python run_sweep.py {' '.join(args)} --resume" in out
    summary = json.loads((res / "smoke" / "summary.json").read_text())
    assert len(summary["trials"]) == N_SMOKE
    db = f"sqlite:///{res / 'mlflow.db'}"  # one store per results root
    parent = [r for r in MlflowClient(db).search_runs(
        [MlflowClient(db).get_experiment_by_name("smoke").experiment_id]
    ) if r.data.tags.get("rp_tune.role") == "sweep"]  # fmt: skip
    assert parent[0].info.status == "KILLED"
    assert parent[0].data.tags["rp_tune.status"] == "interrupted"
    # a trial that was training is not left RUNNING beside its stopped sweep (whether its
    # first epoch reached Tune, and so MLflow, before the stop depends on the machine)
    _, children = mlflow_runs(MlflowClient(db), "smoke")
    assert all(
        (c.info.status, c.data.tags["rp_tune.status"]) == ("KILLED", "interrupted")
        for c in children
    ), [(c.info.run_name, c.info.status) for c in children]
    stored = json.loads((res / "smoke" / "trials.json").read_text())
    assert all("sparsity.grasp_per_class" not in e["flat"] for e in stored)
    # this release would name every trial otherwise: the stored identity is what counts
    assert all(run_key(from_flat(e["flat"])) != e["run_key"] for e in stored)
    refused = cli(*args, "--set", "train.epochs=5", "--resume")
    assert refused.returncode == 2 and "keys differ from what it stored: train.epochs" in (
        refused.stderr
    ), refused.stderr

    run_dir = sorted(ckpts)[0].parent  # the first trial's Train run; the second is pending
    ckpts = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    before = torch.load(ckpts[-2] / "state.pt", weights_only=False)["epoch"]
    bad = ckpts[-1] / "state.pt"
    bad.write_bytes(bad.read_bytes()[:2000])
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"finished: {N_SMOKE}  failed: 0  unfinished: 0" in r.stdout
    assert str(bad.parent.name) in r.stdout + r.stderr  # reported by path
    trials = json.loads((res / "smoke" / "summary.json").read_text())["trials"]
    assert sorted(t["resumed_from_epoch"] for t in trials) == [0, before]
    assert {t["run_key"] for t in trials} == {e["run_key"] for e in stored}
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == N_SMOKE + 1
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name  # RUNNING again, then ended
        if "rp_tune.run_key" in run.data.tags:
            for key in ("train_loss", "val_acc", "lr"):
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                assert sorted(steps) == [1, 2, 3, 4], (run.info.run_name, key, steps)
        else:
            assert run.info.status == "FINISHED"
            # counts and cost: tags, so the chart view charts the trials, not bookkeeping
            assert run.data.tags["finished"] == str(N_SMOKE) and not run.data.metrics
            assert float(run.data.tags["total_train_seconds"]) > 0
            assert run.data.params["fixed.data.name"] == "synthetic"
            assert run.data.params["axis.sparsity.scheme"]


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_retraining(tmp_path):
    """A second driver on the running sweep (and a --resume) is refused with who holds it;
    the first, killed after a trial finished, leaves part of its Ray running, which the
    next command (--status) stops, saying so; and its storage to `--resume`, which
    trains the rest without retraining the finished one, keeps one MLflow run per trial and
    leaves no lock behind."""
    res = tmp_path / "res"
    args = [
        "--space",
        "smoke",
        "--storage",
        str(res),
        "--num-cpus",
        "2",
        "--max-concurrent",
        "1",
        "--set",
        "train.epochs=2",
        "--set",
        "sparsity.density=0.1",
    ]
    proc = driver(*args)
    exp = res / "smoke"
    lock = res / ".smoke.driver.json"
    finished: dict[str, bytes] = {}
    try:
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists()
        for extra in ([], ["--resume"]):  # while the first driver holds the sweep
            second = cli(*args, *extra, timeout=120)
            assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
            assert f"is held by another driver: pid {proc.pid}" in second.stderr
        assert lock.exists()  # refused drivers leave the holder's lock alone
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(1)
            if exp.is_dir():
                # finished, and saved as finished in Tune's experiment state (written every
                # ~10 s): a trial killed before that is unfinished for --resume, and Tune
                # starts its result.json again
                terminated = _terminated(exp)
                done = {
                    k: v
                    for k, v in _results(exp).items()
                    if any("test_acc" in row for row in v) and k in terminated
                }
                if len(done) >= 1:
                    finished = {k: (exp / k / "result.json").read_bytes() for k in done}
                    break
        assert finished, "no trial finished before the deadline"
        import psutil

        ray_procs = psutil.Process(proc.pid).children(recursive=True)  # its Ray: all of it
        assert ray_procs
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: some of its Ray runs on
        proc.wait()
        # it could end no MLflow run and stop no Ray process: the next command of any kind
        # (here --status) marks the runs KILLED, stops its Ray, and says so
        status = cli(*args, "--status")
        left = []
        for q in ray_procs:
            try:
                if q.is_running() and q.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{q.pid} {q.name()}")
                    q.kill()  # do not leave it to the rest of the test run
            except psutil.NoSuchProcess:
                pass
        assert not left, f"the killed driver's Ray still runs after --status: {left}"
        assert f"Ray processes that the killed driver of the sweep 'smoke' (pid {proc.pid} on " in (
            status.stdout
        ), status.stdout
        r = cli(*args, "--resume")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
    assert f"the sweep's last driver (pid {proc.pid} on " in status.stdout
    assert "MLflow runs it left RUNNING are now KILLED" in status.stdout
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"the sweep's last driver was killed (pid {proc.pid} on " in r.stdout
    assert f"trials: {N_SMOKE}  finished: {N_SMOKE}  failed: 0" in r.stdout
    assert not lock.exists()
    results = _results(exp)
    assert len(results) == N_SMOKE
    for key, rows in results.items():
        assert sum("test_acc" in row for row in rows) == 1, key  # finished exactly once
    for key, before in finished.items():
        assert (exp / key / "result.json").read_bytes() == before, f"{key} was retrained"
    # MLflow: still one parent and one child per trial, each with one value per epoch
    client = MlflowClient(f"sqlite:///{exp.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    children = [r for r in runs if "rp_tune.run_key" in r.data.tags]
    assert len(runs) == N_SMOKE + 1 and len(children) == N_SMOKE
    assert len({r.data.tags["rp_tune.run_key"] for r in children}) == N_SMOKE
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert steps == [1, 2], (r.info.run_name, steps)


@pytest.mark.slow
@pytest.mark.long  # a minute of several servers and a killed worker: see pyproject.toml
def test_on_s3_storage_a_server_restart_and_killed_workers_lose_nothing(tmp_path, s3_bucket):
    """Results and checkpoints on an S3-compatible server, MLflow on a real server that goes
    down midway, the trials trained as one fused trial group (--group-size 2) whose worker
    is SIGKILLed once at epoch 2: the group resumes from its epoch-1 checkpoint (every
    member's, in one) read back from S3; MLflow holds one child per member with its params,
    one value per epoch (some delivered after the server came back) and its masks (from the
    S3 checkpoint); the summary and the report work from the URI."""
    overrides = {"train.epochs": "3", **ONE}
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(folder, port)
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    log_file = open(tmp_path / "sweep.log", "w")  # a pipe would fill up and stall the sweep
    sweep = subprocess.Popen(
        [sys.executable, "run_sweep.py", "--space", "smoke", "--num-cpus", "2",
         "--storage", s3_bucket, "--tracking-uri", uri, "--inject-fault", "2",
         "--group-size", "2",
         *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
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
        n = len(expand_space("smoke", overrides))
        assert n == 2 and "trial groups of up to 2: 2 trials in 1 groups, 0 alone" in out
        assert sweep.returncode == 0, out[-4000:]
        assert (
            f"trials: {n}  finished: {n}  failed: 0  unfinished: 0  resumed from a checkpoint: {n}"
            in out
        )
        sweep_dir = storage.join(s3_bucket, "smoke")
        summary = json.loads(storage.read_text(storage.join(sweep_dir, "summary.json")))
        assert {t["status"] for t in summary["trials"]} == {"finished"}
        assert all(t["metrics"]["group_size"] == 2 for t in summary["trials"])
        train = storage.join(s3_bucket, "smoke-train")
        assert len(storage.list_names(storage.join(train, "_faults"))) == 1  # one group
        parents, children = mlflow_runs(client, "smoke")
        assert [p.info.run_name for p in parents] == ["smoke"] and len(children) == n
        from rp_tune.planning.capacity import resolve_gpus

        # as the sweep ran them: on this CPU machine, every trial resolved to the CPU
        cpu, _ = resolve_gpus(expand_space("smoke", overrides), {"GPU": 0}, "")
        configs = {c.sparsity.scheme: c for c in cpu}
        late = 0
        for run in children:
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert run.data.tags["rp_tune.status"] == "finished"
            assert run.info.run_name == run.data.tags["rp_tune.run_key"]
            cfg = configs[run.data.params["sparsity.scheme"]]
            for key, value in cfg.to_flat().items():
                expect = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                assert run.data.params[key] == expect, key
            hist = client.get_metric_history(run.info.run_id, "val_acc")
            assert [m.step for m in hist] == [1, 2, 3]
            late += any(m.timestamp >= restarted_at for m in hist)
            assert run.data.metrics["resumed_from_epoch"] == 1.0
            model = build_model(cfg.model.name)
            plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
            local = client.download_artifacts(run.info.run_id, "masks.parquet", str(tmp_path))
            assert Masks.load(local, model).equals(Masks.random(plan, cfg.seed))
            arts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"density_report.csv", "grad_flow.csv", "training_curves.png"} <= arts
        assert late >= 1, "nothing was logged after the server came back"
    finally:
        stop_process_group(server)
    # the group's checkpoints in S3 hold each member's own masks
    (run_dir,) = [k for k in storage.list_names(train) if k.startswith("train-group-")]
    names = storage.list_names(storage.join(train, run_dir))
    ckpts = [k for k in names if k.startswith("checkpoint_") and not k.endswith(".json")]
    assert len(ckpts) >= 2, ckpts
    for ckpt in ckpts:
        for key, cfg in ((run_key(c), c) for c in cpu):
            masks = storage.join(train, run_dir, ckpt, "members", key, "artifacts", "masks.parquet")
            storage.copy_to_local(masks, tmp_path / "m.parquet")
            model = build_model(cfg.model.name)
            plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
            assert Masks.load(tmp_path / "m.parquet", model).equals(Masks.random(plan, cfg.seed))
    rep = subprocess.run(
        [sys.executable, str(ROOT / "run_sweep.py"), "--space", "smoke", "--storage", s3_bucket,
         "--report", "--no-tracking"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-2000:]
    table = pq.read_table(tmp_path / "smoke-report" / "results.parquet").to_pylist()
    assert sorted(row["run_key"] for row in table) == sorted(
        t["run_key"] for t in summary["trials"]
    )


@pytest.mark.slow
@pytest.mark.long  # minutes: see pyproject.toml
def test_smoke_sweep_on_a_multinode_cluster_survives_losing_a_worker_node(tmp_path):
    """Head (1 CPU: trial drivers, no room for a training worker) + two worker nodes (3 CPUs:
    two 1.5-CPU training workers each), storage shared through a file:// URI, MLflow on a
    server. Once every trial has checkpointed, the node running training workers is killed
    (SIGKILL, no warning): its trials restart on the other node from their checkpoints, every
    trial finishes, and MLflow holds each trial once with one value per epoch."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    epochs = 6  # enough that no trial finishes before every trial has checkpointed
    overrides = {
        "train.epochs": str(epochs),
        "data.synthetic_train": "3072",
        "resources.cpus_per_worker": "1.5",
        **ONE,
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
            reported = epochs_reported(shared / "smoke")
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
            assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, steps)
            cfg = configs[run.data.params["sparsity.scheme"]]
            model = build_model(cfg.model.name)
            plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
            local = client.download_artifacts(run.info.run_id, "masks.parquet", str(tmp_path))
            assert Masks.load(local, model).equals(Masks.random(plan, cfg.seed))
    finally:
        stop_process_group(server)
