"""The report's figures: one kind of plot per kind of figure in Liu et al. (ICLR 2022).

Every plot draws groups (`rp_tune.results.grouping`: trials that differ only in their seed) as mean
± std over seeds with n in the legend, and returns what it drew, read back from the axes
(`describe_figure`), so that tests check the drawing and not only that a file exists.

- sparsity: metric vs sparsity (1 - density), a panel per model and context, a line per
  scheme, dense as a band: Figs. 1-2 (depth, width), their CIFAR-100 / VGG / metric
  variants, App. C;
- params, flops: metric vs kept parameters or inference FLOPs (log x), every model on one
  axis, a line per model and scheme, dense models as points: Fig. 5, Fig. 14 right;
- width: metric vs width multiplier (width / 16), a panel per depth, a line per scheme and
  density: Fig. 7;
- classifier: metric vs the classifier's sparsity, a line per scheme and density: Fig. 14
  left;
- grad_flow: gradient norm vs training iteration, a line per scheme and density: Fig. 6.
- imp_rounds: iterative magnitude pruning, round by round: test accuracy vs density beside
  the cumulative training FLOPs vs density, a line per start (dense, or a random mask at
  its density), so that "as accurate, for less training" reads off one figure (Gadhikar et
  al. 2023, sparse to sparse);
- sparse_to_sparse: IMP, strong lottery tickets and GraNet, each from a dense start beside
  its random starts: test accuracy and cumulative training FLOPs vs the final density.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rp_tune.core.model_names import DEFAULT_WIDTH, parse_cifar_resnet
from rp_tune.core.paper_figures import FIGURES
from rp_tune.methods import METHODS
from rp_tune.results.grouping import (
    Group,
    by_panel,
    dense_of,
    groups,
    lines_of,
    mean_std,
    panel_title,
    series_label,
)

MARKERS = "osD^v<>pPX*h"
CLASSIFIER_KEYS = ("sparsity.fc_density", "sparsity.classifier_density")


def describe_figure(fig: Any) -> list[dict[str, Any]]:
    """What a drawn figure shows, read back from its axes: per panel the title, the axis
    labels, the x scale, the legend's series and each series' points (x, y)."""
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        points = {}  # series label -> (xs, ys) of its line or error bars
        for c in ax.containers:
            if hasattr(c, "lines") and c.lines and c.lines[0] is not None:
                points[c.get_label()] = (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                points.setdefault(
                    line.get_label(), (list(line.get_xdata()), list(line.get_ydata()))
                )
        out.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "xscale": ax.get_xscale(),
                "series": [t.get_text() for t in legend.get_texts()] if legend else [],
                "points": points,
            }
        )
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _n_text(stats: Sequence[tuple[float, float, int]]) -> str:
    ns = sorted({n for *_, n in stats})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def _finish(fig: Any, title: str, path: Path) -> list[dict[str, Any]]:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    shown = describe_figure(fig)
    _pyplot().close(fig)
    return shown


def _panels(n: int, sharey: bool = True) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(max(6.5, 4.2 * n), 3.8), squeeze=False, sharey=sharey)
    return fig, list(axes[0])


def _dense_band(ax: Any, dense: Group | None, metric: str) -> bool:
    if dense is None or dense.stat(metric) is None:
        return False
    m, s, n = dense.stat(metric)
    ax.axhspan(m - s, m + s, color="gray", alpha=0.25)
    ax.axhline(m, color="gray", linestyle="--", label=f"dense (n={n})")
    return True


def _line(ax: Any, xs: list[float], stats: list, label: str, marker: str, **kw: Any) -> None:
    ax.errorbar(
        xs,
        [m for m, _, _ in stats],
        yerr=[s for _, s, _ in stats],
        marker=marker,
        capsize=3,
        label=f"{label} ({_n_text(stats)})",
        **kw,
    )


def _dense_caption(has_dense: bool) -> str:
    return "gray line and band: dense mean ± std" if has_dense else "no dense trial"


# --- metric vs sparsity (Figs. 1-2 and their variants) -------------------------------------


def plot_vs_sparsity(
    rows: list[dict[str, Any]], metric: str, label: str, path: Path
) -> list[dict[str, Any]] | None:
    """metric vs sparsity: a panel per model and context, a line per scheme (and any other
    varying sparsity key), dense as a band."""
    all_groups = [g for g in groups(rows) if g.stat(metric) is not None]
    if not any(not g.dense for g in all_groups):
        return None
    panels = by_panel(all_groups)
    series_all = sorted({g.series for g in all_groups if not g.dense}, key=repr)
    markers = dict(zip(series_all, MARKERS * 8))
    fig, axes = _panels(len(panels))
    has_dense = False
    for ax, (panel, members) in zip(axes, panels.items()):
        has_dense |= _dense_band(ax, dense_of(members), metric)
        for series, points in lines_of(members, lambda g: g.series).items():
            # lines at one sparsity side by side, not on top of one another
            dodge = 0.006 * (series_all.index(series) - (len(series_all) - 1) / 2)
            points = sorted(points, key=lambda g: g.density)
            _line(
                ax,
                [1 - g.density + dodge for g in points],
                [g.stat(metric) for g in points],
                series_label(series),
                markers[series],
            )
        ax.set_title(panel_title(panel), fontsize=9)
        ax.set_xlabel("sparsity (1 - density)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    title = f"{label} vs sparsity (mean ± std over seeds; {_dense_caption(has_dense)})"
    return _finish(fig, title, path)


# --- metric vs parameters or FLOPs (Fig. 5, Fig. 14 right) --------------------------------

COST_AXES = {
    "params": ("params_sparse", "parameters kept"),
    "flops": ("flops_sparse", "inference FLOPs per image"),
}


def plot_vs_cost(
    rows: list[dict[str, Any]], metric: str, label: str, path: Path, x: str = "params"
) -> list[dict[str, Any]] | None:
    """metric vs kept parameters (x="params") or sparse inference FLOPs (x="flops"), every
    model on one axis (log x): a line per model and scheme through its densities, each
    dense model a point. Drawn when the sweep has two models or more (Fig. 5: ImageNet
    ResNets and Wide ResNet-50-2; Fig. 14 right: sparse Wide ResNet-50-2 against dense
    ResNet-18/34/50)."""
    key, xlabel = COST_AXES[x]
    all_groups = [g for g in groups(rows) if g.stat(metric) and g.stat(key)]
    if len({g.model for g in all_groups}) < 2:
        return None
    contexts: dict[tuple, list[Group]] = defaultdict(list)
    for g in all_groups:
        contexts[g.context].append(g)
    fig, axes = _panels(len(contexts))
    markers = dict(zip(sorted({g.model for g in all_groups}), MARKERS * 8))
    for ax, (context, members) in zip(axes, contexts.items()):
        lines = lines_of(members, lambda g: (g.model, *g.series), keep=lambda g: True)
        for (model, lab, line), points in lines.items():
            points = sorted(points, key=lambda g: g.stat(key)[0])
            stats = [g.stat(metric) for g in points]
            xs = [g.stat(key)[0] for g in points]
            text = f"{model} {series_label((lab, line))}"
            if lab == "dense":
                ax.errorbar(
                    xs,
                    [m for m, _, _ in stats],
                    yerr=[s for _, s, _ in stats],
                    marker="*",
                    markersize=11,
                    linestyle="none",
                    color="black",
                    label=f"{text} ({_n_text(stats)})",
                )
            else:
                _line(ax, xs, stats, text, markers[model])
        ax.set_xscale("log")
        ax.set_title(
            ", ".join(f"{k.split('.')[-1]}={v}" for k, v in context) or "all models", fontsize=9
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.legend(fontsize=6)
    return _finish(fig, f"{label} vs {xlabel} (mean ± std over seeds; stars: dense)", path)


# --- metric vs width multiplier (Fig. 7) --------------------------------------------------


def _depth_width(model: str) -> tuple[int, int] | None:
    return parse_cifar_resnet(model)


def plot_vs_width(
    rows: list[dict[str, Any]], metric: str, label: str, path: Path
) -> list[dict[str, Any]] | None:
    """metric vs width multiplier (width / 16) of the CIFAR ResNets: a panel per depth and
    context, a line per scheme and density, dense as its own line. Drawn when some depth
    has two widths or more."""
    all_groups = [g for g in groups(rows) if g.stat(metric) and _depth_width(g.model)]
    widths: dict[tuple, set[int]] = defaultdict(set)
    for g in all_groups:
        widths[(_depth_width(g.model)[0], g.context)].add(_depth_width(g.model)[1])
    panels = {p: w for p, w in widths.items() if len(w) >= 2}
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (depth, context) in zip(axes, sorted(panels, key=lambda p: (p[0], repr(p[1])))):
        here = [g for g in all_groups if (_depth_width(g.model)[0], g.context) == (depth, context)]
        lines = lines_of(here, lambda g: (g.series, g.density), keep=lambda g: True)
        for i, ((series, density), points) in enumerate(sorted(lines.items(), key=repr)):
            points = sorted(points, key=lambda g: _depth_width(g.model)[1])
            xs = [_depth_width(g.model)[1] / DEFAULT_WIDTH for g in points]
            text = "dense" if series[0] == "dense" else f"{series_label(series)}, d={density:g}"
            style = {"color": "black", "linestyle": "--"} if series[0] == "dense" else {}
            _line(
                ax, xs, [g.stat(metric) for g in points], text, MARKERS[i % len(MARKERS)], **style
            )
        ax.set_title(panel_title((f"cifar_resnet_{depth}", context)), fontsize=9)
        ax.set_xlabel(f"width multiplier (width / {DEFAULT_WIDTH})")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return _finish(fig, f"{label} vs width (mean ± std over seeds)", path)


# --- metric vs the classifier's sparsity (Fig. 14 left) -----------------------------------


def classifier_density(g: Group) -> float | None:
    """The classifier's density a sparse group sets (erk_plus's fc_density or any scheme's
    classifier_density), None if it sets none."""
    line = dict(g.line)
    for k in CLASSIFIER_KEYS:
        if line.get(k) is not None:
            return float(line[k])
    return None


def plot_vs_classifier(
    rows: list[dict[str, Any]], metric: str, label: str, path: Path
) -> list[dict[str, Any]] | None:
    """metric vs the classifier's sparsity (1 - its density) at a fixed overall density: a
    panel per model and context, a line per scheme and overall density, dense as a band.
    Drawn when the sweep varies the classifier's density."""
    all_groups = [g for g in groups(rows) if g.stat(metric) is not None]
    sparse = [g for g in all_groups if not g.dense and classifier_density(g) is not None]
    if len({classifier_density(g) for g in sparse}) < 2:
        return None
    panels = by_panel(all_groups)
    panels = {p: m for p, m in panels.items() if any(g in sparse for g in m)}
    fig, axes = _panels(len(panels))
    has_dense = False
    for ax, (panel, members) in zip(axes, panels.items()):
        has_dense |= _dense_band(ax, dense_of(members), metric)
        lines = lines_of(members, lambda g: (g.label, g.density), keep=lambda g: g in sparse)
        for i, ((lab, density), points) in enumerate(sorted(lines.items(), key=repr)):
            points = sorted(points, key=lambda g: -classifier_density(g))
            xs = [1 - classifier_density(g) for g in points]
            _line(
                ax,
                xs,
                [g.stat(metric) for g in points],
                f"{lab}, d={density:g}",
                MARKERS[i % len(MARKERS)],
            )
        ax.set_title(panel_title(panel), fontsize=9)
        ax.set_xlabel("classifier sparsity (1 - its density)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    title = f"{label} vs the classifier's sparsity ({_dense_caption(has_dense)})"
    return _finish(fig, title, path)


# --- gradient flow (Fig. 6) ---------------------------------------------------------------


def plot_grad_flow(
    rows: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], path: Path
) -> list[dict[str, Any]] | None:
    """Effective gradient flow (the loss gradient's L2 norm on the kept weights) against
    the training iteration: a panel per model and context, a line per scheme and density
    (dense included), the mean over seeds at each logged step. `curves`: run key ->
    [(step, norm), ...], from the trials' grad_flow.csv."""
    all_groups = [g for g in groups(rows) if any(curves.get(r["run_key"]) for r in g.rows)]
    if not all_groups:
        return None
    panels = by_panel(all_groups)
    fig, axes = _panels(len(panels), sharey=False)
    for ax, (panel, members) in zip(axes, panels.items()):
        for g in members:
            per_step: dict[int, list[float]] = defaultdict(list)
            seeds = 0
            for r in g.rows:
                if curves.get(r["run_key"]):
                    seeds += 1
                    for step, norm in curves[r["run_key"]]:
                        per_step[int(step)].append(float(norm))
            steps = sorted(per_step)
            text = "dense" if g.dense else f"{series_label(g.series)}, d={g.density:g}"
            style = {"color": "black", "linestyle": "--"} if g.dense else {}
            ax.plot(
                steps,
                [mean_std(per_step[s])[0] for s in steps],
                label=f"{text} (n={seeds})",
                **style,
            )
        ax.set_title(panel_title(panel), fontsize=9)
        ax.set_xlabel("training iteration")
        ax.set_ylabel("gradient norm (kept weights)")
        ax.legend(fontsize=7)
    return _finish(fig, "effective gradient flow (mean over seeds)", path)


