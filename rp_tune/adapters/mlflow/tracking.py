"""MLflow tracking of sweeps, as the driver sees it: `SweepTracker` hands every trial event to
a durable queue (`queue.DurableQueue`: one background thread, retried in order, never
dropped, what is left at the end saved to `mlflow-pending.jsonl` beside the sweep and replayed
by the next `--resume`) that feeds the sweep's run model (`runs.MlflowRuns`: experiment,
parent and child runs). Also here: the training workers' system metrics (MLflow's monitors),
and the report's and `--evaluate`'s logging to a finished sweep's runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rp_tune.adapters.mlflow.queue import DurableQueue
from rp_tune.adapters.mlflow.runs import MlflowRuns
from rp_tune.adapters.mlflow.states import find_parent_run
from rp_tune.core import storage

log = logging.getLogger(__name__)

PENDING_FILE = "mlflow-pending.jsonl"


def local_store(sweep_dir: str) -> Path:
    """Where a sweep on a local path keeps its MLflow database by default (the one place that
    says so): one database per results root (`results/mlflow.db`), so every sweep under it
    compares in one UI; a sweep started when each sweep had its own (`results/<sweep>/
    mlflow.db`) keeps that one, so a --resume continues its runs."""
    own = Path(sweep_dir).resolve() / "mlflow.db"
    return own if own.is_file() else Path(sweep_dir).resolve().parent / "mlflow.db"


def default_tracking_uri(sweep_dir: str) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the sweep's results folder."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_uri(sweep_dir):
        raise ValueError(
            f"storage {sweep_dir!r} is remote: pass --tracking-uri (an MLflow "
            "server) so the tracking database does not live on object storage"
        )
    db = local_store(sweep_dir)
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


class SweepTracker:
    """Logs a sweep's trials to MLflow from the driver, without ever blocking it: events go
    through a `DurableQueue` to the sweep's `MlflowRuns`."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_path: str,
        space: str,
        sweep_dir: str | None = None,
        artifact_location: str | None = None,
        space_params: dict[str, Any] | None = None,
        configs: Sequence[Any] = (),
        after_a_killed_driver: str | None = None,
        driver: str = "",
    ) -> None:
        """after_a_killed_driver: the lease token of the killed driver this one took over
        (its runs are closed first); driver: this driver's own token."""
        self.runs = MlflowRuns(
            tracking_uri,
            experiment,
            sweep_path,
            space,
            artifact_location,
            space_params,
            configs,
            driver,
        )
        pending = storage.join(sweep_dir, PENDING_FILE) if sweep_dir else None
        self._events = DurableQueue(self.runs.handle_batch, pending, f"MLflow at {tracking_uri}")
        if after_a_killed_driver is not None:  # the runs it left RUNNING: KILLED, first
            self._events.put({"type": "abandoned", "driver": after_a_killed_driver})
        self._events.put({"type": "start"})  # after the replayed events, before any new one
        self._events.start()

    @property
    def experiment(self) -> str:
        return self.runs.experiment

    @property
    def link(self) -> str | None:
        """The URL of the sweep's saved comparison view, once the parent run is known."""
        return self.runs.link

    @property
    def failures(self) -> int:
        return self._events.failures

    def wait_idle(self, timeout_s: float = 120.0) -> bool:
        """Wait until every event so far reached MLflow (or timeout_s passed); whether it did."""
        return self._events.wait_idle(timeout_s)

    def close(self, timeout_s: float = 120.0) -> int:
        """Wait up to timeout_s for the events to be delivered; persist what is left (the
        pending file). Returns its count."""
        return self._events.close(timeout_s)

    # --- events from the sweep (any thread) ---------------------------------------------------
    # --- events from the sweep (any thread) ---------------------------------------------------
    def trial_result(self, run_key: str, flat: dict[str, Any], result: dict[str, Any]) -> None:
        self._events.put(
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
        self._events.put(
            {
                "type": "end",
                "run_key": run_key,
                "flat": _jsonable(flat),
                "result": _jsonable(result),
                "status": status,
                "error": error,
            }
        )

    def sweep_end(
        self,
        summary: dict[str, Any],
        artifacts: list[str] | None = None,
        totals: dict[str, float] | None = None,
    ) -> None:
        """The sweep's counts (tags), files (artifacts) and cost totals (parent metrics)."""
        self._events.put(
            {
                "type": "sweep_end",
                "summary": _jsonable(summary),
                "artifacts": list(artifacts or []),
                "totals": _jsonable(totals or {}),
            }
        )


class SystemMetrics:
    """A training worker's system metrics per epoch, from MLflow's own monitors
    (`mlflow.system_metrics`: CPU and memory, disk, network, and utilization, memory and power
    of the worker's GPUs where NVML answers).

    A thread samples every `interval` seconds; `epoch()` returns the mean of the samples since
    its last call as `system/<name>` (at least one sample: it takes one itself), and the
    trial's epoch row carries them to the driver, whose tracker logs them at step = epoch, in
    the UI's "System metrics" section. Not MLflow's `SystemMetricsMonitor`, which logs from
    where it runs: a worker has no run id until the driver makes the run, the local store is
    the driver's SQLite file, and its steps count samples, not epochs.

    GPUs: NVML numbers every GPU of the node and ignores CUDA_VISIBLE_DEVICES, so the monitor
    keeps the GPUs this worker's CUDA sees (Ray sets CUDA_VISIBLE_DEVICES), matched by UUID
    (`worker_gpus`), as gpu_0, gpu_1, ... in CUDA's order; a GPU shared by fractional trials
    reports the utilization of all of them. A reading NVML refuses (power on some GPUs, MIG
    slices) is dropped without a warning every sample.
    """

    def __init__(self, interval: float = 2.0) -> None:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.interval = interval
        self.monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        gpu = _gpu_monitor()
        if gpu is not None:
            self.monitors.append(gpu)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rp_tune-system", daemon=True)

    def start(self) -> SystemMetrics:
        self._collect()  # psutil's first CPU reading counts from here
        self._thread.start()
        return self

    def _collect(self) -> None:
        with self._lock:
            for m in list(self.monitors):
                try:
                    m.collect_metrics()
                except Exception as e:  # a monitor that stops answering: the others go on
                    log.warning("system metrics: %s failed (%s); dropped", type(m).__name__, e)
                    self.monitors.remove(m)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._collect()

    def epoch(self) -> dict[str, float]:
        """Means of the samples since the last call, as `system/<name>`; the samples cleared."""
        self._collect()
        out: dict[str, float] = {}
        with self._lock:
            for m in self.monitors:
                out.update({f"system/{k}": float(v) for k, v in m.aggregate_metrics().items()})
                m.clear_metrics()
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _gpu_monitor() -> Any:
    """MLflow's NVIDIA (or ROCm) monitor over this worker's GPUs; None where there is none."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return None  # this worker sees no GPU
    for kind in (GPUMonitor, ROCMMonitor):
        try:
            monitor = kind()
        except Exception:  # no driver, no GPU, no pynvml/pyrsmi: no GPU metrics
            continue
        handles = getattr(monitor, "gpu_handles", None)
        if handles is not None:  # NVIDIA: keep this worker's own, in CUDA's order
            import pynvml

            mine = worker_gpus(handles, pynvml.nvmlDeviceGetUUID, _cuda_uuids())
            monitor.gpu_handles, monitor.num_gpus = mine, len(mine)
            if not mine:
                return None
        # NVML refusals (no power reading, MIG) are dropped: one warning per sample otherwise
        logging.getLogger(type(monitor).__module__).setLevel(logging.ERROR)
        return monitor
    return None


def worker_gpus(handles: list[Any], uuid_of: Any, cuda_uuids: list[str]) -> list[Any]:
    """The NVML handles of the GPUs this process's CUDA sees, in CUDA's order, matched by
    UUID (NVML's "GPU-<uuid>", CUDA's "<uuid>"); all of them where CUDA names none."""
    if not cuda_uuids:
        return list(handles)
    by_uuid = {}
    for h in handles:
        u = uuid_of(h)
        u = u.decode() if isinstance(u, bytes) else str(u)
        by_uuid[u.removeprefix("GPU-").removeprefix("MIG-")] = h
    return [by_uuid[u] for u in cuda_uuids if u in by_uuid]


def _cuda_uuids() -> list[str]:
    """The UUIDs of the GPUs torch's CUDA sees in this process ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def system_metrics_on(setting: str, device_type: str) -> bool:
    """--system-metrics: `on`, `off`, or `auto` (on where the trial trains on a GPU)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"system metrics {setting!r} is invalid; valid: 'auto', 'on', 'off'")
    return setting == "on" or (setting == "auto" and device_type == "cuda")


def _jsonable(obj: Any) -> Any:
    return json.loads(
        json.dumps(obj, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    )


def log_report(uri: str, sweep_path: str, paths: list[str]) -> None:
    """Log the report's files (table, figures) under `report/` of the sweep's parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = find_parent_run(client, sweep_path)
    if parent is None:
        log.warning("no MLflow parent run for %s at %s: report not logged", sweep_path, uri)
        return
    for p in paths:
        client.log_artifact(parent, p, artifact_path="report")


def log_evaluation(
    uri: str, sweep_path: str, run_key: str, metrics: dict[str, float], step: int
) -> bool:
    """Add a finished trial's re-evaluated metrics to its run (step = its last epoch),
    each once: a metric the run already holds is not logged again. False when the sweep or
    the trial has no run at `uri` (nothing logged, said in the log)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = find_parent_run(client, sweep_path)
    if parent is None:
        log.warning("no MLflow parent run for %s at %s: evaluation not logged", sweep_path, uri)
        return False
    exp = client.get_run(parent).info.experiment_id
    found = client.search_runs(
        [exp],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
        f"tags.`rp_tune.run_key` = '{run_key}'",
        max_results=1,
    )
    if not found:
        log.warning("no MLflow run of %s under %s: evaluation not logged", run_key, sweep_path)
        return False
    run = found[0]
    ts = int(time.time() * 1000)
    todo = [
        Metric(k, float(v), ts, step)
        for k, v in sorted(metrics.items())
        if k not in run.data.metrics
    ]
    if todo:
        client.log_batch(run.info.run_id, metrics=todo)
    return True
