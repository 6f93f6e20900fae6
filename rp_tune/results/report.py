"""Results table and the papers' figures from a finished (or partial) sweep.

    python -m rp_tune.report results/width_scan        # or: run_sweep.py --space X --report

Reads Tune's storage (every trial's `params.json` and `result.json`), writes one Parquet
table (one row per trial: flat config, status, final metrics, cost: seconds of training,
evaluation, retries and wall-clock, device-hours), and draws, per
metric, test value vs sparsity: one panel per model, one line per scheme (mean +- std over
seeds), dense as a band (mean +- std). Also the smallest density per model and scheme whose
mean test accuracy is within one (dense) std of dense. PNGs are logged to the sweep's MLflow
parent run when a tracking URI is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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
    has_trials,
    is_finished,
    read_params,
)
from rp_tune.results.figures import (
    FIGURES,
    PLOTS,
    draw_all,
    figure_files,
    imp_summary,
    sparse_to_sparse,
)
from rp_tune.results.grouping import (
    SEED_KEYS,
    as_sparse_recipe,
    by_panel,
    dense_of,
    finished,
    groups,
    lines_of,
    panel_title,
)
from rp_tune.results.paper_numbers import beside_the_paper, comparison_table
from rp_tune.trial.metrics import METRICS, is_metric

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
        entry = read_params(trial)
        if (
            entry is None or "members" in entry
        ):  # a trial group's Tune trial: its members have their own rows
            continue
        results = all_results(trial)
        last = results[-1] if results else {}
        epochs = trial_epochs(entry["flat"])
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
        row.update(trial_cost(results, entry["flat"]))
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
    sweeps hold (one reused it from the other) is one row."""
    rows, seen = [], set()
    for d in sweep_dirs:
        for r in read_trials(d):
            if r["run_key"] not in seen:
                seen.add(r["run_key"])
                rows.append({**r, "sweep": storage.basename(d)})
    return rows


