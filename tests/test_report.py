"""The report from a sweep's storage: the table, grouping over seeds, the matching density,
the figures; tested on sweep folders written as Tune writes them (params.json, result.json)."""

import json

import pyarrow.parquet as pq
import pytest

from rp_tune.config import run_key
from rp_tune.plan import expand_space
from rp_tune.report import (
    build_report,
    grouped,
    plot_curves,
    read_trials,
    smallest_matching_density,
)


def _write_sweep(folder, results):
    """One trial folder per (config overrides, final metrics) as Tune leaves it."""
    for over, final in results:
        (cfg,) = expand_space("smoke", {"sparsity.scheme": "erk", **over})
        key = run_key(cfg)
        (folder / key).mkdir(parents=True)
        entry = {"trial": {"flat": cfg.to_flat(), "run_key": key}}
        (folder / key / "params.json").write_text(json.dumps(entry, default=list))
        epochs = cfg.train.epochs
        rows = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, epochs)]
        rows.append({"epoch": epochs, "train_loss": 0.1, **final} if final else {"epoch": 1})
        (folder / key / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


ACC = [  # (density, seed, test accuracy)
    (1.0, 0, 0.90), (1.0, 1, 0.92),
    (0.5, 0, 0.905), (0.5, 1, 0.915),
    (0.1, 0, 0.80), (0.1, 1, 0.84),
]  # fmt: skip


@pytest.fixture
def sweep(tmp_path):
    folder = tmp_path / "smoke"
    results = [
        ({"sparsity.density": d, "seed": s}, {"test_acc": a, "test_ece": 0.05}) for d, s, a in ACC
    ]
    results.append(({"sparsity.density": 0.2, "seed": 0}, None))  # stopped after epoch 1
    _write_sweep(folder, results)
    return folder


def test_read_trials_gives_one_row_per_trial_with_its_status(sweep):
    rows = read_trials(sweep)
    assert len(rows) == len(ACC) + 1
    assert sorted(r["status"] for r in rows).count("unfinished") == 1
    finished = [r for r in rows if r["status"] == "finished"]
    assert {r["test_acc"] for r in finished} == {a for *_, a in ACC}
    assert all(r["epoch"] == 2.0 for r in finished)


def test_grouping_is_over_seeds_and_dense_is_its_own_reference(sweep):
    data = grouped(read_trials(sweep), "test_acc")
    (model,) = data
    mean, std, n = data[model]["dense"]
    assert (mean, n) == (pytest.approx(0.91), 2) and std == pytest.approx(0.0141421, rel=1e-4)
    points = {d: (m, n) for d, m, _, n in data[model]["erk"]}
    assert points == {0.1: (pytest.approx(0.82), 2), 0.5: (pytest.approx(0.91), 2)}


def test_the_smallest_matching_density_is_the_lowest_within_one_dense_std(sweep):
    (match,) = smallest_matching_density(read_trials(sweep))
    # 0.5 averages 0.91 >= 0.91 - 0.0141; 0.1 averages 0.82, below
    assert match["scheme"] == "erk" and match["smallest_matching_density"] == 0.5


def test_build_report_writes_the_table_and_the_figures(sweep, tmp_path):
    rep = build_report(sweep, tmp_path / "out")
    table = pq.read_table(rep["table"]).to_pylist()
    assert len(table) == rep["trials"] == len(ACC) + 1
    names = sorted(p.rsplit("/", 1)[-1] for p in rep["figures"])
    assert names == ["test_acc_vs_sparsity.png", "test_ece_vs_sparsity.png"]
    assert all((tmp_path / "out" / n).stat().st_size > 1000 for n in names)


def test_a_sweep_folder_that_is_not_there_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sweep at"):
        read_trials(tmp_path / "missing")


def test_training_curves_without_a_validation_split(tmp_path):
    """ImageNet trials have no validation split: the curves draw training only."""
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.1 * e, "lr": 0.1}
               for e in (1, 2, 3)]  # fmt: skip
    plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_report_reads_a_sweep_on_a_uri(tmp_path):
    from rp_tune.report import build_report

    sweep = tmp_path / "bucket" / "smoke"
    for cfg in expand_space("smoke"):
        key = run_key(cfg)
        (sweep / key).mkdir(parents=True)
        (sweep / key / "params.json").write_text(
            json.dumps({"trial": {"flat": cfg.to_flat(), "run_key": key}})
        )
        rows = [{"epoch": 1}, {"epoch": 2, "test_acc": 0.5, "test_ece": 0.1}]
        (sweep / key / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = build_report(sweep.as_uri(), tmp_path / "out")
    assert rep["trials"] == len(expand_space("smoke"))
    table = pq.read_table(rep["table"]).to_pylist()
    assert {r["status"] for r in table} == {"finished"} and {r["test_acc"] for r in table} == {0.5}


def test_the_aggregated_table_groups_by_everything_but_the_seed(tmp_path):
    """Trials that differ in more than the seed (here the classifier's density) are never
    averaged together; the CSV holds the table; one seed shows no spread."""
    from rp_tune.report import aggregate, aggregate_table

    folder = tmp_path / "smoke"
    results = [
        ({"sparsity.density": 0.5, "seed": s, "sparsity.classifier_density": c},
         {"test_acc": a, "test_ece": 0.1})
        for c, s, a in [(0.2, 0, 0.70), (0.2, 1, 0.72), (1.0, 0, 0.80), (1.0, 1, 0.84)]
    ]  # fmt: skip
    results.append(({"sparsity.density": 0.1, "seed": 0}, {"test_acc": 0.5, "test_ece": 0.2}))
    _write_sweep(folder, results)
    agg = aggregate(read_trials(folder))
    by = {(r["sparsity.density"], r.get("sparsity.classifier_density")): r for r in agg}
    assert by[(0.5, 0.2)]["seeds"] == 2 and by[(0.5, 0.2)]["test_acc_mean"] == pytest.approx(0.71)
    assert by[(0.5, 1.0)]["test_acc_mean"] == pytest.approx(0.82)
    assert by[(0.5, 1.0)]["test_acc_std"] == pytest.approx(0.0282843, rel=1e-4)
    text = aggregate_table(agg)
    assert "0.8200 ± 0.0283" in text and "classifier_den" in text
    assert "0.5000 ±" not in text  # the one-seed row: its mean alone
    rep = build_report(folder, tmp_path / "out")
    csv = (tmp_path / "out" / "aggregate.csv").read_text().splitlines()
    assert len(csv) == 1 + len(agg) and "test_acc_mean" in csv[0]
    assert rep["no_dense"] == ["cifar_resnet_8"]  # nothing to match: said, not left blank
