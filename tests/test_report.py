"""The report from a sweep's storage: the table, grouping over seeds, the matching density,
the figures; tested on sweep folders written as Tune writes them (params.json, result.json)."""

import json

import pyarrow.parquet as pq
import pytest

from rp_tune.adapters.mlflow.curves import plot_curves
from rp_tune.config import run_key
from rp_tune.planning.space import expand_space
from rp_tune.results.grouping import dense_reference, groups
from rp_tune.results.report import build_report
from rp_tune.results.sweep_rows import read_trials
from rp_tune.results.tables import aggregate, smallest_matching_density


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
    all_groups = groups(read_trials(sweep))
    dense = [g for g in all_groups if g.dense]
    assert len(dense) == 1
    mean, std, n = dense[0].stat("test_acc")
    assert (mean, n) == (pytest.approx(0.91), 2) and std == pytest.approx(0.0141421, rel=1e-4)
    points = {g.density: g.stat("test_acc")[::2] for g in all_groups if g.label == "erk"}
    assert points == {0.1: (pytest.approx(0.82), 2), 0.5: (pytest.approx(0.91), 2)}
    assert all(dense_reference(g, all_groups) is dense[0] for g in all_groups)


def test_the_smallest_matching_density_is_the_lowest_within_one_dense_std(sweep):
    (match,) = smallest_matching_density(read_trials(sweep))
    # 0.5 averages 0.91 >= 0.91 - 0.0141; 0.1 averages 0.82, below
    assert match["scheme"] == "erk" and match["smallest_matching_density"] == 0.5


def test_build_report_writes_the_table_and_the_figures(sweep, tmp_path):
    rep = build_report(sweep, tmp_path / "out")
    table = pq.read_table(rep["table"]).to_pylist()
    assert len(table) == rep["trials"] == len(ACC) + 1
    assert all(r["device"] == "CPU" and r["retry_seconds"] == 0.0 for r in table)  # cost
    names = sorted(p.rsplit("/", 1)[-1] for p in rep["figures"])
    assert names == ["test_acc_vs_sparsity.png", "test_ece_vs_sparsity.png"]
    assert all((tmp_path / "out" / n).stat().st_size > 1000 for n in names)
    (panel,) = rep["drawn"]["test_acc_vs_sparsity.png"]
    assert panel["xlabel"] == "sparsity (1 - density)" and panel["ylabel"] == "test accuracy"
    assert panel["series"] == ["dense (n=2)", "erk (n=2)"]


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
    from rp_tune.results.report import build_report

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
    from rp_tune.results.tables import aggregate, aggregate_table

    folder = tmp_path / "smoke"
    results = [
        ({"sparsity.density": 0.5, "seed": s, "sparsity.classifier_density": c},
         {"test_acc": a, "test_ece": 0.1})
        for c, s, a in [(0.2, 0, 0.70), (0.2, 1, 0.72), (1.0, 0, 0.80), (1.0, 1, 0.84)]
    ]  # fmt: skip
    # only the last group has an FGSM number: its column is still in the CSV
    results.append(({"sparsity.density": 0.1, "seed": 0},
                    {"test_acc": 0.5, "test_ece": 0.2, "fgsm_acc": 0.25}))  # fmt: skip
    _write_sweep(folder, results)
    agg = aggregate(read_trials(folder))
    by = {(r["sparsity.density"], r.get("sparsity.classifier_density")): r for r in agg}
    assert by[(0.5, 0.2)]["n"] == 2 and by[(0.5, 0.2)]["test_acc_mean"] == pytest.approx(0.71)
    assert by[(0.5, 1.0)]["test_acc_mean"] == pytest.approx(0.82)
    assert by[(0.5, 1.0)]["test_acc_std"] == pytest.approx(0.0282843, rel=1e-4)
    text = aggregate_table(agg)
    assert "0.8200 ± 0.0283" in text and "classifier_den" in text and " n " in text
    assert "0.5000 ±" not in text  # the one-seed row: its mean alone
    rep = build_report(folder, tmp_path / "out")
    csv = (tmp_path / "out" / "aggregate.csv").read_text().splitlines()
    assert len(csv) == 1 + len(agg) and "test_acc_mean" in csv[0]
    assert '"fgsm_acc_mean"' in csv[0] and csv[-1].count(",0.25,") == 1
    assert rep["no_dense"] == ["cifar_resnet_8"]  # nothing to match: said, not left blank
    (panel,) = rep["drawn"]["test_acc_vs_sparsity.png"]  # a line per classifier density
    assert panel["series"] == [
        "erk, classifier_density=0.2 (n=2)",
        "erk, classifier_density=1.0 (n=2)",
        "erk, classifier_density=default (n=1)",
    ]