# --- iterative magnitude pruning, round by round (Gadhikar et al. 2023) --------------------

IMP_LINE_KEYS = (
    "sparsity.scheme",
    "sparsity.start_density",
    "sparsity.prune_fraction",
    "sparsity.prune_scope",
    "sparsity.rewind_epoch",
)


def imp_points(
    rows: list[dict[str, Any]], rounds: dict[str, list[dict[str, Any]]]
) -> dict[tuple, dict[float, list[dict[str, Any]]]]:
    """(model, context, start label, IMP keys) -> round density -> the round records of
    that density, one per seed: trials of one start and seed that differ only in their
    target train the same rounds down to the shallower target, counted once."""
    out: dict[tuple, dict[float, dict[tuple, dict[str, Any]]]] = defaultdict(dict)
    for g in groups(rows):
        if not g.label.endswith("+imp"):
            continue
        line = tuple((k, v) for k, v in g.line if k != "sparsity.density")
        for r in g.rows:
            imp_keys = tuple((k, r.get(k)) for k in IMP_LINE_KEYS)
            seed = tuple(r.get(k) for k in ("seed", "seeds.mask", "seeds.init", "seeds.data"))
            for rec in rounds.get(r["run_key"], []):
                d = round(float(rec["round_density"]), 6)
                key = (g.model, g.context, g.label, line, imp_keys)
                out[key].setdefault(d, {}).setdefault(seed, rec)
    return {k: {d: list(v.values()) for d, v in by_d.items()} for k, by_d in out.items()}