def _context_identity(row: dict[str, Any]) -> str:
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
    have = {_context_identity(r) for r in done if float(r["sparsity.density"]) == 1.0}
    want = {_context_identity(r) for r in done} - have
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
                and _context_identity(r) in want
            ):
                borrowed.append({**r, "sweep": storage.basename(other)})
                keys.add(r["run_key"])
    return rows + borrowed, borrowed


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
    is >= the dense mean - its std; panels without a finished dense group are left out."""
    all_groups = groups(rows)
    out = []
    for panel, members in by_panel(all_groups).items():
        dense = dense_of(members)
        if dense is None or dense.stat("test_acc") is None:
            continue
        d_mean, d_std, d_n = dense.stat("test_acc")
        lines = lines_of(
            members, lambda g: g.series, keep=lambda g: not g.dense and g.stat("test_acc")
        )
        for series, points in lines.items():
            ok = [g.density for g in points if g.stat("test_acc")[0] >= d_mean - d_std]
            out.append(
                {
                    "model": panel[0],
                    **dict(panel[1]),
                    "scheme": series[0],
                    **dict(series[1]),
                    "smallest_matching_density": min(ok) if ok else None,
                    "dense_acc_mean": d_mean,
                    "dense_acc_std": d_std,
                    "dense_n": d_n,
                }
            )
    return out


AGGREGATE_FILE = "aggregate.csv"
PAPER_FILE = "paper_comparison.csv"  # ours beside the papers' numbers
IMP_TABLE_FILE = "imp_rounds.parquet"  # IMP sweeps: one row per trial and round
S2S_FILE = "sparse_to_sparse.csv"  # IMP/SLT/GraNet: dense vs random starts per final density


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


def build_report(
    sweep_dir: str | Path | list[str],
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    space: str | None = None,
) -> dict[str, Any]:
    """Write the Parquet table, the figures and the matching-density table; returns paths.
    With the sweep's `space`, also which drawn files show each paper figure it serves.

    `sweep_dir`: one sweep (its dense references borrowed from the other sweeps under its
    results root where it has none), several (their trials as one table), or a results root
    (every sweep under it)."""
    rows, borrowed, out = _rows_and_out(sweep_dir, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(results_table(rows), out / TABLE_FILE)
    rounds = imp_round_records(rows)
    drawn = draw_all(rows, _plotted_metrics(rows), out, grad_flow_curves(rows), rounds)
    figures = [str(out / name) for name in drawn]
    paper = {}
    if space is not None:
        from search_spaces import load_space

        for ref in getattr(load_space(space), "FIGURES", ()):
            paper[ref] = [str(out / name) for name in figure_files(ref, drawn)]
    tables = _write_tables(rows, rounds, out)
    if tracking_uri:
        from rp_tune.adapters.mlflow.tracking import log_report

        files = [tables[k] for k in ("table", "aggregate", "paper_table", "matching_table")]
        extra = [tables[k] for k in ("imp_rounds", "sparse_to_sparse_table") if tables[k]]
        log_report(tracking_uri, storage.resolve(str(sweep_dir)), [*files, *extra, *figures])
    no_dense = [
        panel_title(panel)
        for panel, members in by_panel(groups(rows)).items()
        if dense_of(members) is None
    ]
    return {
        **tables,
        "figures": figures,
        "drawn": drawn,
        "paper_figures": paper,
        "borrowed": borrowed,
        "imp_summary": imp_summary(rows, rounds),
        "no_dense": no_dense,
        "trials": len(rows),
        "finished": sum(r.get("status") == "finished" for r in rows),
    }


def _rows_and_out(
    sweep_dir: str | Path | list[str], out_dir: str | Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """The trials' rows, the dense references borrowed for them, and the report's folder:
    one sweep, several, or every sweep under a results root."""
    dirs = [str(d) for d in sweep_dir] if isinstance(sweep_dir, (list, tuple)) else None
    if dirs is None and not storage.exists(storage.join(str(sweep_dir), TRIALS_FILE)):
        if storage.exists(str(sweep_dir)) and not has_trials(str(sweep_dir)):
            dirs = sweeps_under(str(sweep_dir))  # a results root
    if dirs is None:
        rows = read_trials(sweep_dir)
        parent = storage.parent(str(sweep_dir))
        rows, borrowed = borrow_dense(rows, parent, storage.basename(str(sweep_dir)))
        return rows, borrowed, Path(out_dir) if out_dir else default_out_dir(str(sweep_dir))
    if not dirs:
        raise FileNotFoundError(f"{sweep_dir}: no sweeps (no */trials.json)")
    if out_dir:
        out = Path(out_dir)
    else:
        both = storage.join(storage.parent(dirs[0]), "report-all")
        out = default_out_dir(dirs[0] if len(dirs) == 1 else both)
    return read_sweeps(dirs), [], out


def _plotted_metrics(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Metric -> label of every plotted metric, each OoD set and FGSM eps the rows hold."""
    metrics = {m.name: m.label for m in METRICS.values() if m.plotted}
    for k in sorted({k for r in rows for k in r if k.startswith("ood_auroc_")}):
        metrics[k] = f"{METRICS['ood_auroc_'].label} vs {k[len('ood_auroc_') :]}"
    for k in sorted({k for r in rows for k in r if k.startswith("fgsm_acc_eps")}):
        metrics[k] = f"FGSM accuracy (eps {k[len('fgsm_acc_eps') :]})"
    return metrics


def _write_tables(
    rows: list[dict[str, Any]], rounds: dict[str, list[dict[str, Any]]], out: Path
) -> dict[str, Any]:
    """The aggregate (mean ± std over seeds), the papers' numbers beside ours, the matching
    density, and where the rows hold them IMP's rounds and the sparse-to-sparse comparison;
    their paths and contents as the report's entries."""
    import pyarrow.csv as pacsv

    if rounds:
        pq.write_table(imp_rounds_table(rows, rounds), out / IMP_TABLE_FILE)
    starts = sparse_to_sparse(rows)
    if starts:
        pacsv.write_csv(rows_table(starts), out / S2S_FILE)
    matching = smallest_matching_density(rows)
    matching_file = out / "matching_density.parquet"
    pq.write_table(rows_table(matching) if matching else pa.table({}), matching_file)
    agg = aggregate(rows)
    empty = pa.table({"model.name": pa.array([], pa.string())})
    pacsv.write_csv(rows_table(agg) if agg else empty, out / AGGREGATE_FILE)
    paper_rows = beside_the_paper(rows)
    no_paper = pa.table({"source": pa.array([], pa.string())})
    pacsv.write_csv(rows_table(paper_rows) if paper_rows else no_paper, out / PAPER_FILE)
    return {
        "table": str(out / TABLE_FILE),
        "aggregate": str(out / AGGREGATE_FILE),
        "aggregated": agg,
        "paper_numbers": paper_rows,
        "paper_table": str(out / PAPER_FILE),
        "imp_rounds": str(out / IMP_TABLE_FILE) if rounds else None,
        "sparse_to_sparse": starts,
        "sparse_to_sparse_table": str(out / S2S_FILE) if starts else None,
        "matching": matching,
        "matching_table": str(matching_file),
    }


