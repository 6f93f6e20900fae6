"""Running on a cluster: cluster.yaml against Ray's own schema, shared storage and data
through URIs, autoscaling-aware concurrency, and a real multi-node Ray cluster that loses a
worker node while the smoke sweep runs."""

import copy
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from rp_tune import storage
from rp_tune.config import run_key
from rp_tune.masks import Masks
from rp_tune.models import build_model, layer_specs
from rp_tune.plan import default_concurrency, expand_space, max_cluster_resources
from rp_tune.sparsity import layer_densities
from rp_tune.sweep import HEAD_RESOURCE, trial_driver_resources
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


@pytest.fixture
def s3_bucket(monkeypatch):
    """An S3-compatible server on loopback (moto) with an empty bucket; the URI of a prefix
    in it, with the endpoint in its query as for MinIO or any S3-compatible store."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(key, value)
    endpoint = f"127.0.0.1:{port}"
    pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
    ).create_dir("bucket")
    yield f"s3://bucket/rp?endpoint_override={endpoint}&scheme=http"
    server.stop()


@pytest.mark.parametrize("kind", ["path", "file", "s3"])
def test_storage_reads_and_writes_paths_and_uris(tmp_path, kind, request):
    base = {"path": str(tmp_path), "file": tmp_path.as_uri()}.get(kind) or request.getfixturevalue(
        "s3_bucket"
    )
    f = storage.join(base, "sweep", "summary.json")
    assert not storage.exists(f) and storage.list_names(storage.join(base, "sweep")) == []
    storage.write_text(f, "a\n")
    storage.append_text(f, "b\n")
    assert storage.read_text(f) == "a\nb\n"
    assert storage.list_names(storage.join(base, "sweep")) == ["summary.json"]
    storage.copy_to_local(storage.join(base, "sweep"), tmp_path / "copy")
    assert (tmp_path / "copy" / "summary.json").read_text() == "a\nb\n"
    storage.delete(f)
    assert not storage.exists(f)
    if kind != "s3":
        assert not (tmp_path / "sweep" / "summary.json").exists()
    assert storage.resolve("rel") == str(Path("rel").resolve())
    assert storage.resolve("s3://bucket/prefix/") == "s3://bucket/prefix"


def test_a_dataset_in_s3_is_copied_to_the_node_cache_and_loads(tmp_path, s3_bucket, monkeypatch):
    import pyarrow.fs as pafs

    from rp_tune import data
    from rp_tune.config import DataConfig
    from tests.helpers import write_tiny_cifar10

    local = tmp_path / "datasets"
    write_tiny_cifar10(local, n_train=50, n_test=10)
    s3, prefix = pafs.FileSystem.from_uri(storage.join(s3_bucket, "datasets"))
    pafs.copy_files(
        str(local), prefix, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3
    )
    monkeypatch.setenv(data.DATA_CACHE_ENV, str(tmp_path / "cache"))
    root = storage.join(s3_bucket, "datasets")
    got = data.load_arrays(DataConfig(name="cifar10", root=root, download=False))
    want = data.load_arrays(DataConfig(name="cifar10", root=str(local), download=False))
    assert all(torch.equal(a, b) for a, b in zip(got.train, want.train))
    assert (data.data_cache(root) / "cifar-10-batches-py" / "test_batch").is_file()


def test_uri_helpers_keep_the_query_and_map_rays_paths():
    uri = "s3://bucket/rp?endpoint_override=h:9000&scheme=http"
    assert storage.join(uri, "smoke", "summary.json") == (
        "s3://bucket/rp/smoke/summary.json?endpoint_override=h:9000&scheme=http"
    )
    assert storage.join("s3://bucket", "smoke") == "s3://bucket/smoke"
    assert storage.basename(storage.join(uri, "smoke")) == "smoke"
    # Ray reports checkpoints as its filesystem's paths: `bucket/key` on S3
    assert storage.on_storage_of("bucket/rp/smoke-train/c1", storage.join(uri, "smoke")) == (
        "s3://bucket/rp/smoke-train/c1?endpoint_override=h:9000&scheme=http"
    )
    assert storage.on_storage_of("/data/c1", "/data/smoke") == "/data/c1"
    assert storage.on_storage_of("/data/c1", "file:///data/smoke") == "/data/c1"


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


def test_data_roots_on_a_uri_are_checked_before_the_sweep(tmp_path):
    from rp_tune.plan import SweepError, check_data_roots
    from tests.helpers import write_tiny_cifar10

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    flat = {"data.name": "cifar10", "data.root": bucket.as_uri(), "data.download": "false"}
    with pytest.raises(
        SweepError, match=r"dataset cifar10 at .*: not there: \['cifar-10-batches-py'\] missing"
    ):
        check_data_roots(expand_space("smoke", flat))
    imagenet = {**flat, "data.name": "imagenet", "model.name": "resnet18"}
    with pytest.raises(SweepError, match=r"dataset imagenet at .*: not there: \['imagenet/train'"):
        check_data_roots(expand_space("smoke", imagenet))
    write_tiny_cifar10(bucket)
    check_data_roots(expand_space("smoke", flat))  # present: no error


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
def test_smoke_sweep_on_s3_storage_with_killed_workers(tmp_path, s3_bucket):
    """Results and checkpoints on an S3-compatible server: every trial's worker is SIGKILLed
    once at epoch 2 and resumes from its epoch-1 checkpoint read back from S3; summary,
    MLflow artifacts (masks from the S3 checkpoint) and the report all work from the URI."""
    overrides = {"train.epochs": "3"}
    db = tmp_path / "mlflow.db"
    r = subprocess.run(
        [
            sys.executable,
            "run_sweep.py",
            "--space",
            "smoke",
            "--num-cpus",
            "2",
            "--storage",
            s3_bucket,
            "--tracking-uri",
            f"sqlite:///{db}",
            "--inject-fault",
            "2",
            *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    n = len(expand_space("smoke", overrides))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (
        f"trials: {n}  finished: {n}  failed: 0  unfinished: 0  resumed from a checkpoint: {n}"
        in r.stdout
    )
    sweep = storage.join(s3_bucket, "smoke")
    summary = json.loads(storage.read_text(storage.join(sweep, "summary.json")))
    assert {t["status"] for t in summary["trials"]} == {"finished"}
    assert len(storage.list_names(storage.join(s3_bucket, "smoke-train", "_faults"))) == n
    client = MlflowClient(f"sqlite:///{db}")
    parents, children = mlflow_runs(client, "smoke")
    assert [p.info.run_name for p in parents] == ["smoke"] and len(children) == n
    configs = {c.sparsity.scheme: c for c in expand_space("smoke", overrides)}
    for run in children:
        cfg = configs[run.data.params["sparsity.scheme"]]
        model = build_model(cfg.model.name)
        plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
        local = client.download_artifacts(run.info.run_id, "masks.parquet", str(tmp_path))
        assert Masks.load(local, model).equals(Masks.random(plan, cfg.seed))
    rep = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_sweep.py"),
            "--space",
            "smoke",
            "--storage",
            s3_bucket,
            "--report",
            "--no-tracking",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    table = pq.read_table(tmp_path / "smoke-report" / "results.parquet").to_pylist()
    assert sorted(row["run_key"] for row in table) == sorted(
        t["run_key"] for t in summary["trials"]
    )


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

    epochs = 8
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
            assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, steps)
            cfg = configs[run.data.params["sparsity.scheme"]]
            model = build_model(cfg.model.name)
            plan = layer_densities(cfg.sparsity.scheme, layer_specs(model), cfg.sparsity.density)
            local = client.download_artifacts(run.info.run_id, "masks.parquet", str(tmp_path))
            assert Masks.load(local, model).equals(Masks.random(plan, cfg.seed))
    finally:
        stop_process_group(server)


# --------------------------------------------------------------------------------------------
# cluster.yaml and the README's cluster walk-through
# --------------------------------------------------------------------------------------------

CLUSTER_YAML = ROOT / "cluster.yaml"
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
# Programs the commands may use without further checks (shell built-ins and coreutils).
PLAIN = {
    "cd",
    "echo",
    "export",
    "kill",
    "sleep",
    "printf",
    "grep",
    "mkdir",
    "pkill",
    "ulimit",
    "exit",
    "true",
    "{",
    "}",
    "!",
}
# Files that exist on the nodes without coming from this repository.
RAY_MADE = {"~/ray_bootstrap_config.yaml"}


def _cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _commented_block(name: str) -> dict:
    """The YAML between `# BEGIN name` and `# END name`, uncommented as the file says."""
    lines = CLUSTER_YAML.read_text().splitlines()
    start, end = lines.index(f"# BEGIN {name}"), lines.index(f"# END {name}")
    return yaml.safe_load("\n".join(ln[2:] for ln in lines[start + 1 : end]))


def _ray_validated(config: dict) -> dict:
    """What `ray up` does to a config before it touches a cloud: defaults, then the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation():
    import jsonschema

    aws = _ray_validated(_cluster_config())
    assert aws["provider"]["type"] == "aws"
    nodes = aws["available_node_types"]
    head, gpu = nodes[aws["head_node_type"]], nodes["gpu_worker"]
    assert head["resources"]["CPU"] >= 1  # the trial drivers are pinned to the head
    assert "GPU" not in head["resources"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert aws["max_workers"] >= gpu["max_workers"]
    # the other clouds, as the comments at the end of the file say to switch
    gcp = _ray_validated({**_cluster_config(), **_commented_block("gcp")})
    assert gcp["provider"]["type"] == "gcp" and "gpu_worker" in gcp["available_node_types"]
    local = {**_cluster_config(), **_commented_block("local")}
    del local["available_node_types"], local["head_node_type"]
    local["max_workers"] = len(local["provider"]["worker_ips"])
    assert _ray_validated(local)["provider"]["type"] == "local"
    # the validation is real: a misspelt field is refused
    with pytest.raises(jsonschema.ValidationError):
        _ray_validated({**_cluster_config(), "setup_command": ["true"]})


def _simple_commands(line: str) -> list[list[str]]:
    """A shell line split into simple commands (argv lists), redirections dropped; the
    target of each `>` is recorded as a made file (as `("__made__", path)` pseudo-command)."""
    line = re.sub(r"(?<![^\s(])\d+(?=>)", "", line)  # `2>` names a descriptor, not an argument
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    out: list[list[str]] = [[]]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in SEPARATORS:
            out.append([])
        elif set(tok) <= set("<>&") and ("<" in tok or ">" in tok):
            if i + 1 < len(tokens) and ">" in tok and not tokens[i + 1].isdigit():
                out.insert(-1, ["__made__", tokens[i + 1]])
            i += 1  # skip the target
        else:
            out[-1].append(tok)
        i += 1
    return [c for c in out if c]


def _local_path(remote: str, mounts: dict[str, str]) -> Path | None:
    """The repository file that a node path comes from through file_mounts."""
    for target, source in mounts.items():
        if remote == target or remote.startswith(target + "/"):
            return (ROOT / source / remote[len(target) :].lstrip("/")).resolve()
    return None


def _click_check(group, argv: list[str], where: str) -> list[str]:
    """Parse argv with the CLI's own click definitions; returns what follows a `--`."""
    import click

    cmd, name = group, group.name
    while isinstance(cmd, click.Group):
        assert argv and argv[0] in cmd.commands, f"{where}: no command {name} {argv[:1]}"
        cmd, name, argv = cmd.commands[argv[0]], f"{name} {argv[0]}", argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    try:
        cmd.make_context(name, list(argv), resilient_parsing=False)
    except click.UsageError as e:
        raise AssertionError(f"{where}: `{name} {' '.join(argv)}`: {e}") from None
    return rest


def _check_command(argv: list[str], where: str, mounts: dict[str, str], made: set[str]) -> None:
    """Every program, option and file an argv names must exist (see PLAIN for the rest)."""
    import mlflow.cli
    import ray.scripts.scripts
    from packaging.requirements import Requirement

    import run_sweep

    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]  # VAR=value prefix
    prog, args = argv[0], argv[1:]
    for tok in args:  # node paths inside the project must come from the repository
        local = _local_path(tok.split("=", 1)[-1], mounts)
        if local is not None:
            assert local.exists(), f"{where}: {tok} (from {local}) does not exist"
    if prog == "__made__":
        made.add(args[0])
    elif prog in ("nohup", "setsid"):
        _check_command(args, where, mounts, made)
    elif prog == "source":
        assert args[0] in made, f"{where}: sources {args[0]}, which no earlier command writes"
    elif prog == "ray":
        for tok in args:
            if tok.endswith((".yaml", ".yml")) or tok.startswith("--autoscaling-config"):
                path = tok.split("=", 1)[-1]
                assert path in RAY_MADE or (ROOT / path).is_file(), f"{where}: no file {path}"
        rest = _click_check(ray.scripts.scripts.cli, args, where)
        if rest:
            _check_command(rest, where, mounts, made)
        if args[:1] == ["exec"]:
            for inner in _simple_commands(args[2]):
                _check_command(inner, where, {"/home/ray/rp_tune": "."} | mounts, made)
    elif prog == "mlflow":
        _click_check(mlflow.cli.cli, args, where)
    elif prog == "pip":
        assert args[0] == "install", where
        for tok in args[1:]:
            if tok.startswith("-"):
                continue
            path, extras = (tok.split("[", 1) + [""])[:2]
            local = _local_path(path, mounts)
            if local is not None:
                tomllib = pytest.importorskip("tomllib")  # Python 3.11+
                project = tomllib.loads((local / "pyproject.toml").read_text())["project"]
                for extra in filter(None, extras.rstrip("]").split(",")):
                    assert extra in project.get("optional-dependencies", {}), (where, extra)
            else:
                Requirement(tok)  # a valid requirement, e.g. 'boto3>=1.34'
    elif prog == "python":
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
            return
        script = _local_path(args[0], mounts) or (ROOT / args[0])
        assert script.is_file(), f"{where}: no script {args[0]}"
        if script.name == "run_sweep.py":
            try:
                run_sweep.parse_args(args[1:])
            except SystemExit:
                raise AssertionError(f"{where}: run_sweep.py refuses {args[1:]}") from None
    else:
        assert prog in PLAIN, f"{where}: {prog!r} is not checked; add a check for it"


