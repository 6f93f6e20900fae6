"""The matching-density criterion and search (rp_tune.planning.matching), on a known curve."""

import json

import pytest

from rp_tune.planning.matching import (
    MatchingSearch,
    SearchSettings,
    matches,
    toy_accuracy,
    toy_crossing,
)


def _run(settings, width, noise, stop_after=None):
    """The search to its end (or `stop_after` rounds) on the toy curve; noise None: a
    noise-free sparse curve and a dense reference of 0.91, 0.92, 0.93 (threshold 0.91,
    where the curve crosses at `toy_crossing(width, 0.01)`)."""
    search = MatchingSearch(settings)
    for _ in range(100):
        if stop_after is not None and search.rounds >= stop_after:
            return search
        todo = search.plan_round()
        if not todo:
            break
        for density, seed in todo:
            if noise is None:
                acc = 0.91 + 0.01 * seed if density == 1.0 else toy_accuracy(density, width, 0, 0)
            else:
                acc = toy_accuracy(density, width, seed, noise)
            search.record(density, seed, acc)
    return search


def test_the_criterion_is_the_reports_dense_mean_less_its_std():
    assert matches(0.90, 0.92, 0.02) and matches(0.95, 0.92, 0.02)
    assert not matches(0.8999, 0.92, 0.02)
    assert matches(0.92, 0.92, 0.0)  # the dense reference matches itself


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"low": 0.0}, r"low=0.0 is invalid; valid: in \(0, 1\]"),
        ({"high": 1.5}, r"high=1.5 is invalid; valid: in \(0, 1\]"),
        ({"low": 0.5, "high": 0.2}, "low=0.5 >= high=0.2"),
        ({"resolution": 1.0}, "resolution 1.0 is invalid; valid: a factor > 1"),
        ({"seed_cap": 0}, "seed cap 0 is invalid; valid: integers >= 1"),
        ({"parallel": -1}, r"parallel -1 is invalid; valid: integers >= 0 \(0: auto\)"),
    ],
)
def test_bad_search_settings_name_the_value_and_the_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(**kwargs)


@pytest.mark.parametrize("width", [1.0, 2.5, 6.0])
def test_a_quiet_curve_is_bracketed_to_the_resolution_for_a_third_of_a_grids_trials(width):
    settings = SearchSettings()
    r = _run(settings, width, noise=None).result()
    truth = toy_crossing(width, 0.01)
    assert r["done"] and r["lo"] < truth <= r["hi"], (truth, r)
    assert r["hi"] / r["lo"] <= 1.25 + 1e-6
    assert r["found"] == f"smallest matching density in ({r['lo']}, {r['hi']}]"
    assert r["sparsity_bracket"] == (1 - r["hi"], 1 - r["lo"])
    assert r["grid_trials"] == 66 and r["trials"] * 3 <= r["grid_trials"], r
    assert r["match_side"]["seeds"] == r["fail_side"]["seeds"] == 3  # both sides confirmed


def test_more_parallel_slots_take_fewer_rounds():
    four = _run(SearchSettings(parallel=4), 3.0, None).result()
    one = _run(SearchSettings(parallel=1), 3.0, None).result()
    assert one["done"] and four["done"]
    assert four["rounds"] < one["rounds"]
    assert four["hi"] / four["lo"] <= 1.25 + 1e-6 and one["hi"] / one["lo"] <= 1.25 + 1e-6


def test_a_point_too_close_to_call_gets_seeds_up_to_the_cap_and_no_more():
    settings = SearchSettings(seed_cap=3, dense_seeds=3)
    search = MatchingSearch(settings)
    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        search.record(1.0, seed, acc)  # threshold 0.90
    search.record(0.3, 0, 0.900)
    assert search.call(0.3) == "unsure"
    search.record(0.3, 1, 0.898)
    search.record(0.3, 2, 0.899)
    assert search.call(0.3) == "fail"  # at the cap: called by its mean, 0.899 < 0.90
    r = search.result()
    assert r["fail_side"]["seeds"] == 3 and r["fail_side"]["at_cap"]
    search.record(0.3, 1, 0.5)  # a result already recorded is not counted twice
    assert search.result()["fail_side"]["acc_mean"] == pytest.approx(0.899, abs=1e-9)


def test_a_search_stopped_and_restored_from_its_state_ends_where_one_run_through_ends():
    settings = SearchSettings(parallel=3)
    whole = _run(settings, 4.0, 0.01).result()
    half = _run(settings, 4.0, 0.01, stop_after=2)
    todo = half.plan_round()  # handed out, then the driver is killed before any result
    assert todo
    again = MatchingSearch.from_state(settings, json.loads(json.dumps(half.state())))
    assert again.plan_round() == []  # the outstanding round is still out: nothing new
    for density, seed in sorted(again.outstanding):
        again.record(density, seed, toy_accuracy(density, 4.0, seed, 0.01))
    for _ in range(100):
        nxt = again.plan_round()
        if not nxt:
            break
        for density, seed in nxt:
            again.record(density, seed, toy_accuracy(density, 4.0, seed, 0.01))
    assert again.result() == whole


