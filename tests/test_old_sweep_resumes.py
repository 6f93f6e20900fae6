"""A sweep that release 6265fed (the last one before the modules moved into subpackages)
started and that Ctrl-C stopped midway is resumed (`--resume`) and reported (`--report`) by
this release, through the CLI alone. Ray Tune restores it from what 6265fed pickled: its
callbacks and trial-name functions by import path (`rp_tune.sweep.*`), so a module move that
breaks those paths fails here, as it would fail every user's interrupted sweep.

tests/data/old_sweep_6265fed.tar.gz, made as tests/data/make_old_sweep.md says: the smoke
space (4 trials, 2 epochs, one at a time, 8192 synthetic training images), interrupted by
SIGINT once the first trial had finished and the second had checkpointed and reported epoch 1;
the last two not started. MLflow in the results root's SQLite database, as by default.

The folder names its absolute path in Tune's files (the trials' config: where their Train
runs go), in pickles among them, and in MLflow's database (artifact locations, the sweep's
parent run tag): moved elsewhere as it is, --resume would train into the old place and start
new MLflow runs. So it was made at MADE_AT, padded long, and is extracted below tmp_path at a
path of the same length that replaces MADE_AT byte for byte (pickles keep their lengths; the
database through SQL): the files are then those 6265fed writes for a sweep at that path."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import incli

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "tests" / "data" / "old_sweep_6265fed.tar.gz"
MADE_AT = "/tmp/rp_tune_old_sweep_6265fed/" + "x" * 161 + "/results"  # 200 characters
# as the sweep was started (minus --storage): --resume refuses other trial configs
ARGS = ["--space", "smoke", "--num-cpus", "2", "--max-concurrent", "1",
        "--set", "data.synthetic_train=8192"]  # fmt: skip
FINISHED = "cifar_resnet_8-erk-d0.1-s0-5eb1a68955"  # finished before the Ctrl-C
UNFINISHED = "cifar_resnet_8-erk-d0.5-s0-5d8a945d69"  # epoch 1 of 2 checkpointed and reported
PENDING = ["cifar_resnet_8-uniform-d0.1-s0-38e27ecfbc", "cifar_resnet_8-uniform-d0.5-s0-86f6f63512"]
TRIALS = sorted([FINISHED, UNFINISHED, *PENDING])


def _share_key(sweep_path: str) -> str:
    """6265fed's key of the sweep's saved MLflow view (mlflow_view.share_key): a hash of the
    sweep's path, in an experiment tag's name and in the summary's MLflow URL."""
    return "rp_tune-" + hashlib.sha256(sweep_path.encode()).hexdigest()[:12]


