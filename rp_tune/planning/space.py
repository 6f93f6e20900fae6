"""A search space as trial configs, before Ray: its grid expanded (list values are axes,
SMOKE and overrides applied, keys a trial's method does not read dropped), checked (data
roots, trials that fit their devices), and described (the axes it varies)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from rp_tune.config import (
    NOT_HASHED,
    SCHEME_OPTION_KEYS,
    ConfigError,
    DataConfig,
    TrialConfig,
    from_flat,
    parse_set,
    run_key,
)
from rp_tune.core.errors import SweepError
from rp_tune.core.model_names import parse_cifar_resnet
from rp_tune.data import absolute_data_root
from rp_tune.methods import DEFAULT_METHOD, METHODS, from_start, method_keys
from rp_tune.models import build_model


def expand_space(
    space: str | ModuleType, overrides: Mapping[str, Any] | None = None, smoke: bool = False
) -> list[TrialConfig]:
    """Every trial config of a search space, validated; dense trials deduplicated.

    Precedence: the space's GRID and FIXED, then SMOKE (with smoke=True), then overrides. A list
    value is a grid axis; anything else is fixed. GRID may also be a list of such grids (the
    union of their products, e.g. widths that depend on the density), and SMOKE then a list
    of overrides, one per grid (or one dict for all). Density 1.0 is dense
    whatever the scheme, so it is run once per remaining point (scheme set to `uniform`).
    """
    from search_spaces import load_space

    if isinstance(space, ModuleType):
        module, space = space, space.__name__.rsplit(".", 1)[-1]
    else:
        try:
            module = load_space(space)
        except ValueError as e:
            raise SweepError(str(e)) from None
    from rp_tune.core.paper_figures import FIGURES

    unknown = [f for f in getattr(module, "FIGURES", ()) if f not in FIGURES]
    if unknown:
        raise SweepError(
            f"search space {space!r}: FIGURES names {unknown}, which the papers' figure list"
            f" (rp_tune.core.paper_figures.FIGURES) does not hold; valid: {sorted(FIGURES)}"
        )
    grids = module.GRID if isinstance(module.GRID, list) else [module.GRID]
    smokes = module.SMOKE if isinstance(module.SMOKE, list) else [module.SMOKE] * len(grids)
    if len(smokes) != len(grids):
        raise SweepError(
            f"search space {space!r}: SMOKE is a list of {len(smokes)} overrides for "
            f"{len(grids)} grids; give one per grid, or one dict for all"
        )
    configs: dict[str, TrialConfig] = {}
    for grid, smoke_values in zip(grids, smokes):
        values: dict[str, Any] = {**module.FIXED, **grid}
        if smoke:
            values.update(smoke_values)
        values.update(overrides or {})
        for cfg in _grid_configs(space, values):
            configs.setdefault(run_key(cfg), cfg)
    if not configs:
        raise SweepError(f"search space {space!r} expands to no trials")
    return list(configs.values())


def _grid_configs(space: str, values: Mapping[str, Any]) -> list[TrialConfig]:
    """The Cartesian product of one grid's list values, validated, as trial configs."""
    axes = {k: v for k, v in values.items() if isinstance(v, list) and not _tuple_key(k)}
    fixed = {k: v for k, v in values.items() if k not in axes}
    out = []
    for point in itertools.product(*axes.values()):
        flat = normalized_flat({**fixed, **dict(zip(axes, point))})
        try:
            out.append(from_flat(flat))
        except ConfigError as e:
            raise SweepError(f"search space {space!r}: {e}") from None
    return out


def normalized_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """A trial's flat values as a sweep trains them: a dense net (density 1.0, or a method's
    dense start) without the scheme options that cannot change it, the keys its method
    ignores dropped, the data root absolute (Ray's workers run elsewhere)."""
    flat = dict(flat)
    if float(flat.get("sparsity.density", 0.1)) == 1.0:
        flat["sparsity.scheme"] = "uniform"
        flat["sparsity.mode"] = DEFAULT_METHOD  # a fixed mask
        for key in SCHEME_OPTION_KEYS:  # meaningless for a dense net: one trial, not several
            flat.pop(key, None)
    # Ray workers do not run in this folder: a relative data root is made absolute here.
    flat["data.root"] = absolute_data_root(str(flat.get("data.root", DataConfig.root)))
    row = METHODS.get(str(flat.get("sparsity.mode", DEFAULT_METHOD)))  # None: from_flat says
    if row is not None:  # keys its method ignores or another's: one trial, not several
        for key in (*row.ignores, *method_keys()):
            if key not in row.keys:
                flat.pop(key, None)
    if row is not None and row.from_start and float(flat.get("sparsity.start_density", 1.0)) == 1.0:
        flat["sparsity.scheme"] = "uniform"  # a dense start: no scheme shapes it
        for key in SCHEME_OPTION_KEYS:
            flat.pop(key, None)
    return flat


def _tuple_key(key: str) -> bool:
    """Keys whose single value is itself a list (e.g. train.milestones)."""
    return key in ("train.milestones", "evaluation.ood_sets")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings from --set (`config.parse_set`), a SweepError if malformed."""
    try:
        return parse_set(items)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """--grid KEY=V1,V2,... strings as axes {key: [values]} (strings, coerced per field by
    `from_flat`); SweepError for an item without '=' or values, or a key whose one value is
    itself a list (train.milestones: set such axes in a space file)."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = (t.strip() for t in item.partition("="))
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not key or not values:
            raise SweepError(f"--grid {item!r} is not KEY=V1,V2,... (e.g. --grid seed=0,1,2)")
        if _tuple_key(key):
            raise SweepError(
                f"--grid {key}: its one value is a list; give such an axis in a space file"
            )
        out[key] = values
    return out


