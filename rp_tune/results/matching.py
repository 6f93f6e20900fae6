"""Where each network stops matching dense, read off any sweep's trials: per group (a model
and context, a scheme) the bracket of its smallest matching density, and the phase diagram
of Liu et al. (ICLR 2022, Figs. 1, 2 and 7) and Gadhikar et al. (ICML 2023, width versus
density): matching sparsity against width, depth or parameter count, a line per scheme.

The bracket (lo, hi] of a line: hi the smallest density whose mean test accuracy matches
its dense reference (`rp_tune.planning.matching.matches`), lo the largest density below hi
that does not. A grid sweep's bracket is its spacing around the crossing; a matching-density
search's is the one it searched to (`--search matching`), so a grid and a search of one
space read the same way and draw into one figure (their lines named by sweep).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rp_tune.core.model_names import DEFAULT_WIDTH, parse_cifar_resnet
from rp_tune.planning.matching import SearchSettings, matches
from rp_tune.results.grouping import Group, by_panel, dense_of, groups, lines_of, series_label

BRACKETS_FILE = "matching_brackets.csv"
PHASE_FILE = "matching_phase.png"


def _line_bracket(points: Sequence[Group], d_mean: float, d_std: float) -> dict[str, Any]:
    """(lo, hi] of one line's groups, with the seeds and mean accuracy behind each side."""
    ok = [g for g in points if matches(g.stat("test_acc")[0], d_mean, d_std)]
    matched = {g.density for g in ok}  # a line's groups differ in density alone
    hi = min(ok, key=lambda g: g.density) if ok else None
    below = [
        g for g in points if g.density not in matched and (hi is None or g.density < hi.density)
    ]
    lo = max(below, key=lambda g: g.density) if below else None
    out: dict[str, Any] = {"smallest_matching_density": None if hi is None else hi.density}
    for name, g in (("match", hi), ("fail", lo)):
        out[f"{name}_density"] = None if g is None else g.density
        out[f"{name}_seeds"] = 0 if g is None else g.stat("test_acc")[2]
        out[f"{name}_acc_mean"] = None if g is None else g.stat("test_acc")[0]
    out["sparsity_low"] = None if hi is None else round(1 - hi.density, 6)
    out["sparsity_high"] = None if lo is None else round(1 - lo.density, 6)
    out["inconsistent"] = sum(
        1 for g in points if g.density not in matched and hi is not None and g.density > hi.density
    )
    return out


def _brackets_of(
    rows: Sequence[dict[str, Any]], sweep: str | None, search: SearchSettings | None
) -> list[dict[str, Any]]:
    out = []
    for panel, members in by_panel(groups(rows)).items():
        dense = dense_of(members)
        if dense is None or dense.stat("test_acc") is None:
            continue
        d_mean, d_std, d_n = dense.stat("test_acc")
        lines = lines_of(
            members, lambda g: g.series, keep=lambda g: not g.dense and g.stat("test_acc")
        )
        depth_width = parse_cifar_resnet(panel[0])
        params = dense.stat("params_dense")
        for series, points in lines.items():
            trials = sum(g.n for g in points) + dense.n
            found = _line_bracket(sorted(points, key=lambda g: g.density), d_mean, d_std)
            hi, lo = found["match_density"], found["fail_density"]
            out.append(
                {
                    "model": panel[0],
                    **dict(panel[1]),
                    "scheme": series[0],
                    **dict(series[1]),
                    "line": series_label(series),
                    **found,
                    "resolution": None if hi is None or lo is None else round(hi / lo, 4),
                    "dense_acc_mean": d_mean,
                    "dense_acc_std": d_std,
                    "dense_n": d_n,
                    "trials": trials,  # finished trials behind the line, its dense included
                    # a grid at the search's resolution; a grid sweep is its own grid
                    "grid_trials": trials if search is None else search.grid_trials(),
                    "source": "grid" if search is None else "search",
                    "sweep": sweep,
                    "depth": None if depth_width is None else depth_width[0],
                    "width": None if depth_width is None else depth_width[1],
                    "params": None if params is None else params[0],
                }
            )
    return out


