"""A space's grid as matching-density searches (`--search matching`): its groups, the
settings, the trials a probe trains, and what a dry run says before anything starts.

A group is every trial of the space's grid that agrees on all but the density and the
seeds (a model, a width or depth, a scheme, a context); its dense reference is the space's
dense trial of the same model and context (or the group's config at density 1.0). A probe
(density d, seed index k) trains the group's config at density d with the k-th of the
space's seeds (past them: the next integers).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from rp_tune.config import NOT_HASHED, ConfigError, TrialConfig, from_flat, run_key
from rp_tune.core import storage as store
from rp_tune.core.errors import SweepError
from rp_tune.methods import DEFAULT_METHOD
from rp_tune.planning.matching import (
    MATCH_RULE,
    SearchSettings,
    toy_search,
)
from rp_tune.planning.space import normalized_flat
from rp_tune.trial.groups import group_refusal

SEARCHES = ("grid", "matching")  # --search: the space's grid as it is, or the search
SETTING_KEYS = tuple(f.name for f in fields(SearchSettings))
# what a group's trials differ in: the density and `seed` (and where they run: NOT_HASHED,
# resources.*); an axis of seeds.mask/init/data makes groups of its own, not seeds of one
_VARIED = ("sparsity.density", "seed", *NOT_HASHED)


@dataclass(frozen=True)
class SearchGroup:
    """One search: its name, a sparse config of it, its dense reference, the seeds a probe
    takes in order, and the densities the space's grid gives it."""

    name: str
    template: TrialConfig
    dense: TrialConfig
    seeds: tuple[int, ...]
    grid_densities: tuple[float, ...]

    def probe(self, density: float, seed_index: int) -> TrialConfig:
        """The trial of one probe: the dense reference at density 1.0, else the group's
        config at `density`; its seed the `seed_index`-th of the space's (then counting on)."""
        seeds = self.seeds
        past = max(seeds) + 1 + seed_index - len(seeds)
        seed = seeds[seed_index] if seed_index < len(seeds) else past
        base = self.dense if density >= 1.0 else self.template
        return base.replace(**{"sparsity.density": float(density), "seed": seed})


def _identity(cfg: TrialConfig, drop: Sequence[str]) -> str:
    flat = {
        k: v for k, v in cfg.to_flat().items() if k not in drop and not k.startswith("resources.")
    }
    return json.dumps(flat, sort_keys=True, default=list)


def _context(cfg: TrialConfig) -> str:
    """What a group and its dense reference share: every key outside sparsity.*, the seeds
    and where it runs excepted."""
    flat = cfg.to_flat()
    return _identity(cfg, [*_VARIED, *(k for k in flat if k.startswith("sparsity."))])


def search_groups(configs: Sequence[TrialConfig], space: str) -> list[SearchGroup]:
    """The space's grid as searches; SweepError for a space that gives no density to search
    (every sparse trial at one density, or none sparse)."""
    sparse = [c for c in configs if c.sparsity.density < 1.0]
    densities = sorted({c.sparsity.density for c in sparse})
    if len(densities) < 2:
        shown = densities or sorted({c.sparsity.density for c in configs})
        raise SweepError(
            f"--search matching searches the density of the sparse trials, and space "
            f"{space!r} has no density axis (its densities: {shown}); valid: a space whose "
            "sparse trials vary sparsity.density (e.g. width_scan), or --grid "
            "sparsity.density=0.1,0.5,1.0"
        )
    dense_by_context = {}
    for c in configs:
        if c.sparsity.density >= 1.0:
            dense_by_context.setdefault(_context(c), c)
    groups: dict[str, list[TrialConfig]] = {}
    for c in sparse:
        groups.setdefault(_identity(c, _VARIED), []).append(c)
    out = []
    for members in groups.values():
        template = min(members, key=lambda c: (c.seed, c.sparsity.density))
        dense = dense_by_context.get(_context(template))
        if dense is None:  # the space has none: the group's own config, dense
            flat = normalized_flat({**template.to_flat(), "sparsity.density": 1.0})
            dense = from_flat(flat)
        name = f"{template.model.name} {template.sparsity.scheme}"
        if template.sparsity.mode != DEFAULT_METHOD:
            name += f"+{template.sparsity.mode}"
        out.append(
            SearchGroup(
                name=name,
                template=template,
                dense=dense,
                seeds=tuple(sorted({c.seed for c in members})),
                grid_densities=tuple(sorted({c.sparsity.density for c in members})),
            )
        )
    return out