def _row(model, scheme, density, seed, acc, **keys):
    """A finished trial as the report reads it (flat config keys, final metrics)."""
    return {"run_key": f"{model}-{scheme}-{density}-{seed}-{sorted(keys.items())}",
            "status": "finished", "model.name": model, "sparsity.scheme": scheme,
            "sparsity.density": density, "seed": seed, "test_acc": acc, **keys}  # fmt: skip


def test_trials_on_two_data_sets_are_never_averaged_and_each_has_its_own_dense(tmp_path):
    """A scheme sweep over CIFAR-10 and CIFAR-100: two panels, each with its own dense
    reference and matching density; no group mixes the data sets; n shown beside each."""
    rows = []
    for data, base in (("cifar10", 0.90), ("cifar100", 0.60)):
        for seed, jitter in ((0, 0.0), (1, 0.02)):
            rows.append(_row("m", "uniform", 1.0, seed, base + jitter, **{"data.name": data}))
            rows.append(_row("m", "erk", 0.5, seed, base + jitter, **{"data.name": data}))
            rows.append(_row("m", "erk", 0.1, seed, base - 0.2, **{"data.name": data}))
    all_groups = groups(rows)
    assert len(all_groups) == 6 and all(g.n == 2 for g in all_groups)
    assert all(len({r["data.name"] for r in g.rows}) == 1 for g in all_groups)
    for g in all_groups:
        assert dense_reference(g, all_groups).rows[0]["data.name"] == g.rows[0]["data.name"]
    match = {m["data.name"]: m for m in smallest_matching_density(rows)}
    assert match["cifar10"]["dense_acc_mean"] == pytest.approx(0.91)
    assert match["cifar100"]["dense_acc_mean"] == pytest.approx(0.61)
    assert {m["smallest_matching_density"] for m in match.values()} == {0.5}
    agg = {(r["data.name"], r["sparsity.density"]): r for r in aggregate(rows)}
    assert agg[("cifar100", 0.5)]["test_acc_mean"] == pytest.approx(0.61)
    assert agg[("cifar100", 0.5)]["n"] == 2
    from rp_tune.results.figures import plot_vs_sparsity

    drawn = plot_vs_sparsity(rows, "test_acc", "test accuracy", tmp_path / "acc.png")
    assert [p["title"] for p in drawn] == ["m, name=cifar10", "m, name=cifar100"]
    assert all(p["series"] == ["dense (n=2)", "erk (n=2)"] for p in drawn)


def test_a_classifier_density_sweep_keeps_one_group_per_classifier_density():
    """Fig. 14 left: five classifier densities at one overall density are five groups, each
    matched against the one dense model (which has no classifier density of its own)."""
    rows = [_row("w", "uniform", 1.0, s, 0.78) for s in (0, 1)]
    for c, acc in ((0.2, 0.744), (0.5, 0.746), (0.6, 0.748), (0.9, 0.75), (1.0, 0.752)):
        rows += [_row("w", "erk_plus", 0.3, s, acc, **{"sparsity.fc_density": c}) for s in (0, 1)]
    all_groups = [g for g in groups(rows) if not g.dense]
    assert len(all_groups) == 5
    assert sorted(dict(g.line)["sparsity.fc_density"] for g in all_groups) == [
        0.2, 0.5, 0.6, 0.9, 1.0
    ]  # fmt: skip
    matches = smallest_matching_density(rows)
    assert len(matches) == 5 and {m["dense_n"] for m in matches} == {2}


