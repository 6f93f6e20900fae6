"""Results table and the papers' figures from a finished (or partial) sweep.

    python -m rp_tune.report results/width_scan        # or: run_sweep.py --space X --report

Reads Tune's storage (every trial's `params.json` and `result.json`), writes one Parquet
table (one row per trial: flat config, status, final metrics, cost: seconds of training,
evaluation, retries and wall-clock, device-hours), and draws, per
metric, test value vs sparsity: one panel per model, one line per scheme (mean +- std over
seeds), dense as a band (mean +- std). Also the smallest density per model and scheme whose
mean test accuracy is within one (dense) std of dense, as a bracket per group (a grid's
spacing, or a matching-density search's resolution), and the phase diagram of where each
network matches (`rp_tune.results.matching`). Tables and PNGs are logged to the sweep's
MLflow parent run when a tracking URI is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rp_tune.core import storage
from rp_tune.planning.matching import SearchSettings
from rp_tune.planning.matching_plan import read_search
from rp_tune.planning.records import (
    TRIALS_FILE,
    has_trials,
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
    by_panel,
    dense_of,
    groups,
    panel_title,
)
from rp_tune.results.matching import (
    BRACKETS_FILE,
    PHASE_FILE,
    brackets_table,
    matching_brackets,
    phase_points,
    plot_matching_phase,
)
from rp_tune.results.paper_numbers import beside_the_paper, comparison_table
from rp_tune.results.sweep_rows import (
    borrow_dense,
    grad_flow_curves,
    imp_round_records,
    read_sweeps,
    read_trials,
    sweeps_under,
)
from rp_tune.results.tables import (
    aggregate,
    aggregate_table,
    imp_rounds_table,
    results_table,
    rows_table,
    sparse_to_sparse_table,
)
from rp_tune.trial.metrics import METRICS

TABLE_FILE = "results.parquet"


AGGREGATE_FILE = "aggregate.csv"
PAPER_FILE = "paper_comparison.csv"  # ours beside the papers' numbers
IMP_TABLE_FILE = "imp_rounds.parquet"  # IMP sweeps: one row per trial and round
S2S_FILE = "sparse_to_sparse.csv"  # IMP/SLT/GraNet: dense vs random starts per final density


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
    rows, borrowed, out, searches = _rows_and_out(sweep_dir, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(results_table(rows), out / TABLE_FILE)
    rounds = imp_round_records(rows)
    drawn = draw_all(rows, _plotted_metrics(rows), out, grad_flow_curves(rows), rounds)
    brackets = matching_brackets(rows, searches)  # the table's and the figure's, once
    phase = plot_matching_phase(brackets, out / PHASE_FILE)
    if phase:
        drawn[PHASE_FILE] = phase
    figures = [str(out / name) for name in drawn]
    paper = {}
    if space is not None:
        from search_spaces import load_space

        for ref in getattr(load_space(space), "FIGURES", ()):
            paper[ref] = [str(out / name) for name in figure_files(ref, drawn)]
    tables = _write_tables(rows, rounds, out, brackets)
    if tracking_uri:
        from rp_tune.adapters.mlflow.tracking import log_report

        names = ("table", "aggregate", "paper_table", "matching_table", "brackets_table")
        files = [tables[k] for k in names]
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


def _search_of(sweep_dir: str) -> SearchSettings | None:
    """A matching-density search's settings (from its search/search.json), None for a grid."""
    stored = read_search(sweep_dir)
    return None if stored is None else SearchSettings(**stored["settings"])


def _rows_and_out(
    sweep_dir: str | Path | list[str], out_dir: str | Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path, dict[str | None, Any]]:
    """The trials' rows, the dense references borrowed for them, the report's folder and
    each sweep's search settings (None: a grid; keyed by the rows' `sweep`): one sweep,
    several, or every sweep under a results root."""
    dirs = [str(d) for d in sweep_dir] if isinstance(sweep_dir, (list, tuple)) else None
    if dirs is None and not storage.exists(storage.join(str(sweep_dir), TRIALS_FILE)):
        if storage.exists(str(sweep_dir)) and not has_trials(str(sweep_dir)):
            dirs = sweeps_under(str(sweep_dir))  # a results root
    if dirs is None:
        rows = read_trials(sweep_dir)
        parent = storage.parent(str(sweep_dir))
        rows, borrowed = borrow_dense(rows, parent, storage.basename(str(sweep_dir)))
        out = Path(out_dir) if out_dir else default_out_dir(str(sweep_dir))
        return rows, borrowed, out, {None: _search_of(str(sweep_dir))}
    if not dirs:
        raise FileNotFoundError(f"{sweep_dir}: no sweeps (no */trials.json)")
    if out_dir:
        out = Path(out_dir)
    else:
        both = storage.join(storage.parent(dirs[0]), "report-all")
        out = default_out_dir(dirs[0] if len(dirs) == 1 else both)
    return read_sweeps(dirs), [], out, {storage.basename(d): _search_of(d) for d in dirs}


def _plotted_metrics(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Metric -> label of every plotted metric, each OoD set and FGSM eps the rows hold."""
    metrics = {m.name: m.label for m in METRICS.values() if m.plotted}
    for k in sorted({k for r in rows for k in r if k.startswith("ood_auroc_")}):
        metrics[k] = f"{METRICS['ood_auroc_'].label} vs {k[len('ood_auroc_') :]}"
    for k in sorted({k for r in rows for k in r if k.startswith("fgsm_acc_eps")}):
        metrics[k] = f"FGSM accuracy (eps {k[len('fgsm_acc_eps') :]})"
    return metrics


def _write_tables(
    rows: list[dict[str, Any]],
    rounds: dict[str, list[dict[str, Any]]],
    out: Path,
    brackets: list[dict[str, Any]],
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
    matching = brackets  # the smallest matching density is each bracket's hi
    matching_file = out / "matching_density.parquet"
    pq.write_table(rows_table(matching) if matching else pa.table({}), matching_file)
    no_brackets = pa.table({"model": pa.array([], pa.string())})
    pacsv.write_csv(rows_table(brackets) if brackets else no_brackets, out / BRACKETS_FILE)
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
        "brackets": brackets,
        "brackets_table": str(out / BRACKETS_FILE),
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
    if rep["brackets"]:
        print("where each group matches dense:")
        print(brackets_table(rep["brackets"]))
        axis, _, left = phase_points(rep["brackets"])
        if left:
            print(f"phase diagram (x: {axis}) leaves out, having no {axis}: {', '.join(left)}")
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
    print(f"matching brackets: {rep['brackets_table']}")
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
