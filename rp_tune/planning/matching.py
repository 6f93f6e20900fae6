"""Where a randomly pruned network stops matching its dense twin: the criterion, and an
adaptive search for the smallest matching density of one group (a model, a width or depth,
a scheme, a context) that spends a fraction of a grid's trials.

The question of Liu et al. (ICLR 2022, Figs. 1, 2 and 7) and of Gadhikar et al. (ICML 2023,
width versus density): the smallest density (highest sparsity) at which the sparse network,
trained with its fixed mask, still matches dense. The papers read it off a grid of densities
x seeds; `MatchingSearch` finds it by probing densities in log space between stated bounds
until the crossing is bracketed to a stated factor (`resolution`).

How it decides, round by round (`plan_round`, then `record` for each result):

- the dense reference trains `dense_seeds` seeds first (5: its mean and std are the
  threshold every call of every scheme of the model is measured against; a 3-seed std
  is off by a third of itself as often as not, and a search reads fewer seeds per
  density than a grid does, so its reference is the place to spend; a model's schemes
  share it);
- the bounds are probed first; then each round places its P probes (the parallel slots the
  sweep has) evenly inside the current bracket, on the grid at the search's resolution
  (`SearchSettings.grid`: log-spaced from low to high): P-section, P+1 intervals per round
  rather than bisection's 2, and a final bracket that is exactly one of that grid's cells
  (a finer bracket would be a narrower target, held by the truth less often);
- a point whose mean is closer to the threshold than `margin` x one seed's noise (pooled
  over every density with two seeds or more) / sqrt(its seeds) is too close to call: it
  gets another seed before it counts, up to `seed_cap`; at the cap it is called by its
  mean and the result says so;
- the bracket is (lo, hi], read as the report reads a grid: hi the smallest density called
  matching, lo the largest called failing below it (a failing point above hi is noise,
  counted in the result as `inconsistent`). Once hi / lo <= resolution, both sides get
  seeds up to the cap (a side that flips moves the bracket and the search goes on); a
  bound can decide it too (the low bound matches: at most `low`; nothing below the dense
  reference matches: above `high`).

Densities are rounded to 4 significant digits, so a resumed search asks for the same ones
and a density probed before is never trained again.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MATCH_RULE = "sparse mean test accuracy >= dense mean - dense std, over seeds"


def matches(sparse_mean: float, dense_mean: float, dense_std: float) -> bool:
    """The one criterion (`MATCH_RULE`), used by the report's table and by the search."""
    return sparse_mean >= dense_mean - dense_std


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for one value): the report's
    aggregate over seeds."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def round_density(d: float) -> float:
    """4 significant digits: the same density whatever float arithmetic led to it."""
    return float(f"{d:.4g}")


@dataclass(frozen=True)
class SearchSettings:
    """The search's bounds (densities in (0, 1]), its resolution (the bracket's final
    hi / lo, > 1: 1.25 is finer than the papers' grids), the seeds a point may get at most
    (`seed_cap`), the dense reference's seeds (`dense_seeds`) and the slots it fills per
    round."""

    low: float = 0.01
    high: float = 1.0
    resolution: float = 1.25
    seed_cap: int = 3
    parallel: int = 0  # probes per round; 0: the sweep's trials at once over its groups
    margin: float = 2.0  # too close to call: |mean - threshold| < margin x noise / sqrt(n)
    dense_seeds: int = 5  # the dense reference's seeds (the threshold's mean and std)

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ValueError(f"search bound {name}={v!r} is invalid; valid: in (0, 1]")
        if self.low >= self.high:
            raise ValueError(f"search bounds low={self.low} >= high={self.high}; valid: low < high")
        if not (isinstance(self.resolution, (int, float)) and self.resolution > 1):
            raise ValueError(
                f"search resolution {self.resolution!r} is invalid; valid: a factor > 1 "
                "(1.25: the bracket's hi / lo)"
            )
        if not (isinstance(self.seed_cap, int) and self.seed_cap >= 1):
            raise ValueError(f"search seed cap {self.seed_cap!r} is invalid; valid: integers >= 1")
        if not (isinstance(self.dense_seeds, int) and self.dense_seeds >= 2):
            raise ValueError(
                f"search dense_seeds {self.dense_seeds!r} is invalid; valid: integers >= 2 "
                "(the criterion needs the dense reference's std)"
            )
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin < math.inf):
            raise ValueError(
                f"search margin {self.margin!r} is invalid; valid: a number >= 0 (2: a point "
                "within 2 noise units of the threshold gets more seeds)"
            )
        if not (isinstance(self.parallel, int) and self.parallel >= 0):
            raise ValueError(
                f"search parallel {self.parallel!r} is invalid; valid: integers >= 0 (0: auto)"
            )

    def grid_points(self) -> int:
        """Densities a grid from low to high at this resolution holds (both bounds)."""
        return math.ceil(math.log(self.high / self.low) / math.log(self.resolution) - 1e-9) + 1

    def grid(self) -> list[float]:
        """The grid at this resolution: `grid_points()` densities evenly spaced in log
        space from low to high (adjacent ones at most `resolution` apart). The search
        probes only these, so its bracket is one of the grid's cells and a grid sweep's
        trials at the same bounds and resolution are its probes too."""
        n = self.grid_points()
        ratio = (self.high / self.low) ** (1 / (n - 1))
        return [round_density(self.low * ratio**k) for k in range(n)]

    def grid_index(self, density: float) -> int:
        """The grid point nearest `density` in log space (its index in `grid()`)."""
        n = self.grid_points()
        k = math.log(density / self.low) / math.log(self.high / self.low) * (n - 1)
        return min(max(round(k), 0), n - 1)

    def sparse_points(self) -> int:
        """The grid's densities below 1.0 (a high bound of 1.0 is the dense reference)."""
        return sum(1 for d in self.grid() if d < 1.0)

    def grid_trials(self) -> int:
        """Trials of that grid at `seed_cap` seeds per density, its dense reference at as
        many: what the search is compared with."""
        return (self.sparse_points() + 1) * self.seed_cap

    def worst_trials(self) -> int:
        """The search's worst case: never more densities than the grid at this resolution,
        each at most `seed_cap` times, and its dense reference (a failed seed replaced: at
        most twice `dense_seeds`)."""
        return self.sparse_points() * self.seed_cap + 2 * self.dense_seeds