def check_data_roots(configs: Sequence[TrialConfig]) -> None:
    """Every dataset any trial reads (training and OoD sets) is present and intact before Ray
    starts, downloaded once here where allowed (`rp_tune.data.ensure_datasets`); otherwise one
    SweepError naming the dataset, the root, the layout expected there and the fixes."""
    from rp_tune.data import DataError, ensure_datasets

    try:
        ensure_datasets(configs)
    except DataError as e:
        raise SweepError(str(e)) from None


FULL_TRAINING_SETS = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "imagenet": 1_281_167}


def training_images(cfg: TrialConfig) -> int:
    """Images a trial trains on: its training set less the validation share."""
    full = FULL_TRAINING_SETS.get(cfg.data.name, cfg.data.synthetic_train)
    return int(full - round(full * cfg.data.val_fraction))


def check_trials_fit(configs: Sequence[TrialConfig]) -> None:
    """Refuse, before Ray starts, trials that would fail in every worker on every retry: a
    batch larger than the training shard (sizes of the full datasets), a data-free scheme
    whose plan keeps no weight in some layer (data-dependent ones are checked in the trial),
    per-layer overrides that name no layer of the model or do not fit the budget."""
    from rp_tune.config import layer_density_map
    from rp_tune.models import layer_specs
    from rp_tune.sparsity import (
        SCHEMES,
        check_no_empty_layers,
        layer_densities,
        layer_overrides,
        scheme_options,
    )

    specs: dict[tuple[str, int], Any] = {}
    for cfg in configs:
        s = cfg.sparsity
        data_free = not SCHEMES[s.scheme].needs_model
        by_hand = s.layer_density or s.classifier_density is not None
        density = s.start_density if from_start(s.mode) else s.density  # its start
        if density < 1.0 and ((data_free and not s.allow_empty_layers) or by_hand):
            key = (cfg.model.name, cfg.data.classes or 1000)
            if key not in specs:
                specs[key] = layer_specs(build_model(*key))
            try:
                overrides = layer_overrides(
                    specs[key], layer_density_map(s.layer_density), s.classifier_density
                )
                # a model-based scheme's ratios need the trial's data: check the budget only
                scheme, options = (
                    (s.scheme, scheme_options(s.scheme, s)) if data_free else ("uniform", {})
                )
                plan = layer_densities(scheme, specs[key], density, overrides=overrides, **options)
                if data_free and not s.allow_empty_layers:
                    check_no_empty_layers(plan)
            except ValueError as e:
                raise SweepError(f"trial {run_key(cfg)}: {e}") from None
        shard = training_images(cfg) // cfg.resources.workers
        if shard < cfg.train.batch_size:
            raise SweepError(
                f"train.batch_size={cfg.train.batch_size} is larger than the training shard "
                f"of {shard} images ({cfg.data.name}, {cfg.resources.workers} worker(s)) of "
                f"trial {run_key(cfg)}; valid: a batch <= {shard}"
            )


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order (8 before 16), then text in natural order (depth and width
    inside names: cifar_resnet_8_8 before cifar_resnet_8_16)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    text = str(value)
    dw = parse_cifar_resnet(text)
    if dw is not None:  # the default width unspelled still sorts by width: _20_8, _20, _20_24
        text = f"cifar_resnet_{dw[0]}_{dw[1]}"
    return (
        1,
        0.0,
        [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)],
    )


def sort_values(values: Sequence[Any]) -> list[Any]:
    return sorted(values, key=_sort_key)


def values_by_key(configs: Sequence[TrialConfig]) -> dict[str, list[Any]]:
    """Every flat key (less NOT_HASHED) -> the distinct values the trials give it, in order:
    more than one for an axis of the sweep, one for a fixed value."""
    flats = [c.to_flat() for c in configs]
    return {
        k: sort_values({repr(f[k]): f[k] for f in flats}.values())
        for k in flats[0]
        if k not in NOT_HASHED
    }


def describe_axes(space: str, configs: Sequence[TrialConfig]) -> str:
    """What a sweep varies and holds: every flat key whose value differs between its trials
    (the axes, with their values in order), then the main fixed values."""
    axes = values_by_key(configs)
    varying = {k: v for k, v in axes.items() if len(v) > 1}
    width = max((len(k) for k in varying), default=10) + 2
    lines = [f"space {space}: {len(configs)} trials over {len(varying)} axes"]
    for k, values in varying.items():
        shown = ", ".join(map(str, values))
        lines.append(f"  {k:<{width}}{shown if len(shown) < 200 else shown[:197] + '...'}")
    main = (
        "data.name",
        "train.recipe",
        "train.epochs",
        "train.batch_size",
        "resources.workers",
        "resources.gpus_per_worker",
        "sparsity.mode",
    )
    fixed = [f"{k}={axes[k][0]}" for k in main if k in axes and len(axes[k]) == 1]
    lines.append("  fixed: " + ", ".join(fixed))
    return "\n".join(lines)


def space_params(configs: Sequence[TrialConfig]) -> dict[str, str]:
    """A sweep's grid and fixed values as flat strings (the MLflow parent run's params):
    `axis.<key>` = the values a key takes (where it varies), `fixed.<key>` = its one value."""
    out = {}
    for k, values in values_by_key(configs).items():
        if len(values) > 1:
            out[f"axis.{k}"] = ",".join(map(str, values))
        else:
            out[f"fixed.{k}"] = str(values[0])
    return out
