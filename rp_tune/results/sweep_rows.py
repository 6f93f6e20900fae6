"""A sweep's trials as the report's rows: one dict per trial (flat config, status, last
metrics, cost) read from Tune's storage, from one sweep or every sweep under a results root,
with a dense reference borrowed from another sweep where this one has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from rp_tune.config import NOT_HASHED, trial_epochs
from rp_tune.core import storage
from rp_tune.core.layout import ARTIFACTS_DIR, GRAD_FLOW_FILE
from rp_tune.core.provenance import ENV_PREFIX
from rp_tune.methods import METHODS
from rp_tune.planning.plan import trial_cost
from rp_tune.planning.records import (
    TRIALS_FILE,
    all_results,
    evaluated_metrics,
    is_finished,
    read_params,
    stored_trials,
)
from rp_tune.results.grouping import (
    SEED_KEYS,
    as_sparse_recipe,
)
from rp_tune.trial.metrics import is_metric


def read_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per trial: flat config (tuples joined), run_key, status, last metrics.

    `sweep_dir` is a folder or a URI (s3://..., as given to --storage on a cluster).
    """
    sweep_dir = str(sweep_dir)
    if not storage.exists(sweep_dir):
        raise FileNotFoundError(f"no sweep at {sweep_dir}")
    rows = []
    # Tune's params.json names a trial's run key; its config is the sweep's entry (a sweep
    # of an older release, without trials.json, kept the config in params.json)
    flats = {e["run_key"]: e["flat"] for e in stored_trials(sweep_dir)}
    for name in storage.list_names(sweep_dir):
        trial = storage.join(sweep_dir, name)
        entry = read_params(trial)
        if (
            entry is None or "members" in entry
        ):  # a trial group's Tune trial: its members have their own rows
            continue
        flat = entry.get("flat") or flats.get(entry["run_key"])
        if flat is None:
            raise FileNotFoundError(
                f"{trial}: no config for trial {entry['run_key']} in {TRIALS_FILE} or params.json"
            )
        results = all_results(trial)
        last = results[-1] if results else {}
        epochs = trial_epochs(flat)
        row: dict[str, Any] = {
            "run_key": entry["run_key"],
            "status": "finished" if is_finished(last, epochs) else "unfinished",
        }
        for k, v in flat.items():
            row[k] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        for k, v in last.items():
            if is_metric(k) or k in ("epoch", "resumed_from_epoch"):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[k] = float(v)
        row.update(trial_cost(results, flat))
        for k, v in evaluated_metrics(trial).items():  # from --evaluate: never over its own
            row.setdefault(k, float(v))
        if last.get("checkpoint_path"):  # the newest checkpoint (the final one, if finished)
            row["checkpoint"] = storage.on_storage_of(str(last["checkpoint_path"]), sweep_dir)
        row.update({k: str(v) for k, v in last.items() if k.startswith(ENV_PREFIX)})
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no trials (no */params.json)")
    return rows


def grad_flow_curves(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """run key -> [(step, gradient norm), ...] of every finished trial whose final
    checkpoint holds a gradient flow (grad_flow.csv; evaluation.grad_flow_every > 0)."""
    out = {}
    for r in rows:
        if r.get("status") != "finished" or not r.get("checkpoint"):
            continue
        for where in (
            storage.join(r["checkpoint"], ARTIFACTS_DIR, GRAD_FLOW_FILE),
            storage.join(r["checkpoint"], GRAD_FLOW_FILE),  # releases before artifacts/
        ):
            if storage.exists(where):
                lines = storage.read_text(where).splitlines()[1:]
                points = [(int(a), float(b)) for a, b in (ln.split(",") for ln in lines if ln)]
                if points:
                    out[r["run_key"]] = points
                break
    return out


def imp_round_records(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """run key -> the round records (imp_rounds.csv of the final checkpoint: test accuracy,
    density, training FLOPs of each round) of every finished IMP trial."""
    import pyarrow.csv as pacsv

    out = {}
    for r in rows:
        row = METHODS.get(str(r.get("sparsity.mode")))
        if r.get("status") != "finished" or row is None or not row.round_records:
            continue
        where = storage.join(str(r.get("checkpoint", "")), ARTIFACTS_DIR, row.round_records)
        if r.get("checkpoint") and storage.exists(where):
            text = storage.read_text(where).encode()
            out[r["run_key"]] = pacsv.read_csv(pa.BufferReader(text)).to_pylist()
    return out


def sweeps_under(root: str) -> list[str]:
    """The sweeps under a results root (the folders that hold a trials.json), by name."""
    if not storage.exists(root):
        raise FileNotFoundError(f"no results root at {root}")
    return [
        storage.join(root, n)
        for n in sorted(storage.list_names(root))
        if storage.exists(storage.join(root, n, TRIALS_FILE))
    ]


def read_sweeps(sweep_dirs: list[str]) -> list[dict[str, Any]]:
    """The trials of several sweeps as one table, each row naming its sweep; a trial two
    sweeps hold (one reused it from the other) is one row, naming the first, and `sweeps`
    every sweep that holds it (comma-separated: what each sweep's own reading takes)."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for d in sweep_dirs:
        name = storage.basename(d)
        for r in read_trials(d):
            if r["run_key"] in seen:
                seen[r["run_key"]]["sweeps"] += f",{name}"
                continue
            seen[r["run_key"]] = {**r, "sweep": name, "sweeps": name}
            rows.append(seen[r["run_key"]])
    return rows


def context_identity(row: Mapping[str, Any]) -> str:
    """A trial's model, data and recipe: its config less the sparsity keys, the seeds and
    where it ran (a dense reference on its own recipe read as its sparse recipe)."""
    g = as_sparse_recipe(row)
    keep = {
        k: g[k]
        for k in sorted(g)
        if "." in k and not k.startswith("sparsity.") and k not in SEED_KEYS and k not in NOT_HASHED
    }
    return repr(keep)


def borrow_dense(
    rows: list[dict[str, Any]], root: str, own: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A sweep without a finished dense trial of some model, data and recipe takes that
    dense reference from another sweep under the same results root. Returns (the rows with
    what was borrowed, the borrowed rows); nothing when every panel has its dense."""
    done = [r for r in rows if r.get("status") == "finished"]
    have = {context_identity(r) for r in done if float(r["sparsity.density"]) == 1.0}
    want = {context_identity(r) for r in done} - have
    if not want or storage.is_uri(root) and not storage.exists(root):
        return rows, []
    borrowed, keys = [], {r["run_key"] for r in rows}
    for other in sweeps_under(root):
        if storage.basename(other) == own:
            continue
        for r in read_trials(other):
            if (
                r.get("status") == "finished"
                and float(r["sparsity.density"]) == 1.0
                and r["run_key"] not in keys
                and context_identity(r) in want
            ):
                borrowed.append({**r, "sweep": storage.basename(other)})
                keys.add(r["run_key"])
    return rows + borrowed, borrowed
