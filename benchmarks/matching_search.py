"""The matching-density search against a grid at the same resolution, on a known accuracy
curve (`rp_tune.planning.matching.toy_accuracy`: no training): how often each one's bracket
holds the true crossing, and the trials each spent.

    python benchmarks/matching_search.py                    # noise 0.005 and 0.02, 200 draws
    python benchmarks/matching_search.py --noise 0.01 --draws 500 --parallel 8

Each draw is one network (a width drawn from 1 to 8) with its own seeded noise; the grid
trains every density from low to high at the resolution's spacing with `seed_cap` seeds (its
dense reference too, as the papers' grids) and reads the crossing as the report does (the
smallest matching density, and the grid point below it); the search runs `MatchingSearch`
round by round, its dense reference at `dense_seeds` seeds (5). The grid given the same
dense reference is printed beside: how much of the search's edge is its reference. Prints
one JSON line per noise level, then a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rp_tune.planning.matching import (  # noqa: E402
    SearchSettings,
    matches,
    mean_std,
    toy_accuracy,
    toy_crossing,
    toy_search,
)


def run_grid(
    settings: SearchSettings, width: float, noise: float, dense_seeds: int | None = None
) -> tuple[float | None, float | None]:
    """The grid's bracket (lo, hi]: hi its smallest matching density, lo the grid point below;
    its dense reference at `dense_seeds` seeds (default: `seed_cap`, as every density)."""
    grid = settings.grid()
    seeds = range(settings.seed_cap)
    dense = range(dense_seeds or settings.seed_cap)
    d_mean, d_std = mean_std([toy_accuracy(1.0, width, s, noise) for s in dense])
    ok = [
        d
        for d in grid
        if matches(mean_std([toy_accuracy(d, width, s, noise) for s in seeds])[0], d_mean, d_std)
    ]
    if not ok:
        return grid[-1], None
    hi = min(ok)
    below = [d for d in grid if d < hi]
    return (max(below) if below else None), hi


def holds(lo: float | None, hi: float | None, truth: float, settings: SearchSettings) -> bool:
    """The bracket (lo, hi] holds the true crossing (an open side: the bound beyond it)."""
    lo_v = 0.0 if lo is None else lo
    hi_v = math.inf if hi is None else hi
    return lo_v < truth <= hi_v


def compare(settings: SearchSettings, noise: float, draws: int, seed: int = 0) -> dict:
    """Hit rates and mean trials of the search and the grid over `draws` networks."""
    rng = random.Random(seed)
    hit_s = hit_g = hit_g5 = trials_s = only_s = only_g = 0
    for _ in range(draws):
        width = rng.uniform(1.0, 8.0)
        truth = toy_crossing(width, noise)
        r = toy_search(settings, width, noise)
        s_hit = holds(r["lo"], r["hi"], truth, settings)
        g_hit = holds(*run_grid(settings, width, noise), truth, settings)
        hit_g5 += holds(*run_grid(settings, width, noise, settings.dense_seeds), truth, settings)
        hit_s, hit_g, trials_s = hit_s + s_hit, hit_g + g_hit, trials_s + r["trials"]
        only_s, only_g = only_s + (s_hit and not g_hit), only_g + (g_hit and not s_hit)
    # paired: both read the same draws (toy_accuracy is keyed by density, width and seed), so
    # the difference's standard error comes from the draws where exactly one of them hit
    diff_se = math.sqrt(only_s + only_g - (only_s - only_g) ** 2 / draws) / draws
    return {
        "noise": noise,
        "draws": draws,
        "search_hit_rate": round(hit_s / draws, 3),
        "grid_hit_rate": round(hit_g / draws, 3),
        "hit_rate_diff": round((hit_s - hit_g) / draws, 3),
        "hit_rate_diff_se": round(diff_se, 3),
        "search_only_hits": only_s,
        "grid_only_hits": only_g,
        "search_trials_mean": round(trials_s / draws, 1),
        "grid_trials": settings.grid_trials(),
        # the same grid with the search's dense reference (its seeds, not seed_cap's)
        "grid_dense_seeds_hit_rate": round(hit_g5 / draws, 3),
        "grid_dense_seeds_trials": settings.grid_trials()
        - settings.seed_cap
        + settings.dense_seeds,
        "trials_ratio": round(settings.grid_trials() / (trials_s / draws), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", type=float, nargs="+", default=[0.005, 0.02])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--seed-cap", type=int, default=3)
    p.add_argument("--resolution", type=float, default=1.25)
    p.add_argument("--margin", type=float, default=2.0)
    args = p.parse_args(argv)
    settings = SearchSettings(resolution=args.resolution, seed_cap=args.seed_cap,
                              parallel=args.parallel, margin=args.margin)  # fmt: skip
    rows = [compare(settings, n, args.draws) for n in args.noise]
    for r in rows:
        print(json.dumps(r), flush=True)
    print(
        f"search: dense reference {settings.dense_seeds} seeds, up to {settings.seed_cap} per "
        f"density, {settings.parallel} probes a round; grid: {settings.seed_cap} seeds at "
        f"every density and at dense (right: the grid with {settings.dense_seeds} dense seeds)"
    )
    head = ("noise", "search hits", "grid hits", "difference", "search trials", "grid trials",
            "grid+dense hits", "trials")  # fmt: skip
    print("\n" + " ".join(f"{h:>{max(len(h), 6)}}" for h in head))
    for r in rows:
        print(
            f"{r['noise']:>6} {r['search_hit_rate']:>11} {r['grid_hit_rate']:>9} "
            f"{r['hit_rate_diff']:>+6.3f}±{r['hit_rate_diff_se']:.3f} "
            f"{r['search_trials_mean']:>13} {r['grid_trials']:>11} "
            f"{r['grid_dense_seeds_hit_rate']:>15} {r['grid_dense_seeds_trials']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