def extract_relocated(tmp_path: Path) -> Path:
    """The archive's results root below tmp_path, every mention of MADE_AT replaced by it."""
    pad = len(MADE_AT) - len(str(tmp_path)) - len("/results") - 1
    if pad < 1:
        pytest.skip(f"tmp_path {tmp_path} is too long to stand in for {MADE_AT}")
    root = tmp_path / ("p" * pad) / "results"
    assert len(str(root)) == len(MADE_AT)
    with tarfile.open(ARCHIVE) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root.parent, **safe)
    swaps = [(MADE_AT, str(root)), (_share_key(f"{MADE_AT}/smoke"), _share_key(f"{root}/smoke"))]
    pairs = []  # as text, and as hex (Tune's JSON state holds some objects as pickle hex)
    for old, new in swaps:
        pairs += [
            (old.encode(), new.encode()),
            (old.encode().hex().encode(), new.encode().hex().encode()),
        ]
    db = root / "mlflow.db"
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p != db):
        data = f.read_bytes()
        new_data = data
        for old_b, new_b in pairs:
            new_data = new_data.replace(old_b, new_b)
        if new_data != data:
            f.write_bytes(new_data)
        assert all(old_b not in new_data for old_b, _ in pairs), f
    with sqlite3.connect(db) as con:  # every text value of every table
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for col in [r[1] for r in con.execute(f"pragma table_info('{table}')")]:
                for old, new in swaps:
                    con.execute(
                        f'update "{table}" set "{col}" = replace("{col}", ?, ?) '
                        f'where typeof("{col}") = \'text\' and instr("{col}", ?) > 0',
                        (old, new, old),
                    )
                    left = con.execute(
                        f'select count(*) from "{table}" where typeof("{col}") = \'text\' '
                        f'and instr("{col}", ?) > 0',
                        (old,),
                    ).fetchone()[0]
                    assert left == 0, (table, col)
    con.close()
    return root


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """run_sweep.py of this checkout (its folder first on the path, for Ray's workers too)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "run_sweep.py", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def _rows(trial: Path) -> list[dict]:
    return [json.loads(ln) for ln in (trial / "result.json").read_text().splitlines() if ln.strip()]


def _checkpoints(train_run: Path) -> set[str]:
    return {p.name for p in train_run.glob("checkpoint_*") if p.is_dir()}


@pytest.mark.slow
@pytest.mark.long  # minutes: see pyproject.toml
@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="the sweep's Tune state holds functions cloudpickled by value (rp_tune.sweep's "
    "trial-name lambdas): Python 3.11 bytecode, from the interpreter that made it",
)
def test_a_sweep_interrupted_under_release_6265fed_resumes_and_reports(tmp_path, capsys):
    """The old folder reads (--status), --resume trains the unfinished trial on from its
    epoch-1 checkpoint and the two it never started, leaves the finished one as it was, keeps
    the MLflow runs it had (one parent, one child per trial, each epoch once) and writes
    nowhere but its own folder; --report then tables and draws all four trials."""
    old_place = Path(MADE_AT).parents[1]
    was_there = old_place.exists()
    root = extract_relocated(tmp_path)
    sweep, train = root / "smoke", root / "smoke-train"
    storage = ["--storage", str(root)]

    st = incli(capsys, *ARGS, *storage, "--status")
    assert st.returncode == 0, st.stdout[-3000:] + st.stderr[-3000:]
    status = {
        ln.split()[0]: ln.split()[1] for ln in st.stdout.splitlines() if ln.startswith("cifar_")
    }
    assert status == {FINISHED: "finished", UNFINISHED: "stopped",
                      PENDING[0]: "pending", PENDING[1]: "pending"}, st.stdout  # fmt: skip

    finished_rows = (sweep / FINISHED / "result.json").read_bytes()
    finished_ckpts = _checkpoints(train / f"train-{FINISHED}")
    unfinished_ckpts = _checkpoints(train / f"train-{UNFINISHED}")
    assert len(finished_ckpts) == 2 and len(unfinished_ckpts) == 1
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("smoke").experiment_id
    before = {r.info.run_name: r.info.run_id for r in client.search_runs([exp_id])}
    assert sorted(before) == sorted(["smoke", FINISHED, UNFINISHED])

    r = _cli(*ARGS, *storage, "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    summary = json.loads((sweep / "summary.json").read_text())
    trials = {t["run_key"]: t for t in summary["trials"]}
    assert sorted(trials) == TRIALS
    for t in trials.values():
        assert (t["status"], t["epoch"], t["error"]) == ("finished", 2, ""), t
    assert trials[UNFINISHED]["resumed_from_epoch"] == 1  # from its checkpoint, not again
    assert trials[PENDING[0]]["resumed_from_epoch"] == trials[PENDING[1]]["resumed_from_epoch"] == 0

    # the finished trial was not trained again: Tune's rows and its Train run as they were
    assert (sweep / FINISHED / "result.json").read_bytes() == finished_rows
    assert _checkpoints(train / f"train-{FINISHED}") == finished_ckpts
    # the unfinished one went on in its own Train run: its epoch-1 checkpoint is a parent
    assert unfinished_ckpts < _checkpoints(train / f"train-{UNFINISHED}")
    for key in TRIALS:
        rows = _rows(sweep / key)
        assert sum("test_acc" in row for row in rows) == 1, key  # finished exactly once
        # each epoch once; Tune starts a restored trial's rows again (MLflow has them all)
        epochs = [row["epoch"] for row in rows]
        assert epochs == ([2] if key == UNFINISHED else [1, 2]), (key, epochs)
    assert sorted(p.name for p in train.glob("train-*")) == [f"train-{k}" for k in TRIALS]
    if not was_there:  # nothing went to where the sweep was made
        assert not old_place.exists(), f"--resume wrote to {old_place}"

    # MLflow: the runs the sweep had, continued; one parent and one child per trial
    runs = client.search_runs([exp_id])
    parents = [x for x in runs if x.data.tags.get("rp_tune.role") == "sweep"]
    children = [x for x in runs if "rp_tune.run_key" in x.data.tags]
    assert len(runs) == len(TRIALS) + 1, [x.info.run_name for x in runs]
    assert [p.info.run_id for p in parents] == [before["smoke"]]
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["rp_tune.run_key"] for c in children) == TRIALS
    for c in children:
        key = c.data.tags["rp_tune.run_key"]
        if key in before:
            assert c.info.run_id == before[key], key
        assert c.info.status == "FINISHED", key
        assert c.data.tags["mlflow.parentRunId"] == before["smoke"], key
        assert c.info.artifact_uri.startswith(root.as_uri()), c.info.artifact_uri
        for metric in ("train_loss", "val_acc"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, metric)]
            assert sorted(steps) == [1, 2], (key, metric, steps)

    rep = incli(capsys, *ARGS, *storage, "--report")
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    report = sweep / "report"
    table = pq.read_table(report / "results.parquet").to_pylist()
    assert sorted(row["run_key"] for row in table) == TRIALS
    assert list(report.glob("*.csv")) and list(report.glob("*.png")), sorted(
        p.name for p in report.iterdir()
    )
    if not was_there:
        assert not old_place.exists(), f"--report wrote to {old_place}"