def check_probes(groups: Sequence[SearchGroup], settings: SearchSettings) -> None:
    """SweepError where a group cannot train a density between the search's bounds (a
    method that starts from a sparse mask trains only below its start density)."""
    top = min(settings.high, 0.999)  # below a high bound of 1.0 (the dense reference) it probes
    for g in groups:
        for density in (settings.low, top):
            try:
                g.probe(density, 0)
            except ConfigError as e:
                raise SweepError(
                    f"--search matching: group {g.name!r} cannot train density {density:g}: "
                    f"{e}; valid: bounds inside what its method allows (--search-set "
                    "low=... high=...)"
                ) from None


def search_settings(declared: Mapping[str, Any] | None, items: Sequence[str]) -> SearchSettings:
    """The search's settings: the defaults, then the space's `SEARCH` dict, then
    --search-set KEY=VALUE items. SweepError naming a bad key or value and the valid ones."""
    values: dict[str, Any] = {}
    for key, value in (declared or {}).items():
        values[key] = value
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise SweepError(f"--search-set {item!r} is invalid; valid: KEY=VALUE")
        values[key.strip()] = text.strip()
    unknown = sorted(set(values) - set(SETTING_KEYS))
    if unknown:
        raise SweepError(f"search settings {unknown} are unknown; valid: {', '.join(SETTING_KEYS)}")
    typed: dict[str, Any] = {}
    for f in fields(SearchSettings):
        if f.name in values:
            kind = int if f.name in ("seed_cap", "parallel", "dense_seeds") else float
            try:
                number = float(values[f.name])
                if kind is int and number != int(number):  # 3.7 seeds is not 3
                    raise ValueError(number)
                typed[f.name] = kind(number)
            except (TypeError, ValueError, OverflowError):
                raise SweepError(
                    f"search setting {f.name}={values[f.name]!r} is invalid; valid: "
                    f"{'an integer' if kind is int else 'a number'}"
                ) from None
    try:
        return SearchSettings(**typed)
    except ValueError as e:
        raise SweepError(str(e)) from None


