"""Results table and the papers' figures from a finished (or partial) sweep.

    python -m rp_tune.report results/width_scan        # or: run_sweep.py --space X --report

Reads Tune's storage (every trial's `params.json` and last `result.json` line), writes one
Parquet table (one row per trial: flat config, status, final metrics, cost), and draws, per
metric, test value vs sparsity: one panel per model, one line per scheme (mean +- std over
seeds), dense as a band (mean +- std). Also the smallest density per model and scheme whose
mean test accuracy is within one (dense) std of dense. PNGs are logged to the sweep's MLflow
parent run when a tracking URI is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .metrics import METRICS, is_metric
from .plan import is_finished

log = logging.getLogger(__name__)

TABLE_FILE = "results.parquet"


def read_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per trial: flat config (tuples joined), run_key, status, last metrics.

    `sweep_dir` is a folder or a URI (s3://..., as given to --storage on a cluster).
    """
    sweep_dir = str(sweep_dir)
    if not storage.exists(sweep_dir):
        raise FileNotFoundError(f"no sweep at {sweep_dir}")
    rows = []
    for name in storage.list_names(sweep_dir):
        trial = storage.join(sweep_dir, name)
        params_file, result_file = (storage.join(trial, f) for f in ("params.json", "result.json"))
        if not storage.exists(params_file):
            continue
        params = json.loads(storage.read_text(params_file))
        entry = params["trial"]
        lines = []
        if storage.exists(result_file):
            lines = [ln for ln in storage.read_text(result_file).splitlines() if ln.strip()]
        last = json.loads(lines[-1]) if lines else {}
        epochs = int(entry["flat"]["train.epochs"])
        row: dict[str, Any] = {
            "run_key": entry["run_key"],
            "status": "finished" if is_finished(last, epochs) else "unfinished",
        }
        for k, v in entry["flat"].items():
            row[k] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        for k, v in last.items():
            if is_metric(k) or k in ("epoch", "resumed_from_epoch"):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[k] = float(v)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no trials (no */params.json)")
    return rows


def results_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with the union of columns (missing values null)."""
    columns = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("run_key", "status"), k)
    )
    return pa.table({c: [r.get(c) for r in rows] for c in columns})


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def grouped(rows: list[dict[str, Any]], metric: str):
    """{model: {"dense": (mean, std, n), scheme: [(density, mean, std, n), ...]}}."""
    acc: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        if r.get("status") != "finished" or not isinstance(r.get(metric), float):
            continue
        d = float(r["sparsity.density"])
        scheme = "dense" if d == 1.0 else _line_label(r)
        acc[r["model.name"]][scheme][d].append(r[metric])
    out: dict[str, dict[str, Any]] = {}
    for model, schemes in acc.items():
        out[model] = {}
        for scheme, by_d in schemes.items():
            points = [(d, *_mean_std(v), len(v)) for d, v in sorted(by_d.items())]
            out[model][scheme] = points[0][1:] if scheme == "dense" else points
    return out


def _line_label(row: dict[str, Any]) -> str:
    """The scheme, plus SET/RigL for dynamic sparse training from that scheme's masks."""
    if row.get("sparsity.mode") == "dynamic":
        return f"{row['sparsity.scheme']}+{'set' if row['sparsity.growth'] == 'random' else 'rigl'}"
    return row["sparsity.scheme"]


