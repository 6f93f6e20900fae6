"""The searcher that hands Tune the planned trials (rp_tune.adapters.ray.searcher)."""

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
