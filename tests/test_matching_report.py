"""The report's answer to "where does random pruning match dense": the bracket per group
and the phase diagram, from a grid sweep, a matching-density search, and both at once, and
their place in the MLflow parent run."""

import csv
import json

import pytest

from rp_tune.config import run_key
from rp_tune.planning.matching import SearchSettings
from rp_tune.planning.matching_plan import search_groups, search_record, write_search
from rp_tune.planning.space import expand_space
from rp_tune.results.matching import (
    brackets_table,
    matching_brackets,
    phase_points,
    plot_matching_phase,
)
from rp_tune.results.report import build_report, print_report
from tests.helpers import finished_row


def _line(model, scheme, accs, **extra):
    """Two seeds per density: (density, mean) -> rows at mean -+ 0.002."""
    return [
        finished_row(model, scheme, d, s, a + (0.002 if s else -0.002), **extra)
        for d, a in accs
        for s in (0, 1)
    ]


DENSE = [(1.0, 0.92)]  # std 0.00283: the threshold 0.9172


def test_a_grids_bracket_is_its_smallest_match_and_the_failing_point_below():
    rows = _line("m", "uniform", DENSE)
    rows += _line("m", "erk", [(0.5, 0.921), (0.2, 0.90), (0.1, 0.918), (0.05, 0.80)])
    rows += _line("m", "snip", [(0.5, 0.90), (0.2, 0.85)])  # never matches
    rows += _line("m", "er", [(0.5, 0.93), (0.2, 0.925)])  # matches at every density run
    got = {b["scheme"]: b for b in matching_brackets(rows)}
    erk = got["erk"]
    assert (erk["fail_density"], erk["match_density"]) == (0.05, 0.1)
    assert erk["smallest_matching_density"] == 0.1 and erk["inconsistent"] == 1  # 0.2 failed
    assert (erk["sparsity_low"], erk["sparsity_high"]) == (0.9, 0.95)
    assert (erk["fail_seeds"], erk["match_seeds"], erk["resolution"]) == (2, 2, 2.0)
    assert erk["trials"] == 8 + 2 and erk["grid_trials"] == 10 and erk["source"] == "grid"
    assert erk["dense_acc_mean"] == pytest.approx(0.92) and erk["dense_n"] == 2
    snip, er = got["snip"], got["er"]
    assert (snip["fail_density"], snip["match_density"]) == (0.5, None)
    assert (er["fail_density"], er["match_density"]) == (None, 0.2)
    text = brackets_table(list(got.values()))
    assert "m erk" in text and "(0.05, 0.1]" in text and "[0.9, 0.95)" in text
    assert "> 0.5 (none matched)" in text and "<= 0.2 (all matched)" in text


def test_the_phase_diagram_plots_matching_sparsity_against_width_a_line_per_scheme(tmp_path):
    rows = []
    for model, shift in (("cifar_resnet_8", 1.0), ("cifar_resnet_8_32", 0.5)):
        rows += _line(model, "uniform", DENSE)
        for scheme, k in (("erk", 1.0), ("uniform", 2.0)):
            cross = 0.1 * shift * k  # wider: matches sparser; uniform: needs more density
            accs = [(d, 0.92 if d >= cross else 0.80) for d in (0.025, 0.05, 0.1, 0.2, 0.4)]
            rows += _line(model, scheme, accs)
    rows += _line("vgg16", "uniform", DENSE) + _line("vgg16", "erk", [(0.1, 0.92), (0.05, 0.8)])
    axis, placed, left = phase_points(matching_brackets(rows))
    assert axis == "width" and len(placed) == 4 and left == ["vgg16 erk"]  # no width: said
    drawn = plot_matching_phase(matching_brackets(rows), tmp_path / "phase.png")
    assert (tmp_path / "phase.png").is_file()
    (panel,) = drawn
    assert panel["title"] == "depth 8" and panel["xlabel"].startswith("width multiplier")
    assert panel["series"] == ["erk, grid", "uniform, grid"]
    xs, ys = panel["points"]["erk, grid"]
    assert xs == [1.0, 2.0] and ys == pytest.approx([0.9, 0.95])  # 1 - 0.1, 1 - 0.05
    assert panel["points"]["uniform, grid"][1] == pytest.approx([0.8, 0.9])


