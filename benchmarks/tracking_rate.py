"""How many epoch rows per second the sweep's MLflow tracker delivers, into SQLite and into a
server.

    python benchmarks/tracking_rate.py                       # 16 trials x 40 epochs, both stores
    python benchmarks/tracking_rate.py --runs 64 --epochs 20 --store sqlite

An epoch row is what one trial reports per epoch: every registered per-epoch metric
(`rp_tune.trial.metrics.METRICS`, epoch-stepped, 18 today) plus `resumed_from_epoch`. The
driver of a sweep on many GPUs hands the tracker rows faster than one MLflow call each can
store them. This reports every trial's first epoch (its child run is made then: a search, a
create, its params; timed as `first_rows_s`), waits until that is stored, then queues the
other `--epochs` - 1 rows of every trial at once (as a backlog builds up behind a slow store)
and times the tracker until every row is stored (`SweepTracker.close`): `rows_per_s`. Then
it counts the stored values, so a fast number that lost rows cannot pass unnoticed. Stores:
the SQLite file a local sweep uses, and `mlflow server` on loopback (one worker) over its
own SQLite file. Prints one JSON line per store; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.mlflow_screenshot import free_port, start_server  # noqa: E402
from rp_tune.trial.metrics import EPOCH, METRICS  # noqa: E402

KEYS = [m.name for m in METRICS.values() if m.when == EPOCH and not m.family and m.step == EPOCH]


def _row(epoch: int, run: int) -> dict[str, float]:
    return {"epoch": epoch, **{k: run + epoch / 1000 + i for i, k in enumerate(KEYS)}}


def _stored(uri: str, experiment: str) -> int:
    """Metric values in the store: every key's history of every run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    return sum(
        len(client.get_metric_history(r.info.run_id, k))
        for r in runs
        if "rp_tune.run_key" in r.data.tags
        for k in KEYS
    )


def measure(uri: str, folder: Path, runs: int, epochs: int) -> dict[str, float]:
    """Rows/s of one tracker: the first epoch of every trial (its child run made: a search,
    a create, its params), then the other epochs' rows queued at once, timed alone."""
    from rp_tune.adapters.mlflow.tracking import SweepTracker

    sweep = str(folder / "sweep")
    flat = {"model.name": "cifar_resnet_20", "sparsity.scheme": "erk", "sparsity.density": 0.1}
    tracker = SweepTracker(uri, "rate", sweep_path=sweep, space="rate", sweep_dir=sweep)
    t0 = time.perf_counter()
    for r in range(runs):
        tracker.trial_result(f"k{r}", flat, _row(1, r))
    tracker.wait_idle(timeout_s=3600)
    t1 = time.perf_counter()
    for epoch in range(2, epochs + 1):
        for r in range(runs):
            tracker.trial_result(f"k{r}", flat, _row(epoch, r))
    queued = time.perf_counter() - t1
    left = tracker.close(timeout_s=3600)
    t2 = time.perf_counter()
    rows = runs * (epochs - 1)
    stored = _stored(uri, "rate")
    return {
        "first_rows_s": round(t1 - t0, 2),
        "rows": rows,
        "metrics_per_row": len(KEYS) + 1,
        "seconds": round(t2 - t1, 2),
        "rows_per_s": round(rows / (t2 - t1), 1),
        "queue_s": round(queued, 3),
        "values_stored": stored,
        "values_expected": runs * epochs * len(KEYS),
        "left_pending": left,
    }


def measure_store(store: str, folder: Path, runs: int, epochs: int) -> dict[str, float]:
    """`measure` into a fresh store in `folder`: the SQLite file a local sweep uses, or
    `mlflow server` on loopback (one worker) over its own SQLite file."""
    folder.mkdir(parents=True, exist_ok=True)
    server = None
    if store == "sqlite":
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    else:
        port = free_port()
        server = start_server(folder / "server.db", port)
        uri = f"http://127.0.0.1:{port}"
    try:
        return measure(uri, folder, runs, epochs)
    finally:
        if server is not None:
            os.killpg(server.pid, 9)
            server.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=16, help="trials reporting (default 16)")
    p.add_argument("--epochs", type=int, default=40, help="rows per trial (default 40)")
    p.add_argument("--store", choices=["sqlite", "server", "both"], default="both")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    stores = ["sqlite", "server"] if args.store == "both" else [args.store]
    for store in stores:
        with tempfile.TemporaryDirectory(prefix="rp_tune-rate-") as tmp:
            out = measure_store(store, Path(tmp), args.runs, args.epochs)
        print(json.dumps({"store": store, "runs": args.runs, **out}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