def smallest_matching_density(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and scheme, the smallest density whose mean test accuracy >= dense - std."""
    out = []
    for model, schemes in grouped(rows, "test_acc").items():
        if "dense" not in schemes:
            continue
        d_mean, d_std, _ = schemes["dense"]
        for scheme, points in schemes.items():
            if scheme == "dense":
                continue
            ok = [d for d, m, _, _ in points if m >= d_mean - d_std]
            out.append(
                {
                    "model": model,
                    "scheme": scheme,
                    "smallest_matching_density": min(ok) if ok else None,
                    "dense_acc_mean": d_mean,
                    "dense_acc_std": d_std,
                }
            )
    return out


def plot_metric(rows: list[dict[str, Any]], metric: str, label: str, path: Path) -> bool:
    """metric vs sparsity, a panel per model, a line per scheme, dense as a band."""
    data = grouped(rows, metric)
    if not data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(data)
    fig, axes = plt.subplots(
        1, len(models), figsize=(max(6.5, 4.2 * len(models)), 3.8), squeeze=False
    )
    for ax, model in zip(axes[0], models):
        for scheme, points in sorted(data[model].items()):
            if scheme == "dense":
                m, s, n = points
                ax.axhspan(m - s, m + s, color="gray", alpha=0.25)
                ax.axhline(m, color="gray", linestyle="--", label=f"dense (n={n})")
                continue
            xs = [1 - d for d, *_ in points]
            ax.errorbar(
                xs,
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                marker="o",
                capsize=3,
                label=scheme,
            )
        ax.set_title(model)
        ax.set_xlabel("sparsity (1 - density)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{label} vs sparsity (mean ± std over seeds; gray: dense)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def build_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Write the Parquet table, the figures and the matching-density table; returns paths."""
    rows = read_trials(sweep_dir)
    out = Path(out_dir) if out_dir else default_out_dir(str(sweep_dir))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(results_table(rows), out / TABLE_FILE)
    metrics = {m.name: m.label for m in METRICS.values() if m.plotted}
    for k in sorted({k for r in rows for k in r if k.startswith("ood_auroc_")}):
        metrics[k] = f"{METRICS['ood_auroc_'].label} vs {k[len('ood_auroc_') :]}"
    figures = []
    for metric, label in metrics.items():
        path = out / f"{metric}_vs_sparsity.png"
        if plot_metric(rows, metric, label, path):
            figures.append(str(path))
    matching = smallest_matching_density(rows)
    pq.write_table(
        pa.Table.from_pylist(matching) if matching else pa.table({}),
        out / "matching_density.parquet",
    )
    if tracking_uri:
        from .tracking import log_report

        log_report(
            tracking_uri,
            storage.resolve(str(sweep_dir)),
            [str(out / TABLE_FILE), str(out / "matching_density.parquet"), *figures],
        )
    return {
        "table": str(out / TABLE_FILE),
        "figures": figures,
        "matching": matching,
        "trials": len(rows),
    }


def default_out_dir(sweep_dir: str) -> Path:
    """<sweep_dir>/report for a local sweep; ./<sweep name>-report for one on s3:// etc."""
    if storage.is_uri(sweep_dir):
        return Path(f"{storage.basename(sweep_dir)}-report")
    return Path(sweep_dir) / "report"


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One trial's loss and accuracy per epoch (training, and validation where there is a
    validation split), and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        val = [(h["epoch"], h[f"val_{key}"]) for h in history if f"val_{key}" in h]
        if val:
            ax.plot(*zip(*val), "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    axes[2].plot(epochs, [h["lr"] for h in history], "o-")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_report(rep: dict[str, Any]) -> None:
    """What build_report wrote, and the smallest density matching dense per model/scheme."""
    print(f"{rep['trials']} trials -> {rep['table']}")
    for f in rep["figures"]:
        print(f"figure: {f}")
    for m in rep["matching"]:
        print(
            f"{m['model']:<24} {m['scheme']:<14} smallest density matching dense: "
            f"{m['smallest_matching_density']}"
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m rp_tune.report", description=__doc__.split("\n")[0])
    p.add_argument(
        "sweep_dir", help="a sweep's folder or URI, e.g. results/width_scan, s3://b/r/width_scan"
    )
    p.add_argument(
        "--out",
        default=None,
        help="default: <sweep_dir>/report, or ./<name>-report for a sweep on s3:// etc.",
    )
    p.add_argument("--tracking-uri", default=None, help="log the figures to the parent run")
    args = p.parse_args(argv)
    try:
        rep = build_report(args.sweep_dir, args.out, args.tracking_uri)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
