"""Which finished trials are repeats of one experiment: the report's groups.

A group is every finished trial whose config agrees on every key the trials vary, the seeds
excepted: mean ± std (n) is over seeds and nothing else. Two trials that differ in the data
set, the classifier's density or the recipe are never averaged together (Liu et al. report
every number as mean and std over seeds, Appendix A).

Within a group's identity the report distinguishes
- the context: the keys outside `sparsity.*` (model, data, recipe, ...): a figure's panel, and
  what the dense reference must share ("the same model, data and recipe");
- the line: the scheme label (dense, a scheme, "+set"/"+rigl" for dynamic sparse training)
  and the other sparsity keys that vary, the density excepted (a classifier density);
- the density, the x of the metric-vs-sparsity figures.

Dense trials (density 1.0) drop the scheme options from their config, so a dense group is
found by context alone, whatever line a sparse group is on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rp_tune.config import DENSE_RECIPE, NOT_HASHED, RECIPES
from rp_tune.methods import METHODS, from_start
from rp_tune.planning.matching import mean_std
from rp_tune.planning.space import sort_values
from rp_tune.trial.groups import SEED_KEYS

# What mean ± std is over: never a group key.
# Folded into the line's label ("erk", "erk+rigl", "dense") instead of shown as keys.
LABEL_KEYS = ("sparsity.scheme", "sparsity.mode", "sparsity.growth")
ALWAYS = ("model.name", "sparsity.density")


def line_label(row: dict[str, Any]) -> str:
    """dense at density 1.0; else the scheme, with its method's variant (+set/+rigl for
    dynamic sparse training), or for a method that starts from a mask its start and name
    ("dense+imp" from a dense start, "er+imp" from ER)."""
    if float(row["sparsity.density"]) == 1.0:
        return "dense"
    mode = row.get("sparsity.mode")
    if from_start(mode):  # from a dense or random start
        start = float(row.get("sparsity.start_density", 1.0))
        return f"{'dense' if start == 1.0 else row['sparsity.scheme']}+{mode}"
    if mode in METHODS and (variant := METHODS[mode].load().variant(row.get)):
        return f"{row['sparsity.scheme']}+{variant}"
    return row["sparsity.scheme"]


def finished(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "finished"]


def varying_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys (flat, dotted) whose value differs among `rows`, less the seeds, the keys
    folded into the label, NOT_HASHED (where a trial ran, not what it is) and ALWAYS."""
    keys = sorted({k for r in rows for k in r if "." in k})
    return [
        k
        for k in keys
        if k not in SEED_KEYS
        and k not in LABEL_KEYS
        and k not in NOT_HASHED
        and k not in ALWAYS
        and len({repr(r.get(k)) for r in rows}) > 1
    ]


