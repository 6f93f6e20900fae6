"""MLflow tracking of sweeps: the only module that imports mlflow.

One experiment per search space, one parent run per sweep (a resumed sweep reuses its parent),
one nested child run per trial (tag `mlflow.parentRunId`), found again by its `rp_tune.run_key`
tag, so a retried or resumed trial continues its own run and never gets a second one.

Child run: name = run_key; params = the flat config; per-epoch metrics with step = epoch;
final metrics; tags (run_key, scheme, density, model, git commit, versions, status);
artifacts: masks Parquet, per-layer density report (CSV), gradient-flow curve (CSV),
training curves (PNG) and optionally the final weights.

Events go through a queue drained by one background thread, so a tracking server that is
slow or down never blocks the sweep: failed calls are retried with backoff, in order, and
whatever is still queued when the sweep ends is written to `mlflow-pending.jsonl` beside the
sweep and replayed by the next `--resume`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import storage
from .metrics import FINAL_PREFIXES

log = logging.getLogger(__name__)

EPOCH_KEYS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_ece",
    "lr",
    "epoch_seconds",
    "images_per_second",
    # dynamic sparse training: updates and connections changed this epoch, death rate, and
    # the fraction of weights ever active (in-time over-parameterisation rate)
    "dst_updates",
    "dst_changed",
    "death_rate",
    "itop_rate",
)
PENDING_FILE = "mlflow-pending.jsonl"


def default_tracking_uri(sweep_dir: str) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the sweep's results folder."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_uri(sweep_dir):
        raise ValueError(
            f"storage {sweep_dir!r} is remote: pass --tracking-uri (an MLflow "
            "server) so the tracking database does not live on object storage"
        )
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import mlflow
    import ray
    import torch

    return {
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "mlflow_version": mlflow.__version__,
    }


class SweepTracker:
    """Logs a sweep's trials to MLflow from the driver, without ever blocking it."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_path: str,
        space: str,
        sweep_dir: str | None = None,
        log_weights: bool = False,
        artifact_location: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_path = sweep_path
        self.space = space
        self.sweep_dir = sweep_dir  # a folder or a URI (s3://...): where pending events go
        self.log_weights = log_weights
        self.artifact_location = artifact_location
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._client = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._runs: dict[str, str] = {}  # run_key -> run id
        self._last_step: dict[str, int] = {}  # run id -> last epoch logged
        self._tags = {
            "rp_tune.git_commit": _git_commit(),
            **{f"rp_tune.{k}": v for k, v in _versions().items()},
        }
        self._thread = threading.Thread(target=self._drain, name="mlflow-tracker", daemon=True)
        self._busy = threading.Event()
        self.failures = 0
        for event in self._load_pending():
            self._queue.put(event)
        self._queue.put({"type": "start"})
        self._thread.start()

    # --- events from the sweep (any thread) ---------------------------------------------------
    def trial_result(self, run_key: str, flat: dict[str, Any], result: dict[str, Any]) -> None:
        self._queue.put(
            {
                "type": "result",
                "run_key": run_key,
                "flat": _jsonable(flat),
                "result": _jsonable(result),
            }
        )

    def trial_end(
        self,
        run_key: str,
        flat: dict[str, Any],
        result: dict[str, Any],
        status: str,
        error: str = "",
    ) -> None:
        self._queue.put(
            {
                "type": "end",
                "run_key": run_key,
                "flat": _jsonable(flat),
                "result": _jsonable(result),
                "status": status,
                "error": error,
            }
        )

    def sweep_end(self, summary: dict[str, Any], artifacts: list[str] | None = None) -> None:
        self._queue.put(
            {"type": "sweep_end", "summary": _jsonable(summary), "artifacts": list(artifacts or [])}
        )

    def close(self, timeout_s: float = 120.0) -> int:
        """Wait up to timeout_s for the queue to drain; persist what is left. Returns its count."""
        deadline = time.monotonic() + timeout_s
        while (not self._queue.empty() or self._busy.is_set()) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                left.append(event)
        if self._current is not None and self._busy.is_set():
            left.insert(0, self._current)
        self._stop = True
        self._save_pending(left)
        if left:
            log.warning(
                "MLflow at %s unreachable: %d tracking events saved to %s; they are "
                "replayed by the next --resume",
                self.tracking_uri,
                len(left),
                self._pending_path(),
            )
        return len(left)

    # --- the background thread ------------------------------------------------------------------
    _current: dict[str, Any] | None = None
    _stop = False

    def _drain(self) -> None:
        delay = 1.0
        while not self._stop:
            try:
                event = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if event is None:
                return
            self._current = event
            self._busy.set()
            while not self._stop:
                try:
                    self._handle(event)
                    delay = 1.0
                    break
                except Exception as e:  # server down, slow, or refusing: retry, never drop
                    self.failures += 1
                    log.warning(
                        "MLflow tracking call failed (%s: %s); retrying in %.0fs",
                        type(e).__name__,
                        str(e).splitlines()[0][:200],
                        delay,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
            self._busy.clear()
            self._current = None

    def _client_(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            self._ensure_parent()
        elif kind == "result":
            run_id = self._ensure_child(event["run_key"], event["flat"])
            self._log_epoch(run_id, event["result"])
        elif kind == "end":
            run_id = self._ensure_child(event["run_key"], event["flat"])
            self._log_end(run_id, event["result"], event["status"], event["error"])
        elif kind == "sweep_end":
            self._log_sweep_end(event["summary"], event["artifacts"])

    def _ensure_experiment(self) -> str:
        if self._experiment_id is None:
            client = self._client_()
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._experiment_id = client.create_experiment(
                        self.experiment, artifact_location=self.artifact_location
                    )
                except Exception:
                    exp = client.get_experiment_by_name(self.experiment)  # created meanwhile
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _ensure_parent(self) -> str:
        if self._parent_id is None:
            client = self._client_()
            exp = self._ensure_experiment()
            found = client.search_runs(
                [exp],
                filter_string=f"tags.`rp_tune.sweep_path` = '{self.sweep_path}' and "
                "tags.`rp_tune.role` = 'sweep'",
                max_results=1,
            )
            if found:
                self._parent_id = found[0].info.run_id
                client.set_tag(self._parent_id, "rp_tune.status", "running")
            else:
                run = client.create_run(
                    exp,
                    run_name=storage.basename(self.sweep_path),
                    tags={
                        "rp_tune.role": "sweep",
                        "rp_tune.sweep_path": self.sweep_path,
                        "rp_tune.space": self.space,
                        "rp_tune.status": "running",
                        **self._tags,
                    },
                )
                self._parent_id = run.info.run_id
        return self._parent_id

    def _ensure_child(self, run_key: str, flat: dict[str, Any]) -> str:
        if run_key in self._runs:
            return self._runs[run_key]
        client = self._client_()
        exp = self._ensure_experiment()
        parent = self._ensure_parent()
        # Scoped to this sweep's parent: another sweep of the same grid in the same experiment
        # (another --name or --storage) has children with the same run keys.
        found = client.search_runs(
            [exp],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
            f"tags.`rp_tune.run_key` = '{run_key}'",
            max_results=1,
        )
        logged: dict[str, str] = {}
        if found:
            run_id = found[0].info.run_id
            logged = found[0].data.params
            history = client.get_metric_history(run_id, "train_loss")
            self._last_step[run_id] = max((m.step for m in history), default=0)
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {
                "mlflow.parentRunId": parent,
                "rp_tune.run_key": run_key,
                "rp_tune.scheme": str(flat.get("sparsity.scheme")),
                "rp_tune.density": str(flat.get("sparsity.density")),
                "rp_tune.model": str(flat.get("model.name")),
                "rp_tune.status": "running",
                **self._tags,
            }
            run = client.create_run(exp, run_name=run_key, tags=tags)
            run_id = run.info.run_id
            self._last_step[run_id] = 0
        # Also for a run found again: the server may have gone down between creating it and
        # logging its params, and the retried event lands here.
        from mlflow.entities import Param

        params = [Param(k, _param(v)) for k, v in sorted(flat.items()) if k not in logged]
        for i in range(0, len(params), 90):
            client.log_batch(run_id, params=params[i : i + 90])
        self._runs[run_key] = run_id
        return run_id

    def _log_epoch(self, run_id: str, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        epoch = int(result.get("epoch", 0))
        if epoch <= self._last_step.get(run_id, 0):
            return  # re-reported after a restart: the history stays one value per epoch
        ts = int(time.time() * 1000)
        metrics = [
            Metric(k, float(result[k]), ts, epoch)
            for k in EPOCH_KEYS
            if isinstance(result.get(k), (int, float))
        ]
        metrics.append(
            Metric("resumed_from_epoch", float(result.get("resumed_from_epoch", 0)), ts, epoch)
        )
        self._client_().log_batch(run_id, metrics=metrics)
        self._last_step[run_id] = epoch

    def _backfill_epochs(self, run_id: str, history: list[dict[str, Any]]) -> int:
        """Log the epochs of the trial's own history that the run lacks; returns how many.

        An epoch whose checkpoint Ray Train registered just before the driver stopped never
        reached Tune's callbacks (so neither this tracker); the restored trial goes on from
        the epoch after it. The final checkpoint's history holds every epoch: each reaches
        MLflow exactly once, whatever interrupted the sweep.
        """
        from mlflow.entities import Metric

        client = self._client_()
        logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}
        ts = int(time.time() * 1000)
        missing = [row for row in history if int(row.get("epoch", 0)) not in logged]
        batch: list = []
        for row in missing:  # whole rows per batch: train_loss marks an epoch as logged
            metrics = [
                Metric(k, float(row[k]), ts, int(row["epoch"]))
                for k in EPOCH_KEYS
                if k != "train_loss"
                and isinstance(row.get(k), (int, float))
                and not isinstance(row.get(k), bool)
            ]
            if isinstance(row.get("train_loss"), (int, float)):  # last: the row's marker
                metrics.append(
                    Metric("train_loss", float(row["train_loss"]), ts, int(row["epoch"]))
                )
            if len(batch) + len(metrics) > 900:
                client.log_batch(run_id, metrics=batch)
                batch = []
            batch += metrics
        if batch:
            client.log_batch(run_id, metrics=batch)
        if missing:
            log.info(
                "MLflow run %s: logged %d epoch(s) the sweep had not seen: %s",
                run_id,
                len(missing),
                [int(r["epoch"]) for r in missing],
            )
        return len(missing)

    def _log_end(self, run_id: str, result: dict[str, Any], status: str, error: str) -> None:
        from mlflow.entities import Metric

        client = self._client_()
        epoch = int(result.get("epoch", 0))
        if status == "finished":
            ts = int(time.time() * 1000)
            final = [
                Metric(k, float(v), ts, epoch)
                for k, v in result.items()
                if k.startswith(FINAL_PREFIXES)
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ]
            if final:
                client.log_batch(run_id, metrics=final)
            if result.get("ood_used") is not None:
                client.set_tag(run_id, "rp_tune.ood_used", str(result["ood_used"])[:5000])
            ckpt = result.get("checkpoint_path")  # Ray's filesystem path: no s3:// scheme
            if ckpt:
                self._log_artifacts(run_id, storage.on_storage_of(str(ckpt), self.sweep_path))
        elif result.get("checkpoint_path"):  # failed: its epochs still all reach the run
            from .train import HISTORY_FILE

            where = storage.on_storage_of(str(result["checkpoint_path"]), self.sweep_path)
            history = storage.join(where, HISTORY_FILE)
            if storage.exists(history):
                self._backfill_epochs(run_id, json.loads(storage.read_text(history)))
        client.set_tag(run_id, "rp_tune.status", status)
        if error:
            client.set_tag(run_id, "rp_tune.error", error[:5000])
        client.set_terminated(run_id, "FINISHED" if status == "finished" else "FAILED")

    def _log_artifacts(self, run_id: str, checkpoint: str) -> None:
        """Masks, density report, gradient flow, curves (and weights) from the checkpoint."""
        from .masks import Masks, density_report, report_table
        from .train import GRAD_FLOW_FILE, HISTORY_FILE, MASKS_FILE

        client = self._client_()
        with tempfile.TemporaryDirectory(prefix="rp_tune-artifacts-") as tmp:
            local = _fetch_dir(checkpoint, Path(tmp) / "ckpt")
            out = Path(tmp) / "out"
            out.mkdir()
            masks_path = local / MASKS_FILE
            if masks_path.is_file():
                shutil.copy(masks_path, out / MASKS_FILE)
                import pyarrow.csv as pacsv

                rows = density_report(Masks.load(masks_path))
                pacsv.write_csv(report_table(rows), out / "density_report.csv")
            else:
                log.warning(
                    "no %s in the final checkpoint %s: no masks logged", MASKS_FILE, checkpoint
                )
            if (local / GRAD_FLOW_FILE).is_file():
                shutil.copy(local / GRAD_FLOW_FILE, out / GRAD_FLOW_FILE)
            if (local / HISTORY_FILE).is_file():
                history = json.loads((local / HISTORY_FILE).read_text())
                self._backfill_epochs(run_id, history)
                shutil.copy(local / HISTORY_FILE, out / HISTORY_FILE)
                plot_curves(history, out / "training_curves.png")
            if self.log_weights and (local / "state.pt").is_file():
                import torch

                state = torch.load(local / "state.pt", map_location="cpu", weights_only=False)
                torch.save(state["model"], out / "final_weights.pt")
            client.log_artifacts(run_id, str(out))

    def _log_sweep_end(self, summary: dict[str, Any], artifacts: list[str]) -> None:
        client = self._client_()
        parent = self._ensure_parent()
        for key in ("total", "finished", "failed", "unfinished", "resumed"):
            if key in summary:
                client.log_metric(parent, f"trials_{key}", float(summary[key]))
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(parent, path)
        # failed: some trial failed; interrupted: stopped with trials left for --resume
        if summary.get("failed", 0):
            status, state = "failed", "FAILED"
        elif summary.get("unfinished", 0) or summary.get("interrupted", 0):
            status, state = "interrupted", "KILLED"
        else:
            status, state = "finished", "FINISHED"
        client.set_tag(parent, "rp_tune.status", status)
        client.set_terminated(parent, state)

    # --- pending events -------------------------------------------------------------------------
    def _pending_path(self) -> str | None:
        return storage.join(self.sweep_dir, PENDING_FILE) if self.sweep_dir else None

    def _load_pending(self) -> list[dict[str, Any]]:
        path = self._pending_path()
        if path is None or not storage.exists(path):
            return []
        text = storage.read_text(path)
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        storage.delete(path)
        log.info("replaying %d MLflow events saved by an earlier run", len(events))
        return events

    def _save_pending(self, events: list[dict[str, Any]]) -> None:
        path = self._pending_path()
        if path is None or not events:
            return
        storage.append_text(path, "".join(json.dumps(e) + "\n" for e in events))


def _param(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _jsonable(obj: Any) -> Any:
    return json.loads(
        json.dumps(obj, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    )


def _fetch_dir(uri: str, dest: Path) -> Path:
    """A checkpoint folder as a local path (copied from s3:// etc. via pyarrow)."""
    if not storage.is_uri(uri):
        return Path(uri)
    storage.copy_to_local(uri, dest)
    return dest


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy (train, validation) per epoch, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    axes[2].plot(epochs, [h["lr"] for h in history], "o-")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
