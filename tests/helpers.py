"""Test helpers: tiny datasets in the real on-disk formats, an MLflow server on loopback."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
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


def mlflow_runs(client, exp_name):
    """(sweep parent runs, trial child runs) of an experiment."""
    exp = client.get_experiment_by_name(exp_name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rp_tune.role") == "sweep"]
    children = [r for r in runs if "rp_tune.run_key" in r.data.tags]
    return parents, children


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` as the cluster's head runs it: SQLite backend, proxied artifacts."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def stop_process_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()
