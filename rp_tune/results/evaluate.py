"""Evaluate a sweep's finished trials again, without retraining them.

    python run_sweep.py --space depth_scan --evaluate --set evaluation.ood_sets=svhn,gaussian
    python run_sweep.py --space depth_scan --evaluate --set evaluation.fgsm_eps=0.0157

A metric added after a sweep finished (an OoD set, FGSM at another eps, top-5) is computed
from each finished trial's final checkpoint with the trial's own config, its evaluation
settings replaced by the overrides (`rp_tune.trial.train.evaluate_again`), on this machine (its GPU
if it has one). What it adds are the metrics the trial's own final result lacks (FGSM at
another eps is named fgsm_acc_eps<eps>); they go to `<sweep>/<run key>/evaluations.json`,
which the report reads into the results table, and to the trial's MLflow run.

Once, whatever interrupts it: a trial's values are saved as soon as they are computed, under
an id of the evaluation settings, and a run again skips what is saved; MLflow gets each value
once (a value the run already holds is not logged again), and the entry records that it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rp_tune.config import ConfigError, EvaluationConfig, from_flat, trial_epochs
from rp_tune.core import storage as store
from rp_tune.core.errors import SweepError
from rp_tune.planning.records import (
    evaluated_metrics,
    is_finished,
    last_result,
    read_evaluations,
    stored_trials,
    write_evaluations,
)
from rp_tune.planning.space import check_data_roots

log = logging.getLogger(__name__)

DEFAULT_FGSM_EPS = EvaluationConfig.fgsm_eps  # the paper's 8/255: the name fgsm_acc is its


def evaluation_id(flat: Mapping[str, Any]) -> str:
    """A short hash of a config's evaluation settings: what one evaluation computed."""
    ev = {k: flat[k] for k in sorted(flat) if k.startswith("evaluation.")}
    return hashlib.sha256(json.dumps(ev, default=list).encode()).hexdigest()[:10]


def new_metrics(
    result: Mapping[str, Any], original: Mapping[str, Any], fgsm_eps: float
) -> dict[str, float]:
    """The numeric values of a second final evaluation the trial's own final result lacks;
    FGSM at an eps other than the paper's 8/255 under its own name, fgsm_acc_eps<eps>."""
    from rp_tune.trial.metrics import is_metric

    out = {}
    for k, v in result.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not is_metric(k):
            continue
        if k == "fgsm_acc" and abs(fgsm_eps - DEFAULT_FGSM_EPS) > 1e-9:
            k = f"fgsm_acc_eps{fgsm_eps:.4g}"
        if k not in original:
            out[k] = float(v)
    return out


def evaluate_sweep(
    sweep_dir: str,
    overrides: Mapping[str, Any],
    tracking_uri: str | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every finished trial of the sweep at `sweep_dir` again with the evaluation
    overrides; returns one outcome per finished trial: {"run_key", "status" ("evaluated",
    "saved before", "failed"), "metrics", "logged", "error"}. SweepError for an override
    outside evaluation.*, a bad value, or data the new evaluation needs and cannot find."""
    bad = sorted(k for k in overrides if not k.startswith("evaluation."))
    if bad:
        raise SweepError(
            f"--evaluate changes how finished trials are evaluated, not what they trained: "
            f"{bad} are not evaluation.* keys"
        )
    entries = stored_trials(sweep_dir)
    if not entries:
        raise SweepError(f"no sweep at {sweep_dir} (no trials.json): nothing to evaluate")
    todo = []
    for e in entries:
        last = last_result(store.join(sweep_dir, e["run_key"]))
        if not is_finished(last, trial_epochs(e["flat"])):
            continue
        try:
            cfg = from_flat({**e["flat"], **overrides})
        except ConfigError as err:
            raise SweepError(f"--evaluate: {err}") from None
        todo.append((e, cfg, last))
    if not todo:
        raise SweepError(f"{sweep_dir}: no finished trial to evaluate")
    check_data_roots([cfg for _, cfg, _ in todo])
    outcomes = []
    for e, cfg, last in todo:
        outcomes.append(_evaluate_one(sweep_dir, e["run_key"], cfg, last, tracking_uri, device))
    return outcomes


def _evaluate_one(
    sweep_dir: str,
    key: str,
    cfg: Any,
    last: dict[str, Any],
    tracking_uri: str | None,
    device: str | None,
) -> dict[str, Any]:
    trial_dir = store.join(sweep_dir, key)
    ident = evaluation_id(cfg.to_flat())
    saved = read_evaluations(trial_dir)
    entry = next((x for x in saved if x["id"] == ident), None)
    status = "saved before"
    if entry is None:
        checkpoint = last.get("checkpoint_path")
        if not checkpoint:
            return {
                "run_key": key,
                "status": "failed",
                "metrics": {},
                "logged": False,
                "error": "its last result names no checkpoint",
            }
        where = store.on_storage_of(str(checkpoint), sweep_dir)
        try:
            result = _evaluate_checkpoint(cfg, where, device)
        except Exception as err:  # one trial's damaged checkpoint must not stop the rest
            log.warning("%s: evaluation failed: %s", key, err)
            return {
                "run_key": key,
                "status": "failed",
                "metrics": {},
                "logged": False,
                "error": f"{type(err).__name__}: {err}",
            }
        entry = {
            "id": ident,
            "settings": {k: v for k, v in cfg.to_flat().items() if k.startswith("evaluation.")},
            "checkpoint": where,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "metrics": new_metrics(
                result, {**last, **evaluated_metrics(trial_dir)}, cfg.evaluation.fgsm_eps
            ),
            "logged": False,
        }
        saved.append(entry)
        write_evaluations(
            trial_dir, saved
        )  # saved before MLflow hears of it: nothing computed twice
        status = "evaluated"
    if tracking_uri and not entry["logged"] and entry["metrics"]:
        from rp_tune.adapters.mlflow.tracking import log_evaluation

        if log_evaluation(tracking_uri, sweep_dir, key, entry["metrics"], cfg.total_epochs):
            entry["logged"] = True
            write_evaluations(trial_dir, saved)
    return {
        "run_key": key,
        "status": status,
        "metrics": entry["metrics"],
        "logged": entry["logged"],
        "error": "",
    }


def _evaluate_checkpoint(cfg: Any, checkpoint: str, device: str | None) -> dict[str, Any]:
    from rp_tune.trial.train import evaluate_again

    if not store.is_uri(checkpoint):
        return evaluate_again(cfg, checkpoint, device)
    with tempfile.TemporaryDirectory(prefix="rp_tune-checkpoint-") as tmp:
        local = Path(tmp, "checkpoint")
        store.copy_to_local(checkpoint, local)
        return evaluate_again(cfg, local, device)