def imp_summary(
    rows: list[dict[str, Any]], rounds: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The IMP figure's points as rows: per model, context and start, at each round's
    density, test accuracy and cumulative training FLOPs as mean, std and n over seeds."""
    out = []
    for key, by_density in sorted(imp_points(rows, rounds).items(), key=lambda x: repr(x[0])):
        model, context, label, _, imp_keys = key
        for d in sorted(by_density, reverse=True):
            recs = by_density[d]
            acc = mean_std([float(r["round_test_acc"]) for r in recs])
            flops = mean_std([float(r["cumulative_train_flops"]) for r in recs])
            out.append(
                {
                    "model.name": model,
                    **dict(context),
                    "start": label[: -len("+imp")],
                    "start_density": dict(imp_keys).get("sparsity.start_density"),
                    "density": d,
                    "test_acc_mean": acc[0],
                    "test_acc_std": acc[1],
                    "cumulative_train_flops_mean": flops[0],
                    "n": len(recs),
                }
            )
    return out


def plot_imp_rounds(
    rows: list[dict[str, Any]], rounds: dict[str, list[dict[str, Any]]], path: Path
) -> list[dict[str, Any]] | None:
    """Per model and context, two panels: test accuracy at the end of each IMP round vs
    the round's density, and the training FLOPs of all rounds up to it vs density (log
    axes, density falling to the right); a line per start, mean ± std over seeds.
    `rounds`: run key -> the trial's round records (imp_rounds.csv)."""
    points = imp_points(rows, rounds)
    if not points:
        return None
    panels: dict[tuple, list] = defaultdict(list)
    for key, by_density in points.items():
        panels[key[:2]].append((key, by_density))
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4 * len(panels)), squeeze=False)
    for (acc_ax, cost_ax), (panel, lines) in zip(axes, panels.items()):
        for i, (key, by_density) in enumerate(sorted(lines, key=lambda x: repr(x[0]))):
            label, start = key[2], dict(key[4]).get("sparsity.start_density")
            text = "dense start" if label == "dense+imp" else f"{label[:-4]} start {start:g}"
            xs = sorted(by_density, reverse=True)
            acc = [
                mean_std([float(r["round_test_acc"]) for r in by_density[d]])
                + (len(by_density[d]),)
                for d in xs
            ]
            flops = [
                mean_std([float(r["cumulative_train_flops"]) for r in by_density[d]])
                + (len(by_density[d]),)
                for d in xs
            ]
            _line(acc_ax, xs, acc, text, MARKERS[i % len(MARKERS)])
            _line(cost_ax, xs, flops, text, MARKERS[i % len(MARKERS)])
        for ax, ylabel in (
            (acc_ax, "test accuracy at the round's end"),
            (cost_ax, "training FLOPs, all rounds so far"),
        ):
            ax.set_xscale("log")
            if not ax.xaxis_inverted():
                ax.invert_xaxis()
            ax.set_xlabel("density of the round")
            ax.set_ylabel(ylabel)
            ax.set_title(panel_title(panel), fontsize=9)
            ax.legend(fontsize=7)
        cost_ax.set_yscale("log")
    return _finish(
        fig,
        "IMP round by round: accuracy and cumulative training cost (mean ± std over seeds)",
        path,
    )


