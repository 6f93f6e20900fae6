"""The searcher that hands Tune the planned trials (rp_tune.adapters.ray.searcher)."""

import pytest

from rp_tune.adapters.ray.searcher import PlannedTrials


def test_ten_thousand_planned_trials_are_suggested_once_each_in_order_and_resume(tmp_path):
    """Each entry once, in order, then FINISHED; the state saved midway is the next index
    only (not the entries), and a searcher restored from it goes on where this one stood."""
    entries = [{"run_key": f"k{i}", "flat": {"seed": i}} for i in range(10_000)]
    first = PlannedTrials(entries)
    assert first.set_search_properties(None, None, {"train_storage": "x"})
    got = [first.suggest(f"t{i}")["trial"]["run_key"] for i in range(6_000)]
    saved = tmp_path / "searcher.json"
    first.save(str(saved))
    assert saved.stat().st_size < 100
    again = PlannedTrials(entries)
    again.restore(str(saved))
    got += [again.suggest(f"t{i}")["trial"]["run_key"] for i in range(6_000, 10_000)]
    assert got == [e["run_key"] for e in entries]
    assert again.suggest("t10000") == PlannedTrials.FINISHED


@pytest.mark.slow
def test_a_ten_thousand_trial_sweep_reaches_tune_without_a_grid_and_its_benchmark_runs(capsys):
    """benchmarks/sweep_scale.py, reduced: a sweep of 10,000 trials (the smoke space over
    2,500 seeds) handed to Tune by the planned-trials searcher, stopped by Ctrl-C once one
    trial finished; then the tracker's rate on 2 trials x 3 epochs into SQLite. It runs and
    reports every number (none asserted: timings belong to the benchmark); Tune's state of
    10,000 trials stays small (no grid-search spec in it), and the sweep stored them all."""
    import json

    from benchmarks.sweep_scale import main

    args = ["--sizes", "10000", "--finish", "1", "--tracking-runs", "2",
            "--tracking-epochs", "3", "--store", "sqlite"]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    size, store = lines
    # Ctrl-C goes once one trial finished; more may finish before it lands on a busy machine
    assert size["trials"] == 10_000 and size["finished"] >= 1 and size["driver_rc"] == 1
    assert size["first_start_s"] > 0 and size["ctrl_c_exit_s"] > 0 and size["driver_peak_mb"] > 0
    assert size["stored_trials"] == 10_000
    assert size["tune_state_kb"] < 1024, size  # a grid spec of 10,000 entries is megabytes
    assert store["values_stored"] == store["values_expected"] and store["left_pending"] == 0


def _toy_search(tmp_path, parallel=2, group_size=1):
    """Two groups (two schemes of one model) sharing one dense reference, on the toy curve."""
    from rp_tune.adapters.ray.searcher import MatchingTrials
    from rp_tune.planning.matching import SearchSettings
    from rp_tune.planning.matching_plan import search_groups
    from rp_tune.planning.space import expand_space

    configs = expand_space("smoke", {"sparsity.density": [0.1, 0.5, 1.0], "train.epochs": 1})
    groups = search_groups(configs, "smoke")
    assert sorted(g.name for g in groups) == ["cifar_resnet_8 erk", "cifar_resnet_8 uniform"]
    assert len({g.dense.to_flat()["sparsity.scheme"] for g in groups}) == 1  # one reference
    settings = SearchSettings(parallel=parallel, seed_cap=2, dense_seeds=2)
    return MatchingTrials(
        groups, settings, str(tmp_path), "s", reuse=False, group_size=group_size,
        groups_dir=str(tmp_path / "_groups"),
    )  # fmt: skip


def test_the_search_trains_a_shared_dense_reference_once_and_resumes_from_its_state(tmp_path):
    """Every run key is handed to Tune once, however many groups ask for it (the dense
    reference of a model is each of its schemes'); a searcher restored from the saved state
    mid-search (a probe in flight) ends with the same results and trials as one run through;
    every probe is stored in trials.json before it starts, and search.json says where the
    search stands."""
    import json

    from rp_tune.planning.matching import toy_accuracy
    from rp_tune.planning.records import stored_trials

    def drive(searcher, start=0, stop=None):
        keys, n = [], start
        while stop is None or n < stop:
            got = searcher.suggest(f"t{n}")
            if got == PlannedTrials.FINISHED:
                return keys, n, True
            if got is None:  # waiting: finish what is in flight, oldest first
                tid = next(iter(searcher._in_flight))
                ((key, probes),) = searcher._in_flight[tid]
                g, density, seed = probes[0]
                acc = toy_accuracy(density, 1.0, seed, 0.01)
                searcher.on_trial_complete(tid, {"test_acc": acc})
                continue
            keys.append(got["trial"]["run_key"])
            n += 1
        return keys, n, False

    whole = _toy_search(tmp_path / "a")
    keys, _, done = drive(whole)
    assert done and len(keys) == len(set(keys))  # no run key twice
    dense = [k for k in keys if "-dense-" in k]
    assert len(dense) == 2  # seed cap 2, for both groups
    results = whole.results()
    assert all(r["done"] and r["hi"] / r["lo"] <= 1.25 + 1e-6 for r in results), results
    stored = [e["run_key"] for e in stored_trials(str(tmp_path / "a" / "s"))]
    assert stored == keys
    on_disk = json.loads((tmp_path / "a" / "s" / "search" / "search.json").read_text())
    assert [r["lo"] for r in on_disk["results"]] == [r["lo"] for r in results]

    half = _toy_search(tmp_path / "b")
    first, n, _ = drive(half, stop=7)
    assert half._in_flight  # killed with trials in flight
    state = tmp_path / "searcher.json"
    half.save(str(state))
    again = _toy_search(tmp_path / "b")
    again.restore(str(state))
    rest, _, done = drive(again, start=n)
    assert done and first + rest == keys
    assert again.results() == results


