"""The report's tables: one row per trial (Parquet), mean ± std over seeds per group, the
smallest density matching dense, IMP's rounds, sparse-to-sparse starts side by side.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rp_tune.results.grouping import (
    SEED_KEYS,
    finished,
    groups,
)
from rp_tune.trial.metrics import METRICS


def imp_rounds_table(
    rows: list[dict[str, Any]], rounds: dict[str, list[dict[str, Any]]]
) -> pa.Table:
    """One row per IMP trial and round: the trial's run key, model, start, target and
    seeds beside the round's record."""
    keys = (
        "model.name",
        "sparsity.scheme",
        "sparsity.start_density",
        "sparsity.density",
        "sparsity.prune_fraction",
        "sparsity.prune_scope",
        "sparsity.rewind_epoch",
        *SEED_KEYS,
    )
    out = [
        {"run_key": r["run_key"], **{k: r.get(k) for k in keys}, **rec}
        for r in rows
        for rec in rounds.get(r["run_key"], [])
    ]
    return results_table(out) if out else pa.table({"run_key": pa.array([], pa.string())})


def rows_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pa.Table:
    """Rows as a table whose columns are the union of their keys (in first-seen order, or
    `columns`), missing values null (`pa.Table.from_pylist` keeps only the first row's
    keys: a metric the first group lacks would vanish from every row)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({c: [r.get(c) for r in rows] for c in columns})


def results_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with the union of columns (missing values null), run_key and status first."""
    columns = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("run_key", "status"), k)
    )
    return rows_table(rows, columns)


def smallest_matching_density(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per panel (model and context) and line, the smallest density whose mean test accuracy
    matches dense (`matching.matches`: >= the dense mean - its std), with its bracket
    (`rp_tune.results.matching.matching_brackets`); panels without a finished dense group
    are left out."""
    from rp_tune.results.matching import matching_brackets

    return matching_brackets(rows)


def _aggregated_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The final metrics the aggregated table shows: the plotted ones, the best-validation
    test accuracy, every OoD AUROC, the achieved density; those some finished trial has."""
    names = [m.name for m in METRICS.values() if m.plotted]
    names += ["test_acc_best_val", "achieved_density"]
    names += sorted({k for r in rows for k in r if k.startswith(("ood_auroc_", "fgsm_acc_eps"))})
    return [n for n in names if any(isinstance(r.get(n), float) for r in rows)]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std and n over seeds of the final metrics, one row per group (see
    `rp_tune.results.grouping`): trials that differ in anything but the seed are never averaged."""
    all_groups = groups(rows)
    metrics = _aggregated_metrics(finished(rows))
    extra = sorted(
        {k for g in all_groups for k in g.keys()} - {"model.name", "scheme", "sparsity.density"}
    )
    out = []
    for g in all_groups:
        keys = g.keys()
        row: dict[str, Any] = {
            "model.name": g.model,
            "scheme": g.label,
            "sparsity.density": g.density,
            **{k: keys.get(k) for k in extra},
            "n": g.n,
        }
        for m in metrics:
            stat = g.stat(m)
            if stat:
                row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = stat
        out.append(row)
    return out


def aggregate_table(agg: list[dict[str, Any]]) -> str:
    """The aggregated rows as text: mean ± std (n) over the seeds for each metric; n once per
    row where every metric has all of the group's trials."""
    if not agg:
        return "no finished trials yet"
    metrics = [k[: -len("_mean")] for k in agg[0] if k.endswith("_mean")]
    for r in agg[1:]:
        metrics += [k[: -len("_mean")] for k in r if k.endswith("_mean") and k[:-5] not in metrics]
    extra = [k for k in agg[0] if "." in k and k not in ("model.name", "sparsity.density")]
    head = (
        f"{'model':<22} {'scheme':<14} {'density':>7} "
        + "".join(f"{k.split('.')[-1][:14]:>15}" for k in extra)
        + f" {'n':>3} "
        + " ".join(f"{m:>{max(17, len(m))}}" for m in metrics)
    )
    lines = [head, "-" * len(head)]
    for r in agg:
        cells = []
        for m in metrics:  # one seed has no spread to show
            mean, std, n = r.get(f"{m}_mean"), r.get(f"{m}_std"), r.get(f"{m}_n")
            spread = f" ± {std:.4f}" if (n or 0) > 1 else ""
            fewer = f" ({n})" if n is not None and n != r["n"] else ""
            cells.append("-" if mean is None else f"{mean:.4f}{spread}{fewer}")
        lines.append(
            f"{r['model.name']:<22} {r['scheme']:<14} {r['sparsity.density']:>7g} "
            + "".join(f"{_cell(r.get(k)):>15}" for k in extra)
            + f" {r['n']:>3} "
            + " ".join(f"{c:>{max(17, len(m))}}" for c, m in zip(cells, metrics))
        )
    return "\n".join(lines)


def _cell(v: Any) -> str:
    return "-" if v is None else str(v)[:14]


def _acc(row: dict[str, Any], metric: str) -> str:
    if f"{metric}_mean" not in row:
        return "-"
    return f"{row[f'{metric}_mean']:.4f} ± {row[f'{metric}_std']:.4f} ({row[f'{metric}_n']})"


def sparse_to_sparse_table(starts: list[dict[str, Any]]) -> str:
    """`figures.sparse_to_sparse` as text: per model, context, method and final density, a
    line per start; accuracy as mean ± std (n) over seeds, training FLOPs as the mean and
    its ratio to the dense start's."""
    lines = [
        "sparse to sparse: each method from a dense start and from random sources "
        "(mean ± std (n) over seeds):",
        f"{'model':<22} {'method':<7} {'density':>8} {'start':<16} {'test acc':>21} "
        f"{'best-val test acc':>21} {'train FLOPs':>12} {'x dense':>8}",
    ]
    for r in starts:
        where = r["model.name"]
        extra = [f"{k.split('.')[-1]}={r[k]}" for k in r if "." in k and k != "model.name"]
        if extra:
            where = f"{where} ({', '.join(extra)})"

        flops = f"{r['train_flops_sparse_mean']:.3g}" if "train_flops_sparse_mean" in r else "-"
        ratio = r.get("train_flops_vs_dense_start")
        lines.append(
            f"{where:<22} {r['method']:<7} {r['density']:>8.4g} {r['start']:<16} "
            f"{_acc(r, 'test_acc'):>21} {_acc(r, 'test_acc_best_val'):>21} {flops:>12} "
            f"{'-' if ratio is None else f'{ratio:.3f}':>8}"
        )
    return "\n".join(lines)