def test_every_command_in_cluster_yaml_names_files_and_options_that_exist():
    config = _cluster_config()
    mounts = config["file_mounts"]
    assert all((ROOT / src).exists() for src in mounts.values())
    assert (ROOT / next(iter(mounts.values())) / "pyproject.toml").is_file()
    prepared = _ray_validated(config)
    checked = 0
    for node in ("head", "worker"):
        made: set[str] = set(RAY_MADE)
        for key in (
            "initialization_commands",
            f"{node}_setup_commands",
            f"{node}_start_ray_commands",
        ):
            for line in prepared[key]:
                for argv in _simple_commands(line):
                    _check_command(argv, f"cluster.yaml {key}: {line[:60]}", mounts, made)
                    checked += 1
    assert checked > 20
    # the head starts Ray with the autoscaler and an MLflow server with proxied artifacts
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "mlflow server" in head and "--artifacts-destination" in head
    # a misspelt option would be caught
    with pytest.raises(AssertionError, match="No such option"):
        _check_command(["ray", "start", "--heads"], "probe", mounts, set())
    with pytest.raises(AssertionError, match="refuses"):
        _check_command(["python", "run_sweep.py", "--spaces", "x"], "probe", mounts, set())


def test_the_readme_cluster_walkthrough_uses_real_commands_and_options():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Cluster") :]
    section = section[: section.index("\n## ", 1)]
    block = section[
        section.index("```bash") + len("```bash") : section.index(
            "```", section.index("```bash") + 7
        )
    ]
    lines = [ln.split("  #", 1)[0].strip() for ln in block.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    steps = [ln.split()[:2] for ln in lines]
    for step in (["ray", "up"], ["ray", "job"], ["ray", "attach"], ["ray", "down"]):
        assert step in steps, f"the walk-through lacks `{' '.join(step)}`"
    mounts = _cluster_config()["file_mounts"]
    for line in lines:
        for argv in _simple_commands(line):
            _check_command(argv, f"README: {line[:60]}", mounts, set(RAY_MADE))