@dataclass
class Group:
    """Finished trials that differ only in their seeds."""

    model: str
    label: str
    density: float
    context: tuple[tuple[str, Any], ...]  # varying keys outside sparsity.*, with values
    line: tuple[tuple[str, Any], ...]  # varying sparsity.* keys but the density
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def dense(self) -> bool:
        return self.label == "dense"

    @property
    def panel(self) -> tuple:
        """What a figure's panel and the dense reference share: the model and the context."""
        return (self.model, self.context)

    @property
    def series(self) -> tuple:
        return (self.label, self.line)

    def keys(self) -> dict[str, Any]:
        """The group's identity as flat keys (model, density and every varying key)."""
        return {
            "model.name": self.model,
            "scheme": self.label,
            "sparsity.density": self.density,
            **dict(self.context),
            **dict(self.line),
        }

    def stat(self, metric: str) -> tuple[float, float, int] | None:
        """(mean, std, n) of a final metric over the members that have it; None if none."""
        values = [r[metric] for r in self.rows if _number(r.get(metric))]
        if not values:
            return None
        return (*mean_std(values), len(values))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _frozen(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def as_sparse_recipe(row: dict[str, Any]) -> dict[str, Any]:
    """A dense trial trained with its sparse recipe's dense counterpart (DENSE_RECIPE: Liu
    et al. Table 1 trains dense ImageNet nets 90 epochs, sparse ones 100) as if it had the
    sparse recipe, for grouping only: so that it is the dense reference of those sparse
    trials. Training values set apart from the dense recipe's keep their own value."""
    recipe = row.get("train.recipe")
    sparse = {dense: s for s, dense in DENSE_RECIPE.items()}.get(recipe)
    if sparse is None or float(row.get("sparsity.density", 0)) != 1.0:
        return row
    out = dict(row)
    out["train.recipe"] = sparse
    for k, v in RECIPES[recipe].items():
        have = row.get(f"train.{k}")
        if _as_text(have) == _as_text(v):  # the report's rows join tuples: "30,60,80"
            out[f"train.{k}"] = (
                _as_text(RECIPES[sparse][k]) if isinstance(have, str) else RECIPES[sparse][k]
            )
    return out


def _as_text(v: Any) -> Any:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def groups(rows: Sequence[dict[str, Any]]) -> list[Group]:
    """The finished rows as groups, in report order: model (numeric order of depth and
    width), context, dense first, label, line, density from dense to sparse."""
    done = finished(rows)
    keyed = {id(r): as_sparse_recipe(r) for r in done}
    varying = varying_keys(list(keyed.values()))
    context_keys = [k for k in varying if not k.startswith("sparsity.")]
    line_keys = [k for k in varying if k.startswith("sparsity.")]
    by: dict[tuple, Group] = {}
    for r in done:
        label = line_label(r)
        g = keyed[id(r)]
        context = tuple((k, _frozen(g.get(k))) for k in context_keys)
        line = () if label == "dense" else tuple((k, _frozen(g.get(k))) for k in line_keys)
        density = float(r["sparsity.density"])
        ident = (r["model.name"], context, label, line, density)
        if ident not in by:
            by[ident] = Group(r["model.name"], label, density, context, line)
        by[ident].rows.append(r)
    models = {m: i for i, m in enumerate(sort_values({g.model for g in by.values()}))}
    return sorted(
        by.values(),
        key=lambda g: (
            models[g.model],
            repr(g.context),
            not g.dense,
            g.label,
            repr(g.line),
            -g.density,
        ),
    )


def dense_of(members: Iterable[Group]) -> Group | None:
    """The dense group among `members` (one panel's groups), if any."""
    return next((g for g in members if g.dense), None)


def dense_reference(group: Group, all_groups: Sequence[Group]) -> Group | None:
    """The dense group of the same model and context (data, recipe, ...), if any."""
    return dense_of(g for g in all_groups if g.panel == group.panel)


def lines_of(
    members: Iterable[Group],
    key: Callable[[Group], tuple],
    keep: Callable[[Group], bool] = lambda g: not g.dense,
) -> dict[tuple, list[Group]]:
    """The groups `keep` takes, by the line `key` puts them on, in order."""
    out: dict[tuple, list[Group]] = defaultdict(list)
    for g in members:
        if keep(g):
            out[key(g)].append(g)
    return dict(out)


def by_panel(all_groups: Sequence[Group]) -> dict[tuple, list[Group]]:
    """Groups per panel (model, context), in order."""
    out: dict[tuple, list[Group]] = defaultdict(list)
    for g in all_groups:
        out[g.panel].append(g)
    return dict(out)


def panel_title(panel: tuple) -> str:
    """ "cifar_resnet_20" or "cifar_resnet_20, data.name=cifar100"."""
    model, context = panel
    return ", ".join([model, *(f"{k.split('.')[-1]}={_shown(v)}" for k, v in context)])


def series_label(series: tuple) -> str:
    """ "erk" or "erk, classifier_density=0.2"."""
    label, line = series
    return ", ".join([label, *(f"{k.split('.')[-1]}={_shown(v)}" for k, v in line)])


def _shown(v: Any) -> str:
    """A key's value in a title: None (left to the scheme or recipe) as "default"."""
    return "default" if v is None else str(v)
