"""The MLflow run model of a sweep: one experiment per search space, one parent run per
sweep (a resumed sweep reuses its parent), one nested child run per trial (tag
`mlflow.parentRunId`), found again by its `rp_tune.run_key` tag, so a retried or resumed
trial continues its own run and never gets a second one.

Child run: name = run_key; params = the flat config (and `arch.depth`/`arch.width` of a CIFAR
ResNet); per-epoch metrics with step = epoch (the training workers' system metrics,
`system/*`, among them); final metrics; tags (run_key, scheme, density, model, git commit,
versions, status, `mlflow.runColor` of its scheme); its dataset as an MLflow input (name, split
sizes, the digest of the integrity manifest); artifacts: the final checkpoint's artifacts
folder as the trial wrote it plus the training curves (PNG). The experiment holds the sweep's
saved comparison view (`rp_tune.adapters.mlflow.view`).

`MlflowRuns.handle_batch(events)` makes the calls of the events waiting in the tracker's
queue, the epoch rows of each run in one call; it never queues or retries (the tracker's
`DurableQueue` does).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rp_tune.adapters.mlflow import view as mlflow_view
from rp_tune.adapters.mlflow.states import (
    DRIVER_TAG,
    close_abandoned_runs,
    close_running_children,
    find_parent_run,
)
from rp_tune.core import storage
from rp_tune.core.layout import (
    ARTIFACTS_DIR,
    DENSITY_REPORT_FILE,
    HISTORY_FILE,
    LEGACY_ARTIFACTS,
    MASKS_FILE,
)
from rp_tune.core.provenance import CODE_DIFF_FILE, ENV_PREFIX, code_state
from rp_tune.trial.metrics import EPOCH, FINAL, numeric_metrics, step_of, step_series

log = logging.getLogger(__name__)

MAX_METRICS = 900  # per log_batch call: MLflow takes at most 1000 metrics a call


class MlflowRuns:
    """The experiment, parent and child runs of one sweep, and the calls that fill them."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_path: str,
        space: str,
        artifact_location: str | None = None,
        space_params: dict[str, Any] | None = None,
        configs: Sequence[Any] = (),
        driver: str = "",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.driver = driver  # the driver's lease token: which driver the parent run is of
        self.experiment = experiment
        self.sweep_path = sweep_path
        self.space = space
        self.artifact_location = artifact_location
        # the parent run's params: the space's axes and fixed values (space.space_params)
        self.space_params = dict(space_params or {})
        self.configs = list(configs)  # the sweep's TrialConfigs: its saved comparison view
        self._client = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._runs: dict[str, str] = {}  # run_key -> run id
        self._last_step: dict[str, int] = {}  # run id -> last epoch logged
        self._datasets: set[tuple[str, str]] = set()  # (run id, digest) logged as inputs
        # the URL of the sweep's saved view, once the parent run is known (never a network
        # call of its own: the driver prints it at the end whatever the server does)
        self.link: str | None = None
        code = code_state()
        self.code_diff = code["diff"]  # an artifact of the parent run when the code is dirty
        self._tags = {
            "rp_tune.git_commit": code["commit"],
            "rp_tune.git_dirty": str(code["dirty"]).lower(),
        }

    def _client_(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def handle_batch(self, events: list[dict[str, Any]]) -> None:
        """Carry out queued events in order, each removed from the front of `events` once
        done (the queue retries what is left after a failure).

        Consecutive epoch rows are stored together: every row of one run in one `log_batch`
        (whole rows, at most `MAX_METRICS` metrics a call). A call costs about the same for
        one row as for fifty (a transaction on SQLite, a request to a server), so when rows
        arrive faster than one call each can store them, the backlog itself makes the calls
        larger and the tracker keeps up (`benchmarks/tracking_rate.py`). Each run's last
        logged epoch (`_last_step`) advances with each call, so a retried batch logs no epoch
        twice."""
        while events:
            if events[0]["type"] != "result":
                self.handle(events[0])
                del events[0]
                continue
            n = next((i for i, e in enumerate(events) if e["type"] != "result"), len(events))
            self._log_results(events[:n])
            del events[:n]

    def _log_results(self, results: list[dict[str, Any]]) -> None:
        """Epoch rows of any runs: each run's rows in order, in as few calls as fit."""
        rows: dict[str, list[dict[str, Any]]] = {}
        for event in results:
            run_id = self._ensure_child(event["run_key"], event["flat"])
            if event["result"].get("dataset"):  # the first row after each (re)start
                self._log_dataset(run_id, json.loads(event["result"]["dataset"]))
            rows.setdefault(run_id, []).append(event["result"])
        for run_id, run_rows in rows.items():
            self._log_epochs(run_id, run_rows)

    def handle(self, event: dict[str, Any]) -> None:
        """Carry out one tracking event (raises where MLflow fails: the queue retries)."""
        kind = event["type"]
        if kind == "abandoned":
            closed = close_abandoned_runs(self.tracking_uri, self.sweep_path, event.get("driver"))
            if closed:
                log.warning("MLflow: %d runs the killed driver left RUNNING are KILLED", closed)
        elif kind == "start":  # this driver's: the parent RUNNING, marked as its own
            parent = self._ensure_parent()
            client = self._client_()
            client.update_run(parent, status="RUNNING")
            client.set_tag(parent, "rp_tune.status", "running")
            if self.driver:
                client.set_tag(parent, DRIVER_TAG, self.driver)
        elif kind == "result":
            self._log_results([event])
        elif kind == "end":
            run_id = self._ensure_child(event["run_key"], event["flat"])
            self._log_end(run_id, event["result"], event["status"], event["error"])
        elif kind == "sweep_end":
            self._log_sweep_end(event["summary"], event["artifacts"], event.get("totals") or {})

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
            found = find_parent_run(client, self.sweep_path, [exp])
            if found is not None:  # a resumed sweep's ("start" sets it RUNNING again)
                self._parent_id = found
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
                from mlflow.entities import Param

                params = [Param(k, _param(v)[:500]) for k, v in sorted(self.space_params.items())]
                for i in range(0, len(params), 90):
                    client.log_batch(self._parent_id, params=params[i : i + 90])
                if self.code_diff:  # uncommitted changes: what the commit alone does not say
                    with tempfile.TemporaryDirectory(prefix="rp_tune-code-") as tmp:
                        diff = Path(tmp, CODE_DIFF_FILE)
                        diff.write_text(self.code_diff)
                        client.log_artifact(self._parent_id, str(diff))
            if self.configs:  # the saved view names the parent: its trials are its children
                tags = mlflow_view.view_tags(self.configs, self.sweep_path, self._parent_id)
                for key, value in tags.items():
                    client.set_experiment_tag(exp, key, value)
                self.link = comparison_url_at(self.tracking_uri, exp, self.sweep_path)
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
            client.update_run(run_id, status="RUNNING")  # KILLED when the sweep stopped
            client.set_tag(run_id, "rp_tune.status", "running")
        else:
            tags = {
                "mlflow.parentRunId": parent,
                "rp_tune.run_key": run_key,
                "rp_tune.scheme": str(flat.get("sparsity.scheme")),
                "rp_tune.density": str(flat.get("sparsity.density")),
                "rp_tune.model": str(flat.get("model.name")),
                "rp_tune.status": "running",
                mlflow_view.RUN_COLOR_TAG: mlflow_view.run_color(flat),
                **self._tags,
            }
            run = client.create_run(exp, run_name=run_key, tags=tags)
            run_id = run.info.run_id
            self._last_step[run_id] = 0
        # Also for a run found again: the server may have gone down between creating it and
        # logging its params, and the retried event lands here.
        from mlflow.entities import Param

        arch = mlflow_view.arch_params(str(flat.get("model.name", "")))
        params = [
            Param(k, _param(v)) for k, v in sorted({**flat, **arch}.items()) if k not in logged
        ]
        for i in range(0, len(params), 90):
            client.log_batch(run_id, params=params[i : i + 90])
        self._runs[run_key] = run_id
        return run_id

    def _log_dataset(self, run_id: str, record: dict[str, Any]) -> None:
        """The trial's dataset as an MLflow input of its run (the runs table's Dataset column):
        name and digest of its integrity manifest; split sizes and classes as its profile.
        MLflow keeps one input per (run, dataset), so a restarted trial adds none."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if (run_id, record["digest"]) in self._datasets:
            return
        generated = record.get("source") == "generated"
        dataset = Dataset(
            name=record["name"],
            digest=record["digest"],
            source_type="code" if generated else "local",
            source=json.dumps({"uri": record.get("source", "")}),
            profile=json.dumps(
                {k: v for k, v in record.items() if k.endswith("_examples") or k == "num_classes"}
            ),
        )
        context = InputTag(key="mlflow.data.context", value="training")
        self._client_().log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
        self._datasets.add((run_id, record["digest"]))

    def _log_epochs(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """The run's epoch rows it has not logged yet (a row re-reported after a restart is
        skipped: one value per epoch), whole rows per `log_batch`."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch: list = []
        last = self._last_step.get(run_id, 0)  # the newest epoch logged or in `batch`
        for row in rows:
            epoch = int(row.get("epoch", 0))
            if epoch <= last:
                continue
            metrics = [
                Metric(k, v, ts, step_of(k, row)) for k, v in numeric_metrics(row, EPOCH).items()
            ]
            metrics += [Metric(k, v, ts, step) for k, v, step in step_series(row)]
            metrics.append(
                Metric("resumed_from_epoch", float(row.get("resumed_from_epoch", 0)), ts, epoch)
            )
            if batch and len(batch) + len(metrics) > MAX_METRICS:
                self._log_metrics(run_id, batch, last)
                batch = []
            batch += metrics
            last = epoch
        if batch:
            self._log_metrics(run_id, batch, last)

    def _log_metrics(self, run_id: str, metrics: list, epoch: int) -> None:
        """`metrics` (whole rows up to `epoch`) in calls of at most MAX_METRICS; the run's
        last logged epoch is `epoch` once they are stored."""
        client = self._client_()
        for i in range(0, len(metrics), MAX_METRICS):  # more only where one row is longer
            client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
        self._last_step[run_id] = epoch

    def backfill_epochs(self, run_id: str, history: list[dict[str, Any]]) -> int:
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
                Metric(k, v, ts, step_of(k, row))
                for k, v in numeric_metrics(row, EPOCH).items()
                if k != "train_loss"
            ]
            metrics += [Metric(k, v, ts, step) for k, v, step in step_series(row)]
            if isinstance(row.get("train_loss"), (int, float)):  # last: the row's marker
                metrics.append(
                    Metric("train_loss", float(row["train_loss"]), ts, int(row["epoch"]))
                )
            if len(batch) + len(metrics) > MAX_METRICS:
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
            final = [Metric(k, v, ts, epoch) for k, v in numeric_metrics(result, FINAL).items()]
            if final:
                client.log_batch(run_id, metrics=final)
            if result.get("ood_used") is not None:
                client.set_tag(run_id, "rp_tune.ood_used", str(result["ood_used"])[:5000])
            from mlflow.entities import RunTag

            env = [
                RunTag(f"rp_tune.{k}", str(v)[:5000])
                for k, v in result.items()
                if k.startswith(ENV_PREFIX)
            ]
            if env:  # the trial's machine: versions, CUDA, cuDNN, GPU model
                client.log_batch(run_id, tags=env)
            ckpt = result.get("checkpoint_path")  # Ray's filesystem path: no s3:// scheme
            if ckpt:
                self._log_artifacts(run_id, storage.on_storage_of(str(ckpt), self.sweep_path))
        elif result.get("checkpoint_path"):  # failed: its epochs still all reach the run
            where = storage.on_storage_of(str(result["checkpoint_path"]), self.sweep_path)
            with tempfile.TemporaryDirectory(prefix="rp_tune-artifacts-") as tmp:
                history = _fetch_artifacts(where, Path(tmp)) / HISTORY_FILE
                if history.is_file():
                    self.backfill_epochs(run_id, json.loads(history.read_text()))
        state = {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        client.set_tag(run_id, "rp_tune.status", status if state != "KILLED" else "interrupted")
        if error:
            client.set_tag(run_id, "rp_tune.error", error[:5000])
        client.set_terminated(run_id, state)  # KILLED: stopped unfinished, --resume goes on

    def _log_artifacts(self, run_id: str, checkpoint: str) -> None:
        """The final checkpoint's artifacts folder as the trial wrote it (masks, density
        report, history, gradient flow, weights if asked), plus its training curves (PNG);
        epochs the run lacks are logged from the history first."""
        from rp_tune.adapters.mlflow.curves import plot_curves

        client = self._client_()
        with tempfile.TemporaryDirectory(prefix="rp_tune-artifacts-") as tmp:
            out = _fetch_artifacts(checkpoint, Path(tmp))
            if not any(out.iterdir()):
                log.warning("no artifacts in the final checkpoint %s: none logged", checkpoint)
                return
            if (out / HISTORY_FILE).is_file():
                history = json.loads((out / HISTORY_FILE).read_text())
                self.backfill_epochs(run_id, history)
                plot_curves(history, out / "training_curves.png")
            client.log_artifacts(run_id, str(out))

    def _log_sweep_end(
        self, summary: dict[str, Any], artifacts: list[str], totals: dict[str, float]
    ) -> None:
        from mlflow.entities import RunTag

        client = self._client_()
        parent = self._ensure_parent()
        if totals:  # the cost of the whole sweep, summed: tags, not charts of one point each
            client.log_batch(
                parent,
                tags=[RunTag(f"total_{k}", f"{float(v):.6g}") for k, v in sorted(totals.items())],
            )
        # plain tags, not metrics: they are counts of the sweep, not curves to chart
        for key, tag in (
            ("total", "trials"),
            ("finished", "finished"),
            ("failed", "failed"),
            ("unfinished", "unfinished"),
            ("resumed", "resumed"),
        ):
            if key in summary:
                client.set_tag(parent, tag, str(int(summary[key])))
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
        # a trial the sweep did not end (Ctrl-C, SIGTERM while it trained) is not running
        close_running_children(client, self._ensure_experiment(), parent)
        client.set_tag(parent, "rp_tune.status", status)
        client.set_terminated(parent, state)
        self._runs.clear()  # a replayed sweep's end: its next results find them again


def _param(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _fetch_artifacts(checkpoint: str, tmp: Path) -> Path:
    """A local copy of a checkpoint's artifacts folder (a folder or a URI: s3://...).

    A checkpoint of a release before the artifacts folder kept its masks, history and
    gradient flow at the top: those are copied instead, so a sweep resumed across the
    upgrade logs them too."""
    out = tmp / "artifacts"
    folder = storage.join(checkpoint, ARTIFACTS_DIR)
    if storage.exists(folder):
        storage.copy_to_local(folder, out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in LEGACY_ARTIFACTS:
        if storage.exists(storage.join(checkpoint, name)):
            storage.copy_to_local(storage.join(checkpoint, name), out / name)
    if (out / MASKS_FILE).is_file():  # the report those releases' trackers wrote themselves
        import pyarrow.csv as pacsv

        from rp_tune.sparsity.masks import Masks, density_report, report_table

        rows = density_report(Masks.load(out / MASKS_FILE))
        pacsv.write_csv(report_table(rows), out / DENSITY_REPORT_FILE)
    return out


def comparison_url_at(uri: str, experiment_id: str, sweep_path: str) -> str:
    """The URL of the sweep's saved comparison view (`rp_tune.adapters.mlflow.view`): on the
    server at `uri`, or, for a database, on `mlflow ui`'s default address."""
    base = uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return mlflow_view.comparison_url(base, experiment_id, sweep_path)
