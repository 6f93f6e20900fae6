"""Test helpers: tiny datasets in the real on-disk formats, an MLflow server on loopback, the
sweep CLI in a subprocess (as a user runs it, or as an older release)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from rp_tune.data import synthetic_arrays, write_cifar_batches

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar10(root: Path, n_train: int = 200, n_test: int = 60, seed: int = 0) -> Path:
    """Learnable class templates + noise; pixel (0, 0, 0) of train image i encodes i % 256."""
    x, y = synthetic_arrays(n_train, 10, seed)
    tx, ty = synthetic_arrays(n_test, 10, seed, "test")
    x = x.copy()
    x[:, 0, 0, 0] = np.arange(n_train) % 256
    return write_cifar_batches(root, (x, y), (tx, ty), CLASSES)


def write_tiny_imagenet(
    root: Path, wnids=("n02", "n01", "n03"), per_class: int = 8, val_per_class: int = 3
) -> Path:
    """A fake Tiny ImageNet in its usual layout under root: wnids.txt (not in sorted order,
    so line order is tested), train/<wnid>/images/<wnid>_<i>.JPEG, val/images/val_<i>.JPEG and
    val/val_annotations.txt; 64x64 JPEGs of a class colour plus noise (learnable), one
    grayscale image among the training ones as the real set has."""
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 215, size=(len(wnids), 3))

    def image(c: int) -> Image.Image:
        x = colours[c] + rng.normal(0, 20, size=(64, 64, 3))
        return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))

    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, w in enumerate(wnids):
        (folder / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            im = image(c).convert("L") if (c, i) == (0, 0) else image(c)
            im.save(folder / "train" / w / "images" / f"{w}_{i}.JPEG", quality=95)
    lines = []
    for i in range(val_per_class * len(wnids)):
        c = (i * 2 + 1) % len(wnids)  # classes in another order than the training folders'
        image(c).save(folder / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


# a trial of seconds on the CPU, exact on reruns: ResNet-8 on the synthetic data, fp32,
# deterministic; the sparse-to-sparse tests add their mode's keys
QUICK_TRIAL = {
    "model.name": "cifar_resnet_8",
    "data.name": "synthetic",
    "data.synthetic_train": 256,
    "train.batch_size": 32,
    "train.deterministic": True,
    "train.precision": "fp32",
    "evaluation.ood_sets": ["gaussian"],
    "evaluation.fgsm": False,
    "resources.gpus_per_worker": 0,
}


def finished_row(model, scheme, density, seed, acc, **extra):
    """A report row of a finished trial as `read_trials` gives it (the keys the grouping and
    the matching density read), with `extra` keys."""
    return {
        "run_key": f"{model}-{scheme}-{density}-{seed}",
        "status": "finished",
        "model.name": model,
        "sparsity.scheme": scheme,
        "sparsity.density": density,
        "seed": seed,
        "test_acc": acc,
        **extra,
    }


def mlflow_runs(client, exp_name):
    """(sweep parent runs, trial child runs) of an experiment."""
    exp = client.get_experiment_by_name(exp_name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rp_tune.role") == "sweep"]
    children = [r for r in runs if "rp_tune.run_key" in r.data.tags]
    return parents, children


def incli(capsys, *args):
    """run_sweep.py's main() in this process, its output captured by pytest's capsys (no
    interpreter start: seconds less than `cli`); the same result shape as `cli`. For the
    commands that never start Ray (--status, --report, --dry-run, --evaluate, bad input)."""
    import types

    import run_sweep

    capsys.readouterr()
    try:
        rc = run_sweep.main(list(args))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` as the cluster's head runs it: SQLite backend, proxied artifacts."""
    from benchmarks.mlflow_screenshot import start_server

    return start_server(folder / "mlflow.db", port, artifacts=folder / "art")


def stop_process_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()


ROOT = Path(__file__).resolve().parents[1]

# run_sweep.py as a release before the config field `{field}` existed: its flat configs,
# run keys and stored trials lack the field (the Ray workers run the current code).
OLDER_RELEASE = """
import runpy, sys
import rp_tune.config as c
current = c.to_flat
def to_flat(cfg):
    flat = current(cfg)
    flat.pop({field!r})
    return flat
c.to_flat = to_flat
sys.argv = ["run_sweep.py", *sys.argv[1:]]
runpy.run_path("run_sweep.py", run_name="__main__")
"""


def driver(*args, stdout: Path | None = None, without_field: str | None = None):
    """run_sweep.py in the background, in its own process group; its stdout to a file (a
    pipe nobody reads while it runs would fill and stop it). without_field: as an older
    release that did not have that config field."""
    out = open(stdout, "w") if stdout is not None else subprocess.DEVNULL
    code = ["-c", OLDER_RELEASE.format(field=without_field)] if without_field else ["run_sweep.py"]
    return subprocess.Popen(
        [sys.executable, *code, *args],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def cli(*args, timeout=600, **kw):
    return subprocess.run(
        [sys.executable, "run_sweep.py", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        **kw,
    )


def epochs_reported(sweep: Path) -> dict[str, int]:
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