# --- sparse to sparse: each method from a dense start and from random starts ----------------

# the methods that search from a start mask
S2S_METHODS = tuple(m.name for m in METHODS.values() if m.from_start)


def _start_of(g: Group) -> tuple[str, float]:
    """("dense", 1.0) or ("<scheme> <density>", density): where a group's method started."""
    start = float(g.rows[0].get("sparsity.start_density", 1.0))
    if g.label.startswith("dense+"):
        return "dense", 1.0
    return f"{g.label.rpartition('+')[0]} {start:g}", start


def _s2s_groups(rows: list[dict[str, Any]]) -> Iterator[tuple[str, tuple, Group]]:
    """(method, the other varying sparsity keys, group) of every IMP, SLT or GraNet group:
    the groups whose starts the comparison puts side by side."""
    for g in groups(rows):
        method = g.label.rpartition("+")[2]
        if "+" in g.label and method in S2S_METHODS:
            yield method, tuple((k, v) for k, v in g.line if k != "sparsity.start_density"), g


def sparse_to_sparse(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gadhikar et al. (ICML 2023)'s comparison as rows: per model, context, method (IMP,
    strong tickets, GraNet) and final density, every start side by side (the dense start
    first, then each random source by scheme and density): test accuracy of the final model
    and at the best-validation epoch (mean ± std (n) over seeds), and the cumulative
    training FLOPs (`train_flops_sparse`: every epoch at the densities it trained at), with
    their ratio to the dense start's at the same final density."""
    by: dict[tuple, list[Group]] = defaultdict(list)
    for method, other, g in _s2s_groups(rows):
        by[(g.model, g.context, method, other, g.density)].append(g)
    out = []
    for (model, context, method, other, density), members in by.items():
        # the dense start (density 1.0) first, then the sources, densest first
        starts = sorted(members, key=lambda g: (-_start_of(g)[1], _start_of(g)[0]))
        dense = next((g for g in starts if _start_of(g)[0] == "dense"), None)
        dense_flops = dense.stat("train_flops_sparse") if dense is not None else None
        for g in starts:
            start, start_density = _start_of(g)
            row: dict[str, Any] = {
                "model.name": model,
                **dict(context),
                **dict(other),
                "method": method,
                "density": density,
                "start": start,
                "start_density": start_density,
            }
            for metric in ("test_acc", "test_acc_best_val", "train_flops_sparse"):
                stat = g.stat(metric)
                if stat is not None:
                    row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = stat
            flops = g.stat("train_flops_sparse")
            if flops is not None and dense_flops is not None and dense_flops[0] > 0:
                row["train_flops_vs_dense_start"] = flops[0] / dense_flops[0]
            out.append(row)
    return out