def test_dense_imagenet_nets_on_their_own_recipe_are_the_sparse_ones_reference(tmp_path):
    """Liu et al. Table 1: dense ImageNet nets train 90 epochs (decay 30/60/80), sparse ones
    100 (30/60/90). In the imagenet_wrn50 space the dense Wide ResNet-50-2 is still the
    reference of the sparse ones (one panel, a matching density), and stays one group."""
    folder = tmp_path / "imagenet_wrn50"
    cfgs = {(c.model.name, c.sparsity.scheme, c.sparsity.density): c
            for c in expand_space("imagenet_wrn50")}  # fmt: skip
    dense = cfgs[("wide_resnet50_2", "uniform", 1.0)]
    assert (dense.train.epochs, dense.train.milestones) == (90, (30, 60, 80))
    sparse = cfgs[("wide_resnet50_2", "erk", 0.3)]
    assert (sparse.train.epochs, sparse.train.milestones) == (100, (30, 60, 90))
    for cfg, acc in ((dense, 0.78), (sparse, 0.745), (cfgs[("wide_resnet50_2", "erk", 0.4)], 0.79)):
        key = run_key(cfg)
        (folder / key).mkdir(parents=True)
        entry = {"trial": {"flat": cfg.to_flat(), "run_key": key}}
        (folder / key / "params.json").write_text(json.dumps(entry, default=list))
        last = {"epoch": cfg.train.epochs, "test_acc": acc}
        (folder / key / "result.json").write_text(json.dumps(last) + "\n")
    rows = read_trials(folder)
    all_groups = groups(rows)
    assert len(all_groups) == 3 and len({g.panel for g in all_groups}) == 1
    (match,) = smallest_matching_density(rows)
    assert match["smallest_matching_density"] == 0.4 and match["dense_acc_mean"] == 0.78


def _write_configs(folder, cfgs):
    for i, cfg in enumerate(cfgs):
        key = run_key(cfg)
        (folder / key).mkdir(parents=True)
        entry = {"trial": {"flat": cfg.to_flat(), "run_key": key}}
        (folder / key / "params.json").write_text(json.dumps(entry, default=list))
        last = {"epoch": cfg.train.epochs, "test_acc": 0.5 + i / 100}
        (folder / key / "result.json").write_text(json.dumps(last) + "\n")


def test_the_report_names_the_files_that_show_each_figure_of_the_space(tmp_path, capsys):
    """width_multiplier serves Fig. 7: its smoke trials (two widths) give test accuracy vs
    width, and the report says so; a sweep whose trials do not fit says why not."""
    from rp_tune.results.report import print_report

    cfgs = expand_space("width_multiplier", smoke=True)
    _write_configs(tmp_path / "both" / "width_multiplier", cfgs)
    rep = build_report(tmp_path / "both" / "width_multiplier", tmp_path / "out",
                       space="width_multiplier")  # fmt: skip
    fig7 = [str(tmp_path / "out" / "test_acc_vs_width.png")]
    assert rep["paper_figures"] == {"Liu et al. Fig. 7": fig7}
    print_report(rep)
    assert "Liu et al. Fig. 7: test_acc_vs_width.png" in capsys.readouterr().out
    one_width = [c for c in cfgs if c.model.name == "cifar_resnet_8"]
    _write_configs(tmp_path / "one" / "width_multiplier", one_width)
    print_report(build_report(tmp_path / "one" / "width_multiplier", tmp_path / "out2",
                              space="width_multiplier"))  # fmt: skip
    out = capsys.readouterr().out
    assert "Liu et al. Fig. 7: not drawn - the finished trials do not fit it" in out


def _paper_rows(key: str, accs, **flat):
    """Finished rows as the report reads them (the whole flat config, tuples joined), one
    per seed, of a CIFAR-10 ResNet-20 in Liu et al.'s recipe unless `flat` says otherwise."""
    from rp_tune.config import from_flat

    rows = []
    for seed, acc in enumerate(accs):
        cfg = from_flat(
            {
                "model.name": "cifar_resnet_20",
                "data.name": "cifar10",
                "sparsity.scheme": "erk",
                "sparsity.density": 0.5,
                **flat,
                "seed": seed,
            }
        )
        row = {
            k: ",".join(map(str, v)) if isinstance(v, tuple) else v
            for k, v in cfg.to_flat().items()
        }
        rows.append({**row, "run_key": f"{key}{seed}", "status": "finished", "test_acc": acc})
    return rows