def matching_brackets(
    rows: Sequence[dict[str, Any]],
    searches: Mapping[str | None, SearchSettings | None] | None = None,
) -> list[dict[str, Any]]:
    """One row per line (model and context, scheme) and sweep: the bracket of its smallest
    matching density, the seeds behind each side, the dense accuracy, the trials behind it
    and a grid's at the same resolution. Rows of several sweeps are read sweep by sweep,
    each from every trial it holds (`sweeps`, or `sweep`: a trial it reused from another
    is its own too), a sweep without a dense reference of some model and recipe taking
    another's; `searches`: sweep name -> the search's settings (None: a grid sweep).
    Lines without a finished dense reference are left out."""
    from rp_tune.results.sweep_rows import context_identity

    by_sweep: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        for name in r["sweeps"].split(",") if r.get("sweeps") else [r.get("sweep")]:
            by_sweep[name].append(r)
    dense = [
        r for r in rows if float(r["sparsity.density"]) == 1.0 and r.get("status") == "finished"
    ]
    dense_ids = {id(r) for r in dense}
    out = []
    for sweep, own in by_sweep.items():
        have = {context_identity(r) for r in own if id(r) in dense_ids}
        borrowed = [r for r in dense if context_identity(r) not in have]
        out += _brackets_of(own + borrowed, sweep, (searches or {}).get(sweep))
    return out


def brackets_table(brackets: Sequence[dict[str, Any]]) -> str:
    """The brackets as text, one line per group: where it matches, the seeds behind each
    side, the dense accuracy, and the trials against a grid's at the same resolution."""
    head = (
        f"{'group':<38} {'matching density':<22} {'sparsity':<18} {'seeds':>5} "
        f"{'dense acc':>18} {'trials':>6} {'grid':>5}"
    )
    lines = [head, "-" * len(head)]
    for b in brackets:
        context = [f"{k.split('.')[-1]}={v}" for k, v in b.items() if "." in k]
        where = " ".join([b["model"], b["line"], *context])
        if b.get("sweep"):
            where += f" ({b['sweep']})"
        lo, hi = b["fail_density"], b["match_density"]
        if hi is None:
            bracket, sparsity = f"> {lo} (none matched)", f"< {1 - lo:.4g}"
        elif lo is None:
            bracket, sparsity = f"<= {hi} (all matched)", f">= {1 - hi:.4g}"
        else:
            bracket, sparsity = f"({lo}, {hi}]", f"[{1 - hi:.4g}, {1 - lo:.4g})"
        dense = f"{b['dense_acc_mean']:.4f}±{b['dense_acc_std']:.4f} ({b['dense_n']})"
        lines.append(
            f"{where[:38]:<38} {bracket:<22} {sparsity:<18} "
            f"{b['fail_seeds']}/{b['match_seeds']:<3} {dense:>18} {b['trials']:>6} "
            f"{b['grid_trials']:>5}"
        )
    lines.append(
        "matching density (lo, hi]: hi the smallest density whose mean test accuracy is at "
        "least dense mean - dense std; seeds: behind lo/hi; grid: the trials of a grid at "
        "the same resolution (a grid sweep: itself)"
    )
    return "\n".join(lines)


def _phase_axis(brackets: Sequence[dict[str, Any]]) -> str:
    """width where some depth has two widths, else depth where some width has two
    depths, else the dense parameter count."""
    widths, depths = defaultdict(set), defaultdict(set)
    for b in brackets:
        if b["depth"] is not None:
            widths[b["depth"]].add(b["width"])
            depths[b["width"]].add(b["depth"])
    if any(len(w) > 1 for w in widths.values()):
        return "width"
    if any(len(d) > 1 for d in depths.values()):
        return "depth"
    return "params"