def with_parallel(
    settings: SearchSettings, concurrent: int, groups: int, fused: int = 1
) -> SearchSettings:
    """`parallel` 0 (auto) resolved: the probes the sweep trains at once (its trials at once,
    times `fused`, the probes a fused trial group holds) spread over its groups, at least
    one probe per group per round (many groups fill the slots themselves)."""
    if settings.parallel:
        return settings
    slots = max(concurrent, 1) * max(fused, 1)
    return replace(settings, parallel=max(1, -(-slots // max(groups, 1))))


def fused_size(groups: Sequence[SearchGroup], size: int) -> int:
    """The probes one trial holds with --group-size `size`: `size` when every group's probes
    can fuse, else 1 (a round sized for fused trials would queue the others' probes)."""
    if size > 1 and all(group_refusal(g.template) is None for g in groups):
        return size
    return 1


def expected_trials(settings: SearchSettings, draws: int = 40) -> float:
    """Trials a search spends on average on a smooth curve with seed noise (the toy curve
    of `matching.toy_accuracy` at noise 0.01 over widths 1 to 8): the dry run's estimate."""
    rng = random.Random(0)
    widths = [rng.uniform(1.0, 8.0) for _ in range(draws)]
    return sum(toy_search(settings, w, 0.01)["trials"] for w in widths) / draws


def describe_search(
    groups: Sequence[SearchGroup], settings: SearchSettings, hours_of: Any, grid_trials: int
) -> str:
    """The dry run's lines for a search: the rule, the settings, and per group and in all
    the expected and worst-case trials and device-hours against the grid's at the same
    resolution and the space's own grid. `hours_of(cfg)`: one trial's device-hours."""
    cap, ref = settings.seed_cap, settings.dense_seeds
    expected, worst = expected_trials(settings) - ref, settings.sparse_points() * cap  # sparse
    hours = sum(hours_of(g.template) for g in groups) / max(len(groups), 1)
    n, models = len(groups), len({run_key(g.dense) for g in groups})
    dense = models * ref  # shared by a model's schemes; a failed seed replaced: up to twice
    grid = (settings.grid_trials() - cap) * n + models * cap
    total, most = expected * n + dense, worst * n + 2 * dense
    return "\n".join(
        [
            f"matching-density search: {n} groups (a model, scheme and context each), "
            f"densities in [{settings.low:g}, {settings.high:g}] to a factor "
            f"{settings.resolution:g}, up to {cap} seeds per density, probes per round: "
            f"{settings.parallel}; matching: {MATCH_RULE}",
            f"per group: ~{expected:.0f} sparse trials expected, at most {worst} (the grid at "
            f"this resolution: {worst}); dense references: {dense} trials ({ref} seeds), "
            "once per model and context",
            f"in all: ~{total:.0f} trials expected (~{total * hours:.1f} device-hours), at "
            f"most {most} (~{most * hours:.1f}); the grid at this resolution {grid} "
            f"(~{grid * hours:.1f}), the space's own grid {grid_trials} "
            f"(~{grid_trials * hours:.1f})",
        ]
    )


def check_search(search: str, extend: bool) -> None:
    """SweepError for a --search that cannot be: an unknown one, or with --extend (a search
    decides its own trials; a finished one is extended by searching again)."""
    if search not in SEARCHES:
        raise SweepError(f"--search {search!r} is invalid; valid: {', '.join(SEARCHES)}")
    if search != "grid" and extend:
        raise SweepError(
            "--search matching decides its own trials and --extend adds a space's trials to "
            "a finished sweep: pick one (a finer search: a new sweep name with --name)"
        )


def describe_fusing(groups: Sequence[SearchGroup], size: int) -> str:
    """What --group-size K does to a search: the probes a round queues at once (its P
    densities, the dense seeds, every group of one model and recipe) train up to K to a
    trial group where they can (`rp_tune.trial.groups`), and why a group's cannot."""
    alone: dict[str, list[str]] = {}
    for g in groups:
        why = group_refusal(g.template) or group_refusal(g.dense)
        if why is not None:
            alone.setdefault(why, []).append(g.name)
    fused = len(groups) - sum(len(names) for names in alone.values())
    lines = [
        f"trial groups of up to {size}: the probes queued at once of {fused} of {len(groups)} "
        "groups (a round's densities and seeds, the groups of one model and recipe) train "
        "as one fused group where they are alike but for sparsity and seeds"
    ]
    for why, names in sorted(alone.items()):
        lines.append(
            f"  alone ({len(names)}: {', '.join(names[:3])}{' ...' * (len(names) > 3)}): {why}"
        )
    return "\n".join(lines)


# <sweep>/search/search.json: the search's definition and where it stands (below the sweep
# folder for the reason `records.SEARCH_TRIALS_FILE` gives)
SEARCH_FILE = "search/search.json"


def search_record(groups: Sequence[SearchGroup], settings: SearchSettings) -> dict[str, Any]:
    """What identifies a search (for --resume): the rule, its settings, each group's name and
    identity (its config less the density and the seeds)."""
    return {
        "rule": MATCH_RULE,
        "settings": asdict(settings),
        "groups": [{"name": g.name, "identity": _identity(g.template, _VARIED)} for g in groups],
    }


def write_search(
    path: str,
    record: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]] = (),
    state: Mapping[str, Any] | None = None,
) -> None:
    """<sweep>/search/search.json: the record, each group's result so far, the searcher's state."""
    data = {**record, "results": list(results), "state": state}
    store.write_text(store.join(path, SEARCH_FILE), json.dumps(data, indent=1, default=list))


def read_search(path: str) -> dict[str, Any] | None:
    """The sweep's search/search.json, or None for a grid sweep."""
    location = store.join(path, SEARCH_FILE)
    if not store.exists(location):
        return None
    stored = json.loads(store.read_text(location))
    # a search started before `dense_seeds` existed trained seed_cap dense seeds
    settings = stored.get("settings") or {}
    stored["settings"] = {"dense_seeds": settings.get("seed_cap", 3), **settings}
    return stored


def check_search_resume(path: str, record: Mapping[str, Any] | None) -> None:
    """--resume of a search continues that search, a grid sweep that grid: SweepError naming
    what differs (a search resumed without --search matching, other settings or groups)."""
    stored = read_search(path)
    if stored is None and record is None:
        return
    if stored is None:
        raise SweepError(f"--resume: the sweep at {path} trains a grid; resume it without --search")
    if record is None:
        raise SweepError(
            f"--resume: the sweep at {path} is a matching-density search: resume it with "
            "--search matching (and the --search-set values it started with)"
        )
    given = json.loads(json.dumps(record))
    what = []
    if stored["settings"] != given["settings"]:
        old, new = stored["settings"], given["settings"]
        changed = sorted(k for k in {**old, **new} if old.get(k) != new.get(k))
        what.append(
            "settings ("
            + ", ".join(f"{k}: stored {old.get(k)!r}, given {new.get(k)!r}" for k in changed)
            + ")"
        )
    if stored.get("groups") != given["groups"]:
        names = lambda r: [g["name"] for g in r.get("groups") or []]  # noqa: E731
        what.append(
            f"groups (stored: {', '.join(names(stored))}; given: {', '.join(names(given))})"
        )
    if what:
        raise SweepError(
            f"--resume: the search at {path} was started with other {' and '.join(what)}; "
            "resume it with the same space, --set and --search-set values, or start another "
            "sweep with --name"
        )


def search_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One line per group: the bracket of its matching density (and sparsity), how sure
    (seeds behind each side), the dense accuracy, trials spent against the grid's."""
    head = (
        f"{'group':<36} {'matching density':<26} {'sparsity':<17} {'seeds':>5} "
        f"{'dense acc':>13} {'trials':>6} {'grid':>5}"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        lo, hi = r.get("lo"), r.get("hi")
        bracket = "-" if hi is None and lo is None else f"({lo}, {hi}]"
        sparsity = "-"
        if hi is not None or lo is not None:
            s_lo = "-" if hi is None else f"{1 - hi:.4g}"
            s_hi = "-" if lo is None else f"{1 - lo:.4g}"
            sparsity = f"[{s_lo}, {s_hi})"
        sides = [r.get("fail_side"), r.get("match_side")]
        seeds = "/".join(
            "-" if s is None else f"{s['seeds']}{'*' if s['at_cap'] else ''}" for s in sides
        )
        dense = (
            "-"
            if r.get("dense_acc_mean") is None
            else f"{r['dense_acc_mean']:.4f}±{r['dense_acc_std']:.4f}"
        )
        rows.append(
            f"{r['group'][:36]:<36} {bracket:<26} {sparsity:<17} {seeds:>5} {dense:>13} "
            f"{r['trials']:>6} {r['grid_trials']:>5}"
        )
    rows.append(
        "matching density: (lo, hi], hi the smallest density that matched; seeds: behind the "
        "failing/matching side (*: called at the seed cap, too close to be sure)"
    )
    return "\n".join(rows)