@dataclass
class MatchingSearch:
    """The search of one group. `plan_round()` says what to train next as (density, seed
    index) pairs (density 1.0: the dense reference); `record()` takes each result; `done`
    and `result()` say where it stands. `state()` / `from_state()`: JSON for --resume."""

    settings: SearchSettings
    # density -> {seed index: test accuracy, or None for a trial that failed}
    accs: dict[float, dict[int, float | None]] = field(default_factory=dict)
    outstanding: set[tuple[float, int]] = field(default_factory=set)
    rounds: int = 0

    DENSE = 1.0

    # --- state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "accs": [[d, sorted(a.items())] for d, a in sorted(self.accs.items())],
            "outstanding": sorted(self.outstanding),
            "rounds": self.rounds,
        }

    @classmethod
    def from_state(cls, settings: SearchSettings, state: dict[str, Any]) -> MatchingSearch:
        s = cls(settings)
        s.accs = {
            float(d): {int(k): (None if v is None else float(v)) for k, v in a}
            for d, a in state["accs"]
        }
        s.outstanding = {(float(d), int(i)) for d, i in state["outstanding"]}
        s.rounds = int(state["rounds"])
        return s

    # --- results ------------------------------------------------------------------------
    def record(self, density: float, seed: int, acc: float) -> None:
        """One finished trial's test accuracy; None: the trial failed (that seed is not
        asked for again, the next one is). A seed index already recorded is ignored: a
        repeated trial is not counted twice."""
        density = round_density(density)
        self.outstanding.discard((density, seed))
        self.accs.setdefault(density, {}).setdefault(seed, None if acc is None else float(acc))

    def _seen(self, density: float) -> list[float]:
        """The accuracies a density's trials reported, failed ones left out."""
        return [a for _, a in sorted(self.accs.get(density, {}).items()) if a is not None]

    def _tried(self, density: float) -> int:
        """Seeds a density took so far, failed ones included: the next seed's index."""
        return len(self.accs.get(density, {}))

    def _one_cell(self, lo: float, hi: float) -> bool:
        """lo and hi neighbours on the grid (or closer): bracketed to the resolution. By grid
        index, not hi / lo: rounding to 4 digits can make a cell a hair wider."""
        s = self.settings
        return s.grid_index(hi) - s.grid_index(lo) <= 1 or hi / lo <= s.resolution * (1 + 1e-9)

    def _probed(self) -> int:
        """Sparse densities probed so far (the probe limit counts them)."""
        return sum(1 for d in self.accs if d != self.DENSE)

    def _dense_todo(self) -> int:
        """Dense seeds still to ask for: a failed one is replaced by the next seed, up to
        twice `dense_seeds` tried (a reference that keeps failing is no reference)."""
        n, tried = self.settings.dense_seeds, self._tried(self.DENSE)
        return max(0, min(n - len(self._seen(self.DENSE)), 2 * n - tried))

    def threshold(self) -> tuple[float, float, float] | None:
        """(dense mean, dense std, mean - std) once the dense seeds finished, else None."""
        dense = self._seen(self.DENSE)
        if self._dense_todo() or not dense:
            return None
        mean, std = mean_std(dense)
        return mean, std, mean - std

    def noise(self) -> float:
        """One seed's test-accuracy std, pooled over every density with two seeds or more
        (the dense reference's included): a steadier estimate than one point's few seeds."""
        squares, dof = 0.0, 0
        for d in self.accs:
            seen = self._seen(d)
            if len(seen) > 1:
                squares += mean_std(seen)[1] ** 2 * (len(seen) - 1)
                dof += len(seen) - 1
        return math.sqrt(squares / dof) if dof else 0.0

    def call(self, density: float) -> str | None:
        """'match', 'fail' or 'unsure' (too close to call, seeds left) for a probed
        density; None before the dense reference or the point's first seed."""
        t, seen = self.threshold(), self._seen(density)
        if t is None or not seen:
            return None
        d_mean, d_std, thr = t
        mean, _ = mean_std(seen)
        noise = self.noise() / math.sqrt(len(seen))
        close = abs(mean - thr) < self.settings.margin * noise
        if close and self._tried(density) < self.settings.seed_cap:
            return "unsure"
        return "match" if matches(mean, d_mean, d_std) else "fail"

    def bracket(self) -> tuple[float | None, float | None, int]:
        """(lo, hi, inconsistent), read as the report reads a grid: hi the smallest density
        called matching (None: none), lo the largest called failing below it (None: none),
        and the points called failing above hi (noise against a monotone curve)."""
        called = {d: self.call(d) for d in self.accs if d != self.DENSE}
        if self.threshold() is not None:  # the reference matches itself (mean >= mean - std)
            called[self.DENSE] = "match"
        matched = [d for d, c in called.items() if c == "match"]
        hi = min(matched) if matched else None
        fails = [d for d, c in called.items() if c == "fail" and (hi is None or d < hi)]
        lo = max(fails) if fails else None
        above = sum(1 for d, c in called.items() if c == "fail" and hi is not None and d > hi)
        return lo, hi, above

    # --- what next ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not self.outstanding and not self._next_probes()

    def plan_round(self) -> list[tuple[float, int]]:
        """The next round's trials, (density, seed index), at most `parallel` sparse probes
        (the dense reference's seeds come on top, in the first round); [] while a round is
        outstanding or when the search is done."""
        if self.outstanding:
            return []
        todo = self._next_probes()
        if todo:
            self.rounds += 1
            self.outstanding.update(todo)
        return todo

    def _next_probes(self) -> list[tuple[float, int]]:
        s = self.settings
        # the bounds: a high bound of 1.0 is the dense reference itself
        parallel = max(s.parallel, 1)
        bounds = [b for b in (round_density(s.high), round_density(s.low)) if b != self.DENSE]
        tried = self._tried(self.DENSE)
        dense = [(self.DENSE, i) for i in range(tried, tried + self._dense_todo())]
        if dense:  # first round: the reference, and the bounds meanwhile
            return dense + [(d, 0) for d in bounds[:parallel] if d not in self.accs]
        if self.threshold() is None:  # every dense seed failed: nothing can be called
            return []
        # a density whose every trial so far failed: its next seed (up to the cap), not
        # another density in its place (the same P-section would only find it again)
        retry = [
            d
            for d in self.accs
            if d != self.DENSE and not self._seen(d) and self._tried(d) < s.seed_cap
        ]
        if retry:
            return [(d, self._tried(d)) for d in sorted(retry)[:parallel]]
        unsure = [d for d in self.accs if d != self.DENSE and self.call(d) == "unsure"]
        lo, hi, _ = self.bracket()
        d_mean, d_std, _ = self.threshold()
        leans = {d for d in unsure if matches(mean_std(self._seen(d))[0], d_mean, d_std)}
        # a point that could move the bracket gets another seed first: one inside it, or
        # one below it that leans to matching (the report would read it as the smallest)
        relevant = [
            d for d in unsure if (hi is None or d <= hi) and (lo is None or d >= lo or d in leans)
        ]
        if relevant:
            return [(d, self._tried(d)) for d in sorted(relevant)[:parallel]]
        for bound in bounds:
            if bound not in self.accs:
                return [(bound, 0)]
        if hi is None or lo is None:  # the low bound matches: decided
            return []
        if lo >= round_density(s.high):  # nothing within the bounds matches: decided
            return []
        if self._one_cell(lo, hi):  # bracketed: both sides at the seed cap
            short = [d for d in (lo, hi) if d != self.DENSE and self._tried(d) < s.seed_cap]
            return [(d, self._tried(d)) for d in short]
        left = s.sparse_points() - self._probed()
        if left <= 0:  # never more densities than the grid at this resolution: its worst case
            return []
        grid = s.grid()  # P-section in the grid's index space: P+1 near-equal intervals
        k_lo, k_hi = s.grid_index(lo), s.grid_index(hi)
        ks = {k_lo + round((k_hi - k_lo) * (i + 1) / (parallel + 1)) for i in range(parallel)}
        points = sorted(grid[k] for k in ks)
        return [(d, 0) for d in points if lo < d < hi and d not in self.accs][:left]

    # --- the answer ---------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        """The bracket (densities and sparsities), how sure (seeds behind each side, and
        whether a side was called at the seed cap), the dense accuracy, the trials spent
        and those a grid at the same resolution would have spent."""
        lo, hi, inconsistent = self.bracket()
        t = self.threshold()

        def side(d: float | None) -> dict[str, Any] | None:
            if d is None:
                return None
            seen = self._seen(d)
            mean, _ = mean_std(seen)
            close = t is not None and abs(mean - t[2]) < self.settings.margin * (
                self.noise() / math.sqrt(len(seen))
            )  # too close to call, called by its mean at the seed cap
            at_cap = close and self._tried(d) >= self.settings.seed_cap  # failed seeds count
            return {"density": d, "acc_mean": mean, "seeds": len(seen), "at_cap": at_cap}

        low, high = round_density(self.settings.low), round_density(self.settings.high)
        dead = sorted(d for d in self.accs if d != self.DENSE and not self._seen(d))
        if hi is not None and lo is None and hi == low:
            found = f"matches at the low bound: smallest matching density <= {low}"
        elif lo is not None and lo >= high:
            found = f"no match within the bounds: smallest matching density > {high}"
        elif lo is not None and hi is not None and not self._one_cell(lo, hi):
            why = f"every trial at {dead} failed" if dead else "the probe limit"
            found = f"smallest matching density in ({lo}, {hi}] (stopped: {why})"
        elif lo is not None and hi is not None:
            found = f"smallest matching density in ({lo}, {hi}]"
        else:
            found = "not decided yet"
        return {
            "found": found,
            "lo": lo,
            "hi": hi,
            "sparsity_bracket": (None if hi is None else 1 - hi, None if lo is None else 1 - lo),
            "fail_side": side(lo),
            "match_side": side(hi),
            "dense_acc_mean": None if t is None else t[0],
            "dense_acc_std": None if t is None else t[1],
            "inconsistent": inconsistent,
            "trials": sum(self._tried(d) for d in self.accs),
            "failed": sum(v is None for a in self.accs.values() for v in a.values()),
            "failed_densities": dead,  # densities none of whose trials reported
            "grid_trials": self.settings.grid_trials(),
            "rounds": self.rounds,
            "done": self.done,
        }


def toy_accuracy(
    density: float, width: float, seed: int, noise: float, dense_acc: float = 0.92
) -> float:
    """A known smooth test accuracy for tests and the benchmark, no training: dense at
    density 1, falling by up to 0.5 (steeply: the 6th power of density) below a crossing
    that moves to lower density as the network widens, d50 = 0.1 / width (Liu et al.'s
    trend), plus seeded Gaussian noise of
    std `noise`. TEST ONLY: a real sweep never reports it."""
    import random

    drop = 0.0 if density >= 1.0 else 0.5 / (1 + (density * width / 0.1) ** 6)
    rng = random.Random(f"{density:.6g}/{width:.6g}/{seed}")  # str: the same draw every run
    return dense_acc - drop + rng.gauss(0.0, noise)


def toy_crossing(width: float, noise: float, dense_acc: float = 0.92) -> float:
    """The density where `toy_accuracy`'s noise-free curve meets dense - noise (the
    criterion with the dense std at its expected value): 0.5 / (1 + x^6) = noise."""
    x = max(0.5 / noise - 1, 0.0) ** (1 / 6)
    return 0.1 * x / width


def toy_search(settings: SearchSettings, width: float, noise: float) -> dict[str, Any]:
    """One search run to its end on `toy_accuracy` (tests, the benchmark, the dry run's
    estimate): its result."""
    search = MatchingSearch(settings)
    for _ in range(1000):
        todo = search.plan_round()
        if not todo:
            break
        for density, seed in todo:
            search.record(density, seed, toy_accuracy(density, width, seed, noise))
    return search.result()