def test_a_search_whose_trials_finished_before_trains_none_and_says_where_it_stands(tmp_path):
    """The same search again under another name in the same results root: every probe is
    taken from the first sweep (its records copied in), Tune gets no trial, and the new
    sweep's search.json holds the same finished results."""
    import json

    from rp_tune.adapters.ray.searcher import MatchingTrials
    from rp_tune.config import trial_epochs
    from rp_tune.planning.matching import toy_accuracy
    from rp_tune.planning.records import stored_trials

    first = _toy_search(tmp_path)  # root tmp_path, sweep "s"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "trials.json").write_text("[]")  # as the driver starts a search
    n = 0
    while (got := first.suggest(f"t{n}")) != PlannedTrials.FINISHED:
        if got is None:
            tid = next(iter(first._in_flight))
            ((key, probes),) = first._in_flight[tid]
            g, density, seed = probes[0]
            acc = toy_accuracy(density, 1.0, seed, 0.01)
            flat = first.entry(*probes[0])["flat"]
            folder = tmp_path / "s" / key  # the trial's record, as Tune writes it
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(
                json.dumps({"epoch": trial_epochs(flat), "test_acc": acc}) + "\n"
            )
            first.on_trial_complete(tid, {"test_acc": acc})
        n += 1
    again = MatchingTrials(first.groups, first.settings, str(tmp_path), "s2", reuse=True)
    assert again.suggest("u0") == PlannedTrials.FINISHED
    on_disk = json.loads((tmp_path / "s2" / "search" / "search.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(first.results()))
    reused = stored_trials(str(tmp_path / "s2"))
    assert {e["reused_from"] for e in reused} == {"s"}
    assert len(reused) == len(stored_trials(str(tmp_path / "s")))


def test_with_a_group_size_a_rounds_probes_train_as_trial_groups_and_end_as_alone(tmp_path):
    """--group-size 4: the probes queued at once (the dense seeds, each scheme's round) go to
    Tune as trial groups of up to 4 whose members are the probes' own trials (params.json,
    group.json, the members' file); each member's reported test accuracy reaches its
    search, one that reported none counts as failed; the search ends as it does alone."""
    import json

    from rp_tune.planning.matching import toy_accuracy

    def acc_of(searcher, key):
        for pairs in searcher._in_flight.values():
            for k, probes in pairs:
                if k == key:
                    return toy_accuracy(probes[0][1], 1.0, probes[0][2], 0.01)
        raise KeyError(key)

    def drive(searcher, fail=("-",)):
        units, n = [], 0
        while (got := searcher.suggest(f"t{n}")) != PlannedTrials.FINISHED:
            n += 1
            if got is not None:
                units.append(got["trial"])
                continue
            tid = next(iter(searcher._in_flight))
            keys = [k for k, _ in searcher._in_flight[tid]]
            for k in keys:  # a group reports each member's rows, named by its run key
                if not k.startswith(fail):
                    searcher.on_trial_result(tid, {"run_key": k, "test_acc": acc_of(searcher, k)})
            last = {"run_key": keys[-1], "test_acc": acc_of(searcher, keys[-1])}
            searcher.on_trial_complete(tid, last)
        return units

    alone = _toy_search(tmp_path / "a", parallel=2)
    drive(alone)
    fused = _toy_search(tmp_path / "b", parallel=2, group_size=4)
    units = drive(fused)
    groups = [u for u in units if "members" in u]
    assert groups and all(2 <= len(u["members"]) <= 4 for u in groups)
    first = groups[0]  # the dense reference's two seeds and both schemes' low bound
    assert len(first["members"]) == 4 and first["run_key"].startswith("group-cifar_resnet_8")
    members = json.loads(open(first["group_file"]).read())
    assert [m["run_key"] for m in members] == first["members"]
    sweep = tmp_path / "b" / "s"
    for key in first["members"]:
        assert json.loads((sweep / key / "group.json").read_text())["group"] == first["run_key"]
    assert fused.results() == alone.results()

    failing = _toy_search(tmp_path / "c", parallel=2, group_size=4)
    (tmp_path / "c" / "s").mkdir(parents=True)
    drive(failing, fail=("cifar_resnet_8-erk-d0.01-s0-",))  # reported no test accuracy
    erk = next(r for r in failing.results() if r["group"] == "cifar_resnet_8 erk")
    assert erk["done"] and erk["failed"] == 1 and erk["failed_densities"] == []  # seed 1 ran
