"""The matching-density search run as a user runs it: `run_sweep.py --search matching`
through Ray Tune, on toy trials (a known accuracy curve, no training: `--toy-trials`) and
as a real, short ResNet-8 search on synthetic data."""

import csv
import json
import signal
import time

import pytest

from rp_tune.planning.records import all_results
from tests.helpers import cli, driver, incli

ARGS = ["--space", "smoke", "--search", "matching", "--grid", "sparsity.scheme=erk",
        "--grid", "sparsity.density=0.1,0.5", "--search-set", "seed_cap=2",
        "--search-set", "dense_seeds=2", "--search-set", "parallel=4",
        "--toy-trials", "0.01", "--num-cpus", "2", "--max-concurrent", "4",
        "--group-size", "4", "--set", "train.epochs=4", "--no-tracking"]  # fmt: skip


def _expected():
    """The same search in this process, without Ray: what the sweep must end with."""
    from rp_tune.adapters.ray.searcher import MatchingTrials
    from rp_tune.adapters.ray.toy import toy_width
    from rp_tune.planning.matching import SearchSettings, toy_accuracy
    from rp_tune.planning.matching_plan import search_groups
    from rp_tune.planning.space import expand_space

    configs = expand_space("smoke", {"sparsity.scheme": ["erk"], "sparsity.density": [0.1, 0.5]})
    groups = search_groups(configs, "smoke")
    settings = SearchSettings(seed_cap=2, dense_seeds=2, parallel=4)  # 4 probes: rounds to stop
    searcher = MatchingTrials(groups, settings, "/nonexistent", "x", reuse=False)
    searcher._store = lambda entry: None
    n = 0
    while (got := searcher.suggest(f"t{n}")) != MatchingTrials.FINISHED:
        if got is None:
            tid = next(iter(searcher._in_flight))
            ((_, (probe, *_)),) = searcher._in_flight[tid]
            g, density, seed = probe
            cfg = groups[g].probe(density, seed)
            acc = toy_accuracy(
                density, toy_width(cfg.model.name, cfg.sparsity.scheme), cfg.seed, 0.01
            )
            searcher.on_trial_complete(tid, {"test_acc": acc})
        n += 1
    return searcher.results()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl_c", "kill"])
def test_a_search_stopped_resumes_where_it_stood_and_ends_as_one_run_through(
    tmp_path, capsys, stop
):
    """A toy search of one group (ResNet-8, ERK) on Ray Tune, its rounds' probes fused in
    trial groups of up to 4, stopped after some probes finished, by Ctrl-C (exit 1 with the
    --resume line) or by SIGKILL of the driver (its Ray left running); --resume continues
    the search (no trial trained twice) and ends with the bracket, seeds and trials of the
    same search run in one go (computed here without Ray); --status reads it."""
    res = tmp_path / "res"
    proc = driver(*ARGS, "--storage", str(res), stdout=tmp_path / "first.out")
    sweep = res / "smoke"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            done = list(sweep.glob("*/result.json"))
            if sum(f.read_text().count('"test_acc"') for f in done) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT if stop == "ctrl_c" else signal.SIGKILL)
        assert proc.wait(timeout=120) == (1 if stop == "ctrl_c" else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = (tmp_path / "first.out").read_text()
    if stop == "ctrl_c":
        assert "continue it with:" in first and "--resume" in first, first[-2000:]
    state = json.loads((sweep / "search" / "search.json").read_text())
    assert state["results"] and not state["results"][0]["done"]  # stopped part-way

    r = cli(*ARGS, "--storage", str(res), "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((sweep / "search" / "search.json").read_text())["results"]
    expected = _expected()
    assert [x["done"] for x in results] == [True]
    for key in ("lo", "hi", "trials", "fail_side", "match_side", "dense_acc_mean"):
        assert results[0][key] == expected[0][key], (key, results[0], expected[0])
    # each probe trained once: one trial folder per run key, its epochs reported once each
    stored = json.loads((sweep / "search" / "trials.json").read_text())
    assert len(stored) == len({e["run_key"] for e in stored}) == results[0]["trials"]
    for e in stored:  # a group member's rows are in its group's result.json
        rows = all_results(str(sweep / e["run_key"]))
        assert [row["epoch"] for row in rows] == [1, 2, 3, 4], (e["run_key"], rows)
    units = [p for p in sweep.iterdir() if p.name.startswith("group-")]
    assert units, "no probes trained as trial groups"  # --group-size 4
    assert "cifar_resnet_8 erk" in r.stdout and f"({expected[0]['lo']}, " in r.stdout

    status = incli(capsys, *ARGS, "--storage", str(res), "--status")
    assert status.returncode == 0 and f"finished: {len(stored)}" in status.stdout
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith("cifar_resnet_8 erk"))
    assert f"({expected[0]['lo']}, {expected[0]['hi']}]" in line, status.stdout


@pytest.mark.slow
def test_a_real_resnet8_search_trains_each_probe_as_a_trial_and_reports_its_bracket(
    tmp_path, capsys
):
    """A real search (ResNet-8 on the smoke space's synthetic data, CPU), coarse so that it
    is short: the dense reference's 2 seeds, then probes on the grid 0.05 .. 1 at a factor
    of 3. Every probe is an ordinary trial with its MLflow child run; the end-of-run table,
    --report (the bracket table, matching_brackets.csv, the phase diagram) and the MLflow
    parent run's report/ agree with the search's own answer."""
    from mlflow.tracking import MlflowClient

    from rp_tune.adapters.mlflow.states import find_parent_run

    res, uri = tmp_path / "res", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--space", "smoke", "--search", "matching", "--grid", "sparsity.scheme=erk",
            "--grid", "sparsity.density=0.1,0.5", "--search-set", "low=0.05",
            "--search-set", "resolution=3", "--search-set", "seed_cap=1",
            "--search-set", "dense_seeds=2", "--num-cpus", "2", "--max-concurrent", "2",
            "--storage", str(res), "--tracking-uri", uri]  # fmt: skip
    r = cli(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sweep = res / "smoke"
    (result,) = json.loads((sweep / "search" / "search.json").read_text())["results"]
    assert result["done"] and result["hi"] is not None, result
    stored = json.loads((sweep / "search" / "trials.json").read_text())
    assert len(stored) == result["trials"] and result["trials"] <= 2 + 3  # dense + the grid
    assert all(e["flat"]["sparsity.density"] in (0.05, 0.1357, 0.3684, 1.0) for e in stored)
    client = MlflowClient(uri)
    parent = find_parent_run(client, str(sweep))
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
    )
    assert sorted(c.data.tags["rp_tune.run_key"] for c in children) == sorted(
        e["run_key"] for e in stored
    )

    rep = incli(capsys, *args, "--report")
    assert rep.returncode == 0, rep.stdout[-3000:]
    lo, hi = result["lo"], result["hi"]  # the search counts dense (1.0) as a match
    want = {None: f"<= {hi} (all matched)"}.get(lo, f"({lo}, {hi}]")
    want = f"> {lo} (none matched)" if hi == 1.0 else want
    line = next(ln for ln in rep.stdout.splitlines() if ln.startswith("cifar_resnet_8 erk  "))
    assert want in line, rep.stdout[-3000:]
    with open(sweep / "report" / "matching_brackets.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["source"] == "search" and float(row["match_density"] or 1.0) == hi
    assert (sweep / "report" / "matching_phase.png").stat().st_size
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/matching_brackets.csv", "report/matching_phase.png"} <= logged