def test_ours_beside_the_papers_numbers_only_in_the_papers_setting():
    """A group in the paper's whole setting sits beside its number with the difference; a
    dense ResNet-20 has two references, and only Liu et al.'s recipe is ours (He et al.
    trained 64k iterations at weight decay 1e-4 on all 50k images): beside He et al.'s number
    it is shown with those keys named and no difference."""
    from rp_tune.results.paper_numbers import beside_the_paper, comparison_table

    rows = _paper_rows("e", (0.915, 0.917)) + _paper_rows("d", (0.92,), **{"sparsity.density": 1.0})
    got = {(r["source"].split(" (")[0], r["scheme"]): r for r in beside_the_paper(rows)}
    assert sorted(got) == [
        ("He et al. 2016", "dense"),
        ("Liu et al. Fig. 6", "dense"),
        ("Liu et al. Fig. 6", "erk"),
    ]
    erk = got[("Liu et al. Fig. 6", "erk")]
    assert erk["paper"] == 91.57 and erk["n"] == 2 and erk["epochs"] == "160"
    assert erk["ours_mean"] == pytest.approx(91.6) and erk["difference"] == pytest.approx(0.03)
    assert erk["setting"] == "paper's" and erk["differs"] == ""
    assert got[("Liu et al. Fig. 6", "dense")]["difference"] == pytest.approx(-0.37)
    he = got[("He et al. 2016", "dense")]
    assert he["setting"] == "differs" and he["difference"] is None
    for key in (
        "train.epochs 160 (paper 164)",
        "train.weight_decay 0.0005 (paper 0.0001)",
        "train.nesterov True (paper False)",
        "data.val_fraction 0.1 (paper 0)",
    ):
        assert key in he["differs"]
    text = comparison_table(beside_the_paper(rows))
    assert "91.60 ± 0.14 (2)" in text and "+0.03" in text and "-0.37" in text
    assert "not the paper's setting: " in text and "+0.75" not in text  # He et al.: no gap


def test_a_classifier_density_or_a_shorter_recipe_is_named_and_never_a_gap():
    """Three ResNet-20s at ERK 0.5 with the classifier at density 0.2 (0.70, 0.71, 0.72) are
    not Liu et al.'s Fig. 6 trial: the row names the key, and no -20.57 is printed. A
    two-epoch smoke run likewise names its recipe."""
    from rp_tune.results.paper_numbers import beside_the_paper, comparison_table

    rows = _paper_rows("c", (0.70, 0.71, 0.72), **{"sparsity.classifier_density": 0.2})
    (row,) = beside_the_paper(rows)
    assert (row["paper"], row["n"], row["setting"]) == (91.57, 3, "differs")
    assert row["difference"] is None and row["ours_mean"] == pytest.approx(71.0)
    assert row["differs"] == "sparsity.classifier_density 0.2 (paper none)"
    text = comparison_table([row])
    assert "-20.57" not in text and "71.00 ± 1.00 (3)" in text
    assert "not the paper's setting: sparsity.classifier_density 0.2 (paper none)" in text
    assert "no group was trained in a paper's setting" in text
    short = _paper_rows("s", (0.5, 0.52), **{"train.epochs": 2, "train.milestones": (1,)})
    (row,) = beside_the_paper(short)
    assert row["difference"] is None and row["epochs"] == "2"
    assert "train.epochs 2 (paper 160)" in row["differs"]
    assert "train.milestones 1 (paper 80,120)" in row["differs"]
    # train.batch_size is per worker: two workers train batches of 256, not the paper's 128
    (row,) = beside_the_paper(_paper_rows("w", (0.91, 0.92), **{"resources.workers": 2}))
    assert row["differs"] == "resources.workers 2 (paper 1)"


def test_another_data_set_has_no_paper_number():
    from rp_tune.results.paper_numbers import beside_the_paper

    assert beside_the_paper(_paper_rows("x", (0.6, 0.61), **{"data.name": "cifar100"})) == []