def phase_points(
    brackets: Sequence[dict[str, Any]],
) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The phase diagram's x axis, the brackets it places, and the lines it leaves out
    (named, with why: no value on that axis, e.g. a VGG beside CIFAR ResNets of several
    widths, or no parameter count in the trials' results)."""
    found = [b for b in brackets if b["match_density"] or b["fail_density"]]
    axis = _phase_axis(found)
    placed = [b for b in found if b[axis] is not None]
    left = [_line_name(b) for b in found if b[axis] is None]
    return axis, placed, left


def _line_name(b: Mapping[str, Any]) -> str:
    sweep = b.get("sweep")
    return f"{b['model']} {b['line']}" + (f" ({sweep})" if sweep else "")


def _x(b: Mapping[str, Any], axis: str) -> float:
    if axis == "width":
        return b["width"] / DEFAULT_WIDTH
    return float(b[axis])


def _panel_of(b: Mapping[str, Any], other: str | None) -> tuple:
    """A panel: the other architecture axis (depth for a width plot) and the context."""
    context = tuple((k, v) for k, v in b.items() if "." in k and not k.startswith("sparsity."))
    return (None if other is None else b[other], context)


def _panel_name(panel: tuple, other: str | None) -> str:
    parts = [] if other is None else [f"{other} {panel[0]}"]
    parts += [f"{k.split('.')[-1]}={v}" for k, v in panel[1]]
    return ", ".join(parts) or "all models"


def plot_matching_phase(
    brackets: Sequence[dict[str, Any]], path: Path
) -> list[dict[str, Any]] | None:
    """The phase diagram: matching sparsity (1 - the smallest matching density) against
    width multiplier, depth or dense parameters, a panel per context (and depth or width),
    a line per scheme (and sweep: a search's solid, a grid's dashed). A point's bar is its
    bracket: the crossing lies between 1 - hi and 1 - lo. A line that matched at every
    density it ran points up (at least that sparsity), one that never matched points down
    (less than it). `brackets`: `matching_brackets`. None when no line has a dense
    reference."""
    from rp_tune.results.figures import MARKERS, _finish, _panels

    axis, found, _ = phase_points(brackets)
    if not found:  # no line with a dense reference, or none placed (no parameter count)
        return None
    other = {"width": "depth", "depth": "width"}.get(axis)
    panels: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for b in found:
        panels[_panel_of(b, other)].append(b)
    fig, axes = _panels(len(panels))
    for ax, (panel, members) in zip(axes, sorted(panels.items(), key=repr)):
        lines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for b in members:
            lines[(b["line"], b["sweep"] or "", b["source"])].append(b)
        schemes = sorted({label for label, _, _ in lines})  # a scheme's colour and marker
        for (label, sweep, source), pts in sorted(lines.items()):
            i = schemes.index(label)
            pts = sorted(pts, key=lambda b: _x(b, axis))
            xs = [_x(b, axis) for b in pts]
            ys = [1 - (b["match_density"] or b["fail_density"]) for b in pts]
            ups = [
                0.0 if b["match_density"] is None or b["fail_density"] is None
                else b["match_density"] - b["fail_density"]
                for b in pts
            ]  # fmt: skip
            name = f"{label}{f' ({sweep})' if sweep else ''}, {source}"
            color = f"C{i % 10}"  # one scheme, one colour: a search solid, a grid dashed
            ax.errorbar(
                xs, ys, yerr=[[0.0] * len(ys), ups], marker=MARKERS[i % len(MARKERS)],
                capsize=3, linestyle="-" if source == "search" else "--", label=name,
                color=color, mfc=color if source == "search" else "white",
            )  # fmt: skip
            for x, y, b in zip(xs, ys, pts):
                if b["fail_density"] is None or b["match_density"] is None:
                    up = b["fail_density"] is None  # matched everywhere: at least y
                    ax.plot([x], [y], marker="^" if up else "v", color=color, markersize=9)
        ax.set_title(_panel_name(panel, other), fontsize=9)
        ax.set_xlabel(
            {"width": f"width multiplier (width / {DEFAULT_WIDTH})", "depth": "depth"}.get(
                axis, "dense parameters"
            )
        )
        if axis == "params":
            ax.set_xscale("log")
        ax.set_ylabel("matching sparsity (1 - smallest matching density)")
        ax.legend(fontsize=7)
    title = "where random pruning matches dense (bars: the bracket; ^ at least, v less than)"
    return _finish(fig, title, path)
