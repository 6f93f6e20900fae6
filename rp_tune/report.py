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
from .config import NOT_HASHED
from .metrics import METRICS, is_metric
from .plan import is_finished, last_result, sort_values

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
        params_file = storage.join(trial, "params.json")
        if not storage.exists(params_file):
            continue
        entry = json.loads(storage.read_text(params_file))["trial"]
        last = last_result(trial)
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


AGGREGATE_FILE = "aggregate.csv"
_GROUP_ALWAYS = ("model.name", "scheme", "sparsity.density")
_NOT_GROUPED = ("seed", "sparsity.scheme", "sparsity.mode", "sparsity.growth")


def _aggregated_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The final metrics the aggregated table shows: the plotted ones, the best-validation
    test accuracy, every OoD AUROC, the achieved density; those some finished trial has."""
    names = [m.name for m in METRICS.values() if m.plotted]
    names += ["test_acc_best_val", "achieved_density"]
    names += sorted({k for r in rows for k in r if k.startswith("ood_auroc_")})
    return [n for n in names if any(isinstance(r.get(n), float) for r in rows)]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of the final metrics of the finished trials, one row per group.

    A group is one model, scheme (SET/RigL marked) and density, and one value of every other
    config key the sweep varies (a classifier density, a dataset, ...): trials that differ in
    anything but the seed are never averaged together.
    """
    finished = [r for r in rows if r.get("status") == "finished"]
    if not finished:
        return []
    config_keys = sorted({k for r in finished for k in r if "." in k})
    varying = [
        k for k in config_keys
        if k not in _NOT_GROUPED and k not in _GROUP_ALWAYS and k not in NOT_HASHED
        and len({repr(r.get(k)) for r in finished}) > 1
    ]  # fmt: skip
    metrics = _aggregated_metrics(finished)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in finished:
        scheme = "dense" if float(r["sparsity.density"]) == 1.0 else _line_label(r)
        key = (r["model.name"], scheme, float(r["sparsity.density"]),
               *(r.get(k) for k in varying))  # fmt: skip
        groups[key].append(r)
    out = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(("model.name", "scheme", "sparsity.density", *varying), key))
        row["seeds"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if isinstance(r.get(m), float)]
            if values:
                row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(values)
        out.append(row)
    order = {m: i for i, m in enumerate(sort_values({r["model.name"] for r in out}))}
    out.sort(key=lambda r: (order[r["model.name"]], r["scheme"] != "dense", r["scheme"],
                            -r["sparsity.density"], [repr(r.get(k)) for k in varying]))  # fmt: skip
    return out


def aggregate_table(agg: list[dict[str, Any]]) -> str:
    """The aggregated rows as text: mean ± std over the seeds for each metric."""
    if not agg:
        return "no finished trials yet"
    metrics = [k[: -len("_mean")] for k in agg[0] if k.endswith("_mean")]
    for r in agg[1:]:
        metrics += [k[: -len("_mean")] for k in r if k.endswith("_mean") and k[:-5] not in metrics]
    extra = [k for k in agg[0] if "." in k and k not in ("model.name", "sparsity.density")]
    head = f"{'model':<22} {'scheme':<14} {'density':>7} " + "".join(
        f"{k.split('.')[-1][:14]:>15}" for k in extra
    ) + f" {'seeds':>5} " + " ".join(f"{m:>{max(17, len(m))}}" for m in metrics)  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in agg:
        cells = []
        for m in metrics:  # one seed has no spread to show
            mean, std = r.get(f"{m}_mean"), r.get(f"{m}_std")
            spread = f" ± {std:.4f}" if r["seeds"] > 1 else ""
            cells.append("-" if mean is None else f"{mean:.4f}{spread}")
        lines.append(
            f"{r['model.name']:<22} {r['scheme']:<14} {r['sparsity.density']:>7g} "
            + "".join(f"{str(r.get(k))[:14]:>15}" for k in extra)
            + f" {r['seeds']:>5} "
            + " ".join(f"{c:>{max(17, len(m))}}" for c, m in zip(cells, metrics))
        )  # fmt: skip
    return "\n".join(lines)


def plot_metric(rows: list[dict[str, Any]], metric: str, label: str, path: Path) -> bool:
    """metric vs sparsity, a panel per model, a line per scheme, dense as a band."""
    data = grouped(rows, metric)
    if not data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sort_values(list(data))  # numeric order of depth and width, not text order
    schemes = sorted({s for m in data.values() for s in m if s != "dense"})
    markers = dict(zip(schemes, "osD^v<>pPX*h" * 4))
    fig, axes = plt.subplots(
        1, len(models), figsize=(max(6.5, 4.2 * len(models)), 3.8), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models):
        for scheme, points in sorted(data[model].items()):
            if scheme == "dense":
                m, s, n = points
                ax.axhspan(m - s, m + s, color="gray", alpha=0.25)
                ax.axhline(m, color="gray", linestyle="--", label=f"dense (n={n})")
                continue
            # schemes at one sparsity side by side, not on top of one another
            dodge = 0.006 * (schemes.index(scheme) - (len(schemes) - 1) / 2)
            xs = [1 - d + dodge for d, *_ in points]
            ax.errorbar(
                xs,
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                marker=markers[scheme],
                capsize=3,
                label=scheme,
            )
        ax.set_title(model)
        ax.set_xlabel("sparsity (1 - density)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    has_dense = any("dense" in m for m in data.values())
    fig.suptitle(
        f"{label} vs sparsity (mean ± std over seeds; "
        + ("gray line and band: dense mean ± std)" if has_dense else "no dense trial)"),
        fontsize=10,
    )
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
    agg = aggregate(rows)
    import pyarrow.csv as pacsv

    pacsv.write_csv(
        pa.Table.from_pylist(agg) if agg else pa.table({"model.name": pa.array([], pa.string())}),
        out / AGGREGATE_FILE,
    )
    if tracking_uri:
        from .tracking import log_report

        log_report(
            tracking_uri,
            storage.resolve(str(sweep_dir)),
            [
                str(out / TABLE_FILE),
                str(out / AGGREGATE_FILE),
                str(out / "matching_density.parquet"),
                *figures,
            ],  # fmt: skip
        )
    no_dense = sorted(
        {r["model.name"] for r in rows if r.get("status") == "finished"}
        - {m["model"] for m in matching}
    )
    return {
        "table": str(out / TABLE_FILE),
        "aggregate": str(out / AGGREGATE_FILE),
        "aggregated": agg,
        "figures": figures,
        "matching": matching,
        "no_dense": no_dense,
        "trials": len(rows),
        "finished": sum(r.get("status") == "finished" for r in rows),
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
    """The aggregated table (mean ± std over seeds), the smallest density matching dense per
    model and scheme (or why there is none), and the files written."""
    print(f"{rep['finished']} of {rep['trials']} trials finished; mean ± std over seeds:")
    print(aggregate_table(rep["aggregated"]))
    print()
    for m in rep["matching"]:
        found = m["smallest_matching_density"]
        print(
            f"{m['model']:<24} {m['scheme']:<14} smallest density matching dense "
            f"({m['dense_acc_mean']:.4f} - {m['dense_acc_std']:.4f}): "
            f"{'none of those run' if found is None else found}"
        )
    for model in rep["no_dense"]:
        print(
            f"{model:<24} matching density: none - this sweep has no finished dense trial of "
            "it (sparsity.density 1.0), the reference a sparse one must match"
        )
    print(f"table: {rep['table']}  aggregated: {rep['aggregate']}")
    for f in rep["figures"]:
        print(f"figure: {f}")


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