def test_a_grid_and_a_search_of_one_space_draw_into_one_figure(tmp_path):
    dense = [{**r, "sweep": "width_scan"} for r in _line("m", "uniform", DENSE, params_dense=5e4)]
    grid = [
        {**r, "sweep": "width_scan"}
        for r in _line("m", "erk", [(0.5, 0.92), (0.1, 0.92), (0.05, 0.8)])
    ]
    search = [
        {**r, "sweep": "width_scan_search"}
        for r in _line("m", "erk", [(0.08, 0.92), (0.064, 0.8), (0.01, 0.5)])
    ]
    searches = {"width_scan": None, "width_scan_search": SearchSettings()}
    got = {b["sweep"]: b for b in matching_brackets(dense + grid + search, searches)}
    assert (got["width_scan"]["fail_density"], got["width_scan"]["match_density"]) == (0.05, 0.1)
    s = got["width_scan_search"]  # its dense reference is the grid sweep's
    assert (s["fail_density"], s["match_density"], s["source"]) == (0.064, 0.08, "search")
    assert s["trials"] == 6 + 2 and s["grid_trials"] == SearchSettings().grid_trials() == 66
    (panel,) = plot_matching_phase(
        matching_brackets(dense + grid + search, searches), tmp_path / "p.png"
    )
    assert panel["xlabel"] == "dense parameters" and panel["xscale"] == "log"
    assert panel["series"] == ["erk (width_scan), grid", "erk (width_scan_search), search"]


def _write_trials(folder, trials):
    for cfg, acc in trials:
        key = run_key(cfg)
        (folder / key).mkdir(parents=True)
        entry = {"trial": {"flat": cfg.to_flat(), "run_key": key}}
        (folder / key / "params.json").write_text(json.dumps(entry, default=list))
        last = {"epoch": cfg.train.epochs, "test_acc": acc, "params_dense": 78000.0}
        (folder / key / "result.json").write_text(json.dumps(last) + "\n")


def test_the_report_of_a_search_prints_writes_and_logs_its_brackets_and_figure(tmp_path, capsys):
    """--report of a matching-density search: the bracket table on the console and in
    matching_brackets.csv (the search's grid at its resolution as the comparison), the phase
    diagram, and both under report/ of the sweep's MLflow parent run."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path / "smoke"
    configs = expand_space("smoke", {"sparsity.scheme": ["erk"], "sparsity.density": [0.1, 0.5]})
    (group,) = search_groups(configs, "smoke")
    accs = {1.0: 0.92, 0.4: 0.921, 0.2: 0.919, 0.1: 0.85}
    _write_trials(
        folder,
        [(group.probe(d, k), a + 0.003 * (k - 1)) for d, a in accs.items() for k in range(3)],
    )
    settings = SearchSettings(seed_cap=3, dense_seeds=3)
    write_search(str(folder), search_record([group], settings))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("smoke")
    parent = client.create_run(
        exp, tags={"rp_tune.role": "sweep", "rp_tune.sweep_path": str(folder)}
    ).info.run_id
    rep = build_report(str(folder), tracking_uri=uri)
    print_report(rep)
    out = capsys.readouterr().out
    assert "(0.1, 0.2]" in out and "[0.8, 0.9)" in out and "where each group matches dense" in out
    with open(rep["brackets_table"]) as f:
        (row,) = list(csv.DictReader(f))
    assert row["source"] == "search" and row["grid_trials"] == str(settings.grid_trials())
    assert row["trials"] == "12" and row["match_density"] == "0.2"
    assert any(f.endswith("matching_phase.png") for f in rep["figures"])
    (panel,) = rep["drawn"]["matching_phase.png"]
    assert panel["xlabel"] == "dense parameters" and panel["series"] == ["erk, search"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/matching_brackets.csv", "report/matching_phase.png"} <= logged


def test_a_report_of_several_sweeps_reads_each_from_every_trial_it_holds(tmp_path):
    """A search that reused a grid's trials (the same run keys) keeps them in its own
    reading though the joint table lists each once; each sweep is measured against its own
    dense seeds."""
    from rp_tune.results.sweep_rows import read_sweeps

    configs = expand_space("smoke", {"sparsity.scheme": ["erk"], "sparsity.density": [0.1, 0.5]})
    (group,) = search_groups(configs, "smoke")
    acc = {1.0: 0.92, 0.5: 0.921, 0.2: 0.919, 0.1: 0.85, 0.08: 0.84}

    def trials(densities, seeds=3):
        return [
            (group.probe(d, k), acc[d] + 0.003 * (k - 1)) for d in densities for k in range(seeds)
        ]

    _write_trials(tmp_path / "grid", trials((1.0, 0.5, 0.2, 0.1)))
    _write_trials(tmp_path / "search", trials((0.2, 0.1, 0.08)) + trials((1.0,), seeds=5))
    rows = read_sweeps([str(tmp_path / "grid"), str(tmp_path / "search")])
    assert len(rows) == 12 + 3 + 2  # the shared trials once
    got = {b["sweep"]: b for b in matching_brackets(rows, {"search": SearchSettings()})}
    assert (got["grid"]["fail_density"], got["grid"]["match_density"]) == (0.1, 0.2)
    assert (got["search"]["fail_density"], got["search"]["match_density"]) == (0.1, 0.2)
    assert got["grid"]["dense_n"] == 3 and got["search"]["dense_n"] == 5
    assert got["search"]["trials"] == 9 + 5 and got["grid"]["trials"] == 9 + 3
    assert got["search"]["source"] == "search" and got["search"]["grid_trials"] == 66