def test_a_row_without_a_newer_key_counts_as_its_default():
    """A sweep of a release before a setting key existed ran with its default: it still
    reproduces the paper's setting."""
    from rp_tune.results.paper_numbers import beside_the_paper

    rows = [
        {k: v for k, v in r.items() if k != "sparsity.classifier_density"}
        for r in _paper_rows("o", (0.915, 0.917))
    ]
    (row,) = beside_the_paper(rows)
    assert row["setting"] == "paper's" and row["difference"] == pytest.approx(0.03)


def _s2s_rows(space):
    """A finished row per trial of a sparse-to-sparse space, with made-up results: accuracy
    and training FLOPs that fall with the start's density, and a little with the seed."""
    rows = []
    for cfg in expand_space(space):
        flat = cfg.to_flat()
        start = flat.get("sparsity.start_density", 1.0)
        rows.append({**flat, "run_key": run_key(cfg), "status": "finished",
                     "test_acc": 0.8 + 0.1 * start + 0.01 * cfg.seed,
                     "test_acc_best_val": 0.79 + 0.1 * start,
                     "train_flops_sparse": 1e15 * start * (1 + 0.01 * cfg.seed)})  # fmt: skip
    return rows


@pytest.mark.parametrize(
    "space,method,expected",
    [
        ("slt_sparse_to_sparse", "slt", {0.2: ["dense", "er 0.5"],
                                         0.1: ["dense", "er 0.5", "er 0.3"],
                                         0.05: ["dense", "er 0.5", "er 0.2"],
                                         0.01: ["dense", "er 0.5"]}),
        ("granet_sparse_to_sparse", "granet", {0.01: ["dense", "erk 0.5", "pyramidal 0.1",
                                                      "balanced 0.05"]}),
        ("imp_sparse_to_sparse", "imp", {d: ["dense", "balanced 0.5", "er 0.5", "balanced 0.2",
                                            "er 0.2"] for d in (0.05, 0.02)}),
    ],
)  # fmt: skip
def test_the_report_puts_each_methods_dense_and_random_starts_side_by_side(
    tmp_path, space, method, expected
):
    from rp_tune.results.figures import plot_sparse_to_sparse, sparse_to_sparse
    from rp_tune.results.tables import sparse_to_sparse_table

    rows = _s2s_rows(space)
    starts = sparse_to_sparse(rows)
    models = sorted({r["model.name"] for r in rows})
    assert {r["method"] for r in starts} == {method}
    for model in models:
        mine = [r for r in starts if r["model.name"] == model]
        by_density = {}
        for r in mine:
            by_density.setdefault(r["density"], []).append(r["start"])
        assert by_density == expected  # the dense start first, then the sources, densest first
        for r in mine:
            start = r["start_density"]
            assert r["test_acc_n"] == 3  # mean ± std over the 3 seeds
            assert r["test_acc_mean"] == pytest.approx(0.8 + 0.1 * start + 0.01)
            assert r["test_acc_std"] == pytest.approx(0.01)
            assert r["test_acc_best_val_mean"] == pytest.approx(0.79 + 0.1 * start)
            assert r["train_flops_sparse_mean"] == pytest.approx(1e15 * start * 1.01)
            assert r["train_flops_vs_dense_start"] == pytest.approx(start)
    text = sparse_to_sparse_table(starts)
    assert len(text.splitlines()) == 2 + len(starts)
    assert f"{models[0]:<22} {method:<7}" in text and "0.9100 ± 0.0100 (3)" in text
    panels = plot_sparse_to_sparse(rows, None, tmp_path / "s2s.png")
    assert (tmp_path / "s2s.png").stat().st_size > 1000
    assert len(panels) == 2 * len(models)  # accuracy and FLOPs per model
    acc = panels[0]
    assert acc["xlabel"] == "final density" and acc["xscale"] == "log"
    starts_drawn = {s for d in expected.values() for s in d}
    assert sorted(acc["series"]) == sorted(
        f"{'dense' if s == 'dense' else s} start (n=3)" for s in starts_drawn
    )
    xs, ys = acc["points"]["dense start (n=3)"]
    assert sorted(xs, reverse=True) == sorted(expected, reverse=True)
    assert ys == pytest.approx([0.91] * len(xs))
