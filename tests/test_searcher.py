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
    assert size["trials"] == 10_000 and size["finished"] == 1 and size["driver_rc"] == 1
    assert size["first_start_s"] > 0 and size["ctrl_c_exit_s"] > 0 and size["driver_peak_mb"] > 0
    assert size["stored_trials"] == 10_000
    assert size["tune_state_kb"] < 1024, size  # a grid spec of 10,000 entries is megabytes
    assert store["values_stored"] == store["values_expected"] and store["left_pending"] == 0