def plot_sparse_to_sparse(
    rows: list[dict[str, Any]], _side: Any, path: Path
) -> list[dict[str, Any]] | None:
    """Per model, context and method, two panels: test accuracy vs the final density and
    cumulative training FLOPs vs the final density (log axes, density falling to the
    right), a line per start (dense, or a random source), mean ± std over seeds. Drawn
    where a method has at least two starts."""
    points: dict[tuple, dict[str, list[tuple[float, Group]]]] = defaultdict(dict)
    for method, other, g in _s2s_groups(rows):  # a panel per other sparsity key too
        starts = points[(g.model, g.context + other, method)]
        starts.setdefault(_start_of(g)[0], []).append((g.density, g))
    points = {k: v for k, v in points.items() if len(v) > 1}
    if not points:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(points), 2, figsize=(11, 4 * len(points)), squeeze=False)
    for (acc_ax, cost_ax), ((model, context, method), starts) in zip(axes, points.items()):
        order = sorted(starts, key=lambda s: (s != "dense", s))
        for i, start in enumerate(order):
            line = sorted(starts[start], key=lambda x: -x[0])
            xs = [d for d, _ in line]
            text = "dense start" if start == "dense" else f"{start} start"
            for ax, metric in ((acc_ax, "test_acc"), (cost_ax, "train_flops_sparse")):
                stats = [g.stat(metric) for _, g in line]
                if all(st is not None for st in stats):
                    _line(ax, xs, stats, text, MARKERS[i % len(MARKERS)])
        for ax, ylabel in (
            (acc_ax, "test accuracy"),
            (cost_ax, "training FLOPs (every epoch at its density)"),
        ):
            ax.set_xscale("log")
            if not ax.xaxis_inverted():
                ax.invert_xaxis()
            ax.set_xlabel("final density")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{panel_title((model, context))}: {method}", fontsize=9)
            ax.legend(fontsize=7)
        cost_ax.set_yscale("log")
    return _finish(
        fig, "sparse to sparse: dense start vs random starts (mean ± std over seeds)", path
    )