def test_the_bounds_decide_a_curve_that_matches_everywhere_or_nowhere():
    low = _run(SearchSettings(low=0.2), 6.0, None).result()  # crossing ~0.03 < 0.2
    assert low["found"] == "matches at the low bound: smallest matching density <= 0.2"
    high = _run(SearchSettings(low=0.001, high=0.005), 1.0, None).result()  # crossing ~0.2
    assert high["found"] == "no match within the bounds: smallest matching density > 0.005"
    assert high["trials"] <= 5 + 2 * 3  # the reference and the two bounds, confirmed


def test_the_benchmark_compares_the_search_with_a_grid(capsys):
    from benchmarks.matching_search import main

    assert main(["--draws", "20", "--noise", "0.01"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["grid_trials"] == 66 and row["trials_ratio"] >= 3, row
    assert 0 <= row["search_hit_rate"] <= 1 and 0 <= row["grid_hit_rate"] <= 1
    assert row["grid_dense_seeds_trials"] == 68 and 0 <= row["grid_dense_seeds_hit_rate"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("noise", [0.005, 0.02])
def test_the_search_is_as_often_right_as_the_grid_for_a_third_of_its_trials(noise):
    """Issue bar, on 400 seeded networks (4 probes a round): the search's bracket holds the
    true crossing at least as often as the papers' grid at the same resolution (3 seeds at
    every density), for at least 3x fewer trials. Seeded: the same draws every run."""
    from benchmarks.matching_search import compare

    row = compare(SearchSettings(parallel=4), noise, draws=400)
    assert row["search_hit_rate"] >= row["grid_hit_rate"], row
    assert row["trials_ratio"] >= 3, row


def test_a_failed_trial_is_not_trained_again_and_failed_references_stop_the_search():
    settings = SearchSettings(seed_cap=2, parallel=2, dense_seeds=2)
    search = MatchingSearch(settings)
    first = search.plan_round()
    assert sorted(first) == [(0.01, 0), (1.0, 0), (1.0, 1)]  # the reference, the bounds
    search.record(1.0, 0, None)  # a dense seed failed
    search.record(1.0, 1, 0.9)
    search.record(0.01, 0, None)
    assert search.plan_round() == [(1.0, 2)]  # the failed dense seed's replacement first
    search.record(1.0, 2, 0.92)
    assert search.threshold() == pytest.approx((0.91, 0.0141421, 0.8958579), rel=1e-5)
    nxt = search.plan_round()
    assert (1.0, 0) not in nxt and (0.01, 0) not in nxt  # neither trained again
    assert (0.01, 1) in nxt  # the failed density's next seed, not another density
    r = search.result()
    assert r["failed"] == 2 and r["trials"] == 4 and r["failed_densities"] == [0.01]
    dead = MatchingSearch(settings)
    for _ in range(10):  # every dense seed fails: replaced up to twice dense_seeds, then done
        for density, seed in dead.plan_round():
            dead.record(density, seed, None if density == 1.0 else 0.5)
    assert dead.plan_round() == [] and dead.done
    assert dead.result()["found"] == "not decided yet" and dead.result()["failed"] == 4


def test_a_density_whose_every_seed_fails_ends_the_search_saying_so():
    """One probe that fails (a crash, out of memory) does not end the search with a wrong
    bracket: the density gets its next seeds; when every one of them fails, the search
    stops and its answer names that density."""
    search = MatchingSearch(SearchSettings(parallel=1, seed_cap=2))
    for _ in range(50):
        todo = search.plan_round()
        if not todo:
            break
        for density, seed in todo:
            failed = 0.02 < density < 1.0  # every trial between the bounds fails
            acc = None if failed else toy_accuracy(density, 1.0, seed, 1e-4)
            search.record(density, seed, acc)
    r = search.result()
    assert r["done"] and r["failed_densities"], r
    assert "(stopped: every trial at " in r["found"], r["found"]
    assert all(search._tried(d) == 2 for d in r["failed_densities"])


def test_a_resume_with_other_settings_or_groups_names_what_differs(tmp_path):
    from rp_tune.core.errors import SweepError
    from rp_tune.planning.matching_plan import (
        check_search_resume,
        search_groups,
        search_record,
        write_search,
    )
    from rp_tune.planning.space import expand_space

    configs = expand_space("smoke", {"sparsity.density": [0.1, 0.5]})
    groups = search_groups(configs, "smoke")
    write_search(str(tmp_path), search_record(groups, SearchSettings()))
    check_search_resume(str(tmp_path), search_record(groups, SearchSettings()))  # the same
    with pytest.raises(SweepError) as e:
        check_search_resume(str(tmp_path), search_record(groups, SearchSettings(seed_cap=4)))
    assert "other settings (seed_cap: stored 3, given 4)" in str(e.value)
    with pytest.raises(SweepError) as e:
        check_search_resume(str(tmp_path), search_record(groups[:1], SearchSettings()))
    assert "other groups (stored: cifar_resnet_8 erk, cifar_resnet_8 uniform; given: " in str(
        e.value
    )
    assert "settings" not in str(e.value)
