"""Each kind of figure the report draws, on trials written by hand: the PNG exists, its
axes are named, and it draws one series per group at the right points."""

import pytest

from rp_tune.results.figures import (
    FIGURES,
    PLOTS,
    draw_all,
    plot_grad_flow,
    plot_vs_classifier,
    plot_vs_cost,
    plot_vs_width,
)


def _row(model, scheme, density, seed, acc, **more):
    return {"run_key": f"{model}-{scheme}-{density}-{seed}-{sorted(more.items())}",
            "status": "finished", "model.name": model, "sparsity.scheme": scheme,
            "sparsity.density": density, "seed": seed, "test_acc": acc, **more}  # fmt: skip


def test_metric_vs_parameters_puts_every_model_on_one_axis_dense_as_points(tmp_path):
    """Fig. 5 / Fig. 14 right: sparse Wide ResNet-50-2 at two densities against dense
    ResNet-18 and ResNet-50, by kept parameters on a log axis."""
    rows = []
    for seed in (0, 1):
        rows.append(_row("resnet18", "uniform", 1.0, seed, 0.70, params_sparse=11.7e6))
        rows.append(_row("resnet50", "uniform", 1.0, seed, 0.76, params_sparse=25.6e6))
        for d, acc in ((0.3, 0.745), (0.15, 0.69)):
            rows.append(_row("wide_resnet50_2", "erk", d, seed, acc + seed * 0.002,
                             params_sparse=68.9e6 * d))  # fmt: skip
    (panel,) = plot_vs_cost(rows, "test_acc", "test accuracy", tmp_path / "p.png", "params")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert panel["xscale"] == "log" and panel["xlabel"] == "parameters kept"
    assert panel["ylabel"] == "test accuracy"
    assert sorted(panel["series"]) == [
        "resnet18 dense (n=2)", "resnet50 dense (n=2)", "wide_resnet50_2 erk (n=2)",
    ]  # fmt: skip
    xs, ys = panel["points"]["wide_resnet50_2 erk (n=2)"]
    assert xs == pytest.approx([68.9e6 * 0.15, 68.9e6 * 0.3])
    assert ys == pytest.approx([0.691, 0.746])
    one_model = [r for r in rows if r["model.name"] == "wide_resnet50_2"]
    assert plot_vs_cost(one_model, "test_acc", "acc", tmp_path / "q.png", "params") is None


def test_metric_vs_width_multiplier_draws_a_line_per_sparsity(tmp_path):
    """Fig. 7: ResNet-20 at widths 8/16/32 (the default width unspelled), ERK at two
    densities and dense; the x is width / 16."""
    rows = []
    for model, w in (("cifar_resnet_20_8", 8), ("cifar_resnet_20", 16), ("cifar_resnet_20_32", 32)):
        rows.append(_row(model, "uniform", 1.0, 0, 0.90 + w / 1000))
        for d in (0.1, 0.5):
            rows.append(_row(model, "erk", d, 0, 0.80 + d / 10 + w / 1000))
    (panel,) = plot_vs_width(rows, "test_acc", "test accuracy", tmp_path / "w.png")
    assert panel["title"] == "cifar_resnet_20" and panel["xlabel"].startswith("width multiplier")
    assert panel["series"] == ["dense (n=1)", "erk, d=0.1 (n=1)", "erk, d=0.5 (n=1)"]
    assert panel["points"]["erk, d=0.5 (n=1)"][0] == [0.5, 1.0, 2.0]
    assert panel["points"]["erk, d=0.5 (n=1)"][1] == pytest.approx([0.858, 0.866, 0.882])
    one_width = [r for r in rows if r["model.name"] == "cifar_resnet_20"]
    assert plot_vs_width(one_width, "test_acc", "acc", tmp_path / "x.png") is None


def test_metric_vs_the_classifiers_sparsity(tmp_path):
    """Fig. 14 left: ERK+ at overall density 0.3 with the classifier at 0.2/0.5/1.0, and the
    dense model as the band."""
    rows = [_row("wide_resnet50_2", "uniform", 1.0, s, 0.78) for s in (0, 1)]
    for fc, acc in ((0.2, 0.744), (0.5, 0.748), (1.0, 0.752)):
        rows += [_row("wide_resnet50_2", "erk_plus", 0.3, s, acc, **{"sparsity.fc_density": fc})
                 for s in (0, 1)]  # fmt: skip
    (panel,) = plot_vs_classifier(rows, "test_acc", "test accuracy", tmp_path / "c.png")
    assert panel["xlabel"] == "classifier sparsity (1 - its density)"
    assert panel["series"] == ["dense (n=2)", "erk_plus, d=0.3 (n=2)"]
    xs, ys = panel["points"]["erk_plus, d=0.3 (n=2)"]
    assert xs == pytest.approx([0.0, 0.5, 0.8]) and ys == pytest.approx([0.752, 0.748, 0.744])
    flat = [r for r in rows if r.get("sparsity.fc_density") in (None, 0.2)]
    assert plot_vs_classifier(flat, "test_acc", "acc", tmp_path / "d.png") is None


def test_gradient_flow_is_the_mean_over_seeds_per_step(tmp_path):
    rows = [_row("cifar_resnet_20", "erk", 0.1, s, 0.8) for s in (0, 1)]
    rows += [_row("cifar_resnet_20", "uniform", 1.0, 0, 0.9)]
    curves = {rows[0]["run_key"]: [(0, 1.0), (100, 0.5)],
              rows[1]["run_key"]: [(0, 3.0), (100, 1.5)],
              rows[2]["run_key"]: [(0, 2.0), (100, 2.0)]}  # fmt: skip
    (panel,) = plot_grad_flow(rows, curves, tmp_path / "g.png")
    assert panel["xlabel"] == "training iteration"
    assert sorted(panel["series"]) == ["dense (n=1)", "erk, d=0.1 (n=2)"]
    assert panel["points"]["erk, d=0.1 (n=2)"] == ([0, 100], [2.0, 1.0])
    assert plot_grad_flow(rows, {}, tmp_path / "h.png") is None


def test_draw_all_draws_the_kinds_a_sweep_fits_and_every_figure_has_a_plot(tmp_path):
    rows = [_row("cifar_resnet_20", "erk", d, 0, 0.8, params_sparse=2.7e5 * d)
            for d in (0.1, 0.5)]  # fmt: skip
    drawn = draw_all(rows, {"test_acc": "test accuracy"}, tmp_path)
    assert sorted(drawn) == ["test_acc_vs_sparsity.png"]  # one model, one width, no curves
    assert all(f.plot in PLOTS for f in FIGURES.values() if f.plot is not None)


def test_the_readme_lists_every_figure_with_the_spaces_that_serve_it():
    from search_spaces import load_space, space_names
    from tests.helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    for ref in FIGURES:
        (row,) = [ln for ln in readme.splitlines() if ln.startswith(f"| {ref} |")]
        spaces = [n for n in space_names() if ref in getattr(load_space(n), "FIGURES", ())]
        assert all(f"`{s}`" in row for s in spaces), row
        if FIGURES[ref].plot is not None:
            assert spaces, f"{ref}: no space serves it"


def test_a_space_naming_an_unknown_figure_is_refused():
    import types

    from rp_tune.core.errors import SweepError
    from rp_tune.planning.space import expand_space

    space = types.ModuleType("bad_figures")
    space.DESCRIPTION, space.GRID, space.FIXED, space.SMOKE = "x", {}, {}, {}
    space.FIGURES = ("Liu et al. Fig. 99",)
    with pytest.raises(SweepError, match=r"FIGURES names \['Liu et al. Fig. 99'\]"):
        expand_space(space)