# --- one trial's training curves (an MLflow artifact) ---------------------------------


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlotKind:
    name: str
    file: str  # file name pattern: {metric} is the metric's name
    per_metric: bool
    draw: Callable[..., list[dict[str, Any]] | None]
    shows: str
    side: str = "grad_flow"  # not per metric: the per-trial data it draws besides the rows


PLOTS: dict[str, PlotKind] = {
    p.name: p
    for p in (
        PlotKind("sparsity", "{metric}_vs_sparsity.png", True, plot_vs_sparsity,
                 "metric vs sparsity, a panel per model, a line per scheme"),
        PlotKind("params", "{metric}_vs_params.png", True,
                 lambda rows, m, lab, path: plot_vs_cost(rows, m, lab, path, "params"),
                 "metric vs kept parameters, all models on one axis, dense as points"),
        PlotKind("flops", "{metric}_vs_flops.png", True,
                 lambda rows, m, lab, path: plot_vs_cost(rows, m, lab, path, "flops"),
                 "metric vs inference FLOPs, all models on one axis, dense as points"),
        PlotKind("width", "{metric}_vs_width.png", True, plot_vs_width,
                 "metric vs width multiplier, a line per sparsity"),
        PlotKind("classifier", "{metric}_vs_classifier_sparsity.png", True, plot_vs_classifier,
                 "metric vs the classifier's sparsity"),
        PlotKind("grad_flow", "grad_flow.png", False, plot_grad_flow,
                 "gradient norm vs iteration"),
        PlotKind("imp_rounds", "imp_rounds.png", False, plot_imp_rounds,
                 "IMP: test accuracy and cumulative training FLOPs vs each round's density",
                 "imp_rounds"),
        PlotKind("sparse_to_sparse", "sparse_to_sparse.png", False, plot_sparse_to_sparse,
                 "IMP, strong tickets and GraNet: test accuracy and cumulative training "
                 "FLOPs vs the final density, a line per start", "none"),
    )
}  # fmt: skip


def figure_files(ref: str, drawn: dict[str, Any]) -> list[str]:
    """The drawn files (names from `draw_all`) that show a paper figure: its plot kind, for
    each of its metrics (a metric ending in "_" stands for its family, e.g. every OoD set)."""
    fig = FIGURES[ref]
    if fig.plot is None:
        return []
    kind = PLOTS[fig.plot]
    if not kind.per_metric:
        return [kind.file] if kind.file in drawn else []
    head, tail = kind.file.split("{metric}")
    out = []
    for name in drawn:
        if name.startswith(head) and name.endswith(tail):
            metric = name[len(head) : len(name) - len(tail)]
            if any(metric == m or (m.endswith("_") and metric.startswith(m)) for m in fig.metrics):
                out.append(name)
    return out


def draw_all(
    rows: list[dict[str, Any]],
    metrics: dict[str, str],
    out: Path,
    curves: dict[str, list[tuple[int, float]]] | None = None,
    imp_rounds: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every plot whose axes the sweep fits, per metric for the per-metric kinds: file name
    -> what it drew (`describe_figure`). `curves`: the trials' gradient flow; `imp_rounds`:
    their IMP round records (run key -> records)."""
    drawn: dict[str, list[dict[str, Any]]] = {}
    side = {"grad_flow": curves or {}, "imp_rounds": imp_rounds or {}, "none": None}
    for kind in PLOTS.values():
        if not kind.per_metric:
            shown = kind.draw(rows, side[kind.side], out / kind.file)
            if shown:
                drawn[kind.file] = shown
            continue
        for metric, label in metrics.items():
            name = kind.file.format(metric=metric)
            shown = kind.draw(rows, metric, label, out / name)
            if shown:
                drawn[name] = shown
    return drawn