def default_out_dir(sweep_dir: str) -> Path:
    """<sweep_dir>/report for a local sweep; ./<sweep name>-report for one on s3:// etc."""
    if storage.is_uri(sweep_dir):
        return Path(f"{storage.basename(sweep_dir)}-report")
    return Path(sweep_dir) / "report"


def print_report(rep: dict[str, Any]) -> None:
    """The aggregated table (mean ± std over seeds), the smallest density matching dense per
    model and scheme (or why there is none), and the files written."""
    print(f"{rep['finished']} of {rep['trials']} trials finished; mean ± std (n) over seeds:")
    print(aggregate_table(rep["aggregated"]))
    print()
    for m in rep["matching"]:
        found = m["smallest_matching_density"]
        where = ", ".join(
            [m["model"], *(f"{k.split('.')[-1]}={v}" for k, v in m.items() if "." in k)]
        )
        print(
            f"{where:<24} {m['scheme']:<14} smallest density matching dense "
            f"({m['dense_acc_mean']:.4f} - {m['dense_acc_std']:.4f}, n={m['dense_n']}): "
            f"{'none of those run' if found is None else found}"
        )
    for r in rep.get("borrowed", []):
        print(f"dense reference {r['run_key']} borrowed from the sweep {r['sweep']}")
    for panel in rep["no_dense"]:
        print(
            f"{panel:<24} matching density: none - no finished dense trial (sparsity.density "
            "1.0) of this model, data and recipe, the reference a sparse one must match"
        )
    if rep.get("imp_summary"):
        print("\niterative magnitude pruning, round by round (mean ± std (n) over seeds):")
        print(
            f"{'model':<22} {'start':<10} {'from':>6} {'density':>8} {'test acc':>18} "
            f"{'train FLOPs so far':>19}"
        )
        for r in rep["imp_summary"]:
            acc = f"{r['test_acc_mean']:.4f} ± {r['test_acc_std']:.4f} ({r['n']})"
            flops = r["cumulative_train_flops_mean"]
            print(
                f"{r['model.name']:<22} {r['start']:<10} {r['start_density']:>6g} "
                f"{r['density']:>8.4f} {acc:>18} {flops:>19.3g}"
            )
        print()
    if rep.get("sparse_to_sparse"):
        print(sparse_to_sparse_table(rep["sparse_to_sparse"]))
        print()
    if rep.get("paper_numbers"):
        print("\nours beside the papers' numbers (test accuracy, %):")
        print(comparison_table(rep["paper_numbers"]))
        print()
    print(f"table: {rep['table']}  aggregated: {rep['aggregate']}")
    if rep.get("imp_rounds"):
        print(f"IMP rounds: {rep['imp_rounds']}")
    if rep.get("sparse_to_sparse_table"):
        print(f"dense vs random starts: {rep['sparse_to_sparse_table']}")
    for f in rep["figures"]:
        print(f"figure: {f}")
    for ref, files in rep.get("paper_figures", {}).items():
        plot = FIGURES[ref].plot
        why = f"the finished trials do not fit it ({PLOTS[plot].shows})" if plot else "no plot"
        print(f"{ref}: {', '.join(Path(f).name for f in files) or f'not drawn - {why}'}")


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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m rp_tune.report", description=__doc__.split("\n")[0])
    p.add_argument(
        "sweep_dir",
        nargs="+",
        help="a sweep's folder or URI (results/width_scan, s3://b/r/width_scan), several "
        "(one table of their trials), or a results root (every sweep under it)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="default: <sweep_dir>/report, or ./<name>-report for a sweep on s3:// etc.",
    )
    p.add_argument("--tracking-uri", default=None, help="log the figures to the parent run")
    p.add_argument("--space", default=None, help="the sweep's space: name its paper figures")
    args = p.parse_args(argv)
    try:
        dirs = args.sweep_dir[0] if len(args.sweep_dir) == 1 else args.sweep_dir
        rep = build_report(dirs, args.out, args.tracking_uri, args.space)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
