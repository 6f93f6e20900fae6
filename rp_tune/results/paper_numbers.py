"""The papers' own numbers, to put each reproduced mean ± std (n) beside, like with like.

Test accuracy in percent, as the papers print it. Sparsity s is density 1 - s. Only numbers
the papers state in their text or that their figures are labelled with are listed.

Every number carries the setting it was measured at, as the flat config keys of rp_tune that
reproduce it (`SETTING_KEYS`): model, data set, validation split, scheme, density, sparse-
training method, the layer-wise options (classifier density, per-layer overrides, ...) and the
training recipe (epochs, batch size, learning rate, momentum, Nesterov, weight decay, schedule,
warmup, label smoothing). Augmentation is not a key: rp_tune's CIFAR pipeline is the papers'
(random crop 32 with padding 4, horizontal flip; Liu et al. Table 1).

A finished group is set beside a number when its model, data set, scheme label and density
are the number's. It is a reproduction only when its config also agrees on every other key of
the setting; then the row gets the difference. A group that differs in any of them is still
shown, so a researcher sees where a short run stands, but with the keys that differ named and
no difference computed: a gap between unlike settings is not a result, and a table that printed
one would be pasted into a paper as if it were. (Leaving such groups out would hide why a sweep
matched nothing.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rp_tune.config import RECIPES, SCHEME_OPTION_KEYS, from_flat, to_flat_defaults
from rp_tune.methods import DEFAULT_METHOD
from rp_tune.results.grouping import Group, groups

# What a paper number's setting fixes, as flat config keys (the recipe's keys included).
# train.batch_size is per training worker: resources.workers makes the batch of a step.
SCORING_KEYS = ("sparsity.score_batch", "sparsity.grasp_per_class")  # SNIP's and GraSP's batch
SETTING_KEYS: tuple[str, ...] = (
    "model.name",
    "data.name",
    "data.val_fraction",
    "data.image_size",
    "sparsity.scheme",
    "sparsity.density",
    "sparsity.mode",
    "sparsity.sampling",
    *SCORING_KEYS,
    *SCHEME_OPTION_KEYS,
    *(f"train.{k}" for k in RECIPES["cifar"]),
    "resources.workers",
)
# Keys a dense number's setting leaves out: a dense net has no scheme or layer-wise options.
DENSE_FREE = ("sparsity.scheme", "sparsity.sampling", *SCORING_KEYS, *SCHEME_OPTION_KEYS)


def setting(
    model: str, data: str, scheme: str, density: float, recipe: str, **keys: Any
) -> dict[str, Any]:
    """The flat config keys of `SETTING_KEYS` of the rp_tune trial that reproduces a paper's
    run: built through `from_flat` (so a recipe's values, the data set's validation split and
    every default are rp_tune's own), with `keys` for what the paper does otherwise."""
    flat = from_flat(
        {
            "model.name": model,
            "data.name": data,
            "sparsity.scheme": scheme,
            "sparsity.density": density,
            "sparsity.mode": DEFAULT_METHOD,
            "train.recipe": recipe,
            **keys,
        }
    ).to_flat()
    skip = DENSE_FREE if density == 1.0 else ()
    return {k: flat[k] for k in SETTING_KEYS if k not in skip}


@dataclass(frozen=True)
class PaperNumber:
    source: str
    model: str  # canonical model name
    data: str
    scheme: str  # a group label: "dense", "erk", "snip", ...
    density: float
    value: float  # test accuracy, percent
    # the setting it was measured at (`setting`): every key a group must agree on
    setting: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _number(source: str, model: str, data: str, scheme: str, density: float, value: float,
            recipe: str, **keys: Any) -> PaperNumber:  # fmt: skip
    cfg_scheme = "uniform" if scheme == "dense" else scheme
    return PaperNumber(source, model, data, scheme, density, value,
                       setting(model, data, cfg_scheme, density, recipe, **keys))  # fmt: skip


def _liu_fig6() -> list[PaperNumber]:
    """CIFAR-10 ResNets at 50% sparsity, Liu et al. Table 1's CIFAR recipe (160 epochs, batch
    128, SGD lr 0.1 Nesterov, x0.1 at 80 and 120, weight decay 5e-4), the last 10% of the
    training set held out."""
    src = "Liu et al. Fig. 6 (CIFAR-10, 50% sparsity)"
    out = []
    for model, erk, snip, dense in (
        ("cifar_resnet_20", 91.57, 91.86, 92.37),
        ("cifar_resnet_56", 93.21, 93.27, 93.14),
        ("cifar_resnet_110", 93.46, 93.27, 93.34),
    ):
        out += [
            _number(src, model, "cifar10", "erk", 0.5, erk, "cifar"),
            _number(src, model, "cifar10", "snip", 0.5, snip, "cifar"),
            _number(src, model, "cifar10", "dense", 1.0, dense, "cifar"),
        ]
    return out


def _liu_wrn50() -> list[PaperNumber]:
    """ImageNet Wide ResNet-50-2, Liu et al. Table 1's ImageNet recipe: sparse nets 100 epochs
    (x0.1 at 30, 60, 90), the dense one 90; batch 192 on each of 4 GPUs (rp_tune's `imagenet`
    recipe is per worker: 4 training workers)."""
    src = "Liu et al. ImageNet (Fig. 6 bottom, Fig. 14 right)"
    wrn, four = "wide_resnet50_2", {"resources.workers": 4}
    out = [_number(src, wrn, "imagenet", "dense", 1.0, 78.11, "imagenet_dense", **four)]
    for density, erk, snip in ((0.15, 68.93, 73.48), (0.3, 74.50, 76.81), (0.4, 76.28, 77.55)):
        out += [
            _number(src, wrn, "imagenet", "erk", density, erk, "imagenet", **four),
            _number(src, wrn, "imagenet", "snip", density, snip, "imagenet", **four),
        ]
    return out


def _he_dense() -> list[PaperNumber]:
    """He et al. 2016, Sec. 4.2: batch 128, SGD lr 0.1 momentum 0.9 (not Nesterov), weight
    decay 1e-4, x0.1 at 32k and 48k iterations, 64k in all, on the whole training set: in
    epochs of 50k images (ours) 164, with milestones 82 and 123."""
    src = "He et al. 2016 (dense CIFAR-10 ResNets)"
    recipe = {"train.epochs": 164, "train.milestones": (82, 123), "train.weight_decay": 1e-4,
              "train.nesterov": False, "data.val_fraction": 0.0}  # fmt: skip
    return [
        _number(src, f"cifar_resnet_{d}", "cifar10", "dense", 1.0, acc, "cifar", **recipe)
        for d, acc in ((20, 91.25), (32, 92.49), (44, 92.83), (56, 93.03), (110, 93.39))
    ]


PAPER_NUMBERS: tuple[PaperNumber, ...] = (*_liu_fig6(), *_liu_wrn50(), *_he_dense())


def _data(g: Group) -> str:
    return str(g.rows[0].get("data.name"))


def _same(ours: Any, theirs: Any) -> bool:
    """Equal as config values: numbers to 1e-9, tuples as the report's joined text."""
    if isinstance(theirs, (tuple, list)):
        theirs = ",".join(map(str, theirs))
    if isinstance(ours, (tuple, list)):
        ours = ",".join(map(str, ours))
    if isinstance(theirs, bool) or isinstance(ours, bool):
        return str(ours).lower() == str(theirs).lower()
    if isinstance(theirs, (int, float)):
        try:
            return math.isclose(float(ours), float(theirs), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return (ours if ours not in ("", None) else None) == (theirs if theirs != "" else None)


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def _defaults(data: str, recipe: str) -> dict[str, Any]:
    """The flat config a row of `data` and `recipe` ran with for the keys it does not hold."""
    try:
        return from_flat({"data.name": data, "train.recipe": recipe}).to_flat()
    except Exception:  # a data set or recipe this release no longer knows
        return to_flat_defaults()


# matched before the setting is compared (the model by its canonical name)
MATCHED = ("model.name", "data.name", "sparsity.density")


def setting_differences(g: Group, p: PaperNumber) -> list[str]:
    """`key ours (paper theirs)` for every key of the paper's setting a row of the group
    does not agree on. A key a row does not hold (a sweep of a release before that key
    existed) counts as the config's default, as its trials ran with it."""
    out = []
    for key, theirs in p.setting.items():
        if key in MATCHED:
            continue
        ours = [
            r.get(key, _defaults(str(r.get("data.name")), str(r.get("train.recipe"))).get(key))
            for r in g.rows
        ]
        if not all(_same(v, theirs) for v in ours):
            values = "/".join(sorted({_shown(v) for v in ours}))
            out.append(f"{key} {values} (paper {_shown(theirs)})")
    return out


def beside_the_paper(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (paper number, finished group of its model, data set, scheme label and
    density): the paper's value, ours as mean ± std (n) in percent, the epochs ours trained,
    and either the difference (`setting` "paper's": the group agrees on every key of the
    number's setting) or the keys that differ (`setting` "differs", `difference` None)."""
    out = []
    all_groups = groups(rows)
    for p in PAPER_NUMBERS:
        for g in all_groups:
            if (g.model, _data(g), g.label, g.density) != (p.model, p.data, p.scheme, p.density):
                continue
            stat = g.stat("test_acc")
            if stat is None:
                continue
            mean, std, n = (100 * stat[0], 100 * stat[1], stat[2])
            epochs = sorted({int(float(r.get("train.epochs", 0))) for r in g.rows})
            differs = setting_differences(g, p)
            keys = g.keys().items()
            out.append(
                {
                    "source": p.source,
                    "model": p.model,
                    "data": p.data,
                    "scheme": p.scheme,
                    "density": p.density,
                    **{
                        k: v
                        for k, v in keys
                        if k not in ("model.name", "scheme", "sparsity.density")
                    },
                    "paper": p.value,
                    "ours_mean": mean,
                    "ours_std": std,
                    "n": n,
                    "setting": "differs" if differs else "paper's",
                    "difference": None if differs else mean - p.value,
                    "differs": "; ".join(differs),
                    "epochs": ",".join(map(str, epochs)),
                }
            )
    return out


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `beside_the_paper` as text: reproductions of the paper's setting first
    (with the difference), then groups in another setting (the keys that differ, no
    difference)."""
    if not rows:
        return "no finished group matches a number the papers give"
    head = (
        f"{'source':<44} {'model':<18} {'scheme':<8} {'density':>7} {'paper':>7} "
        f"{'ours (n)':>18} {'diff':>6} {'epochs':>6}"
    )
    lines = [head, "-" * len(head)]
    same = [r for r in rows if r["difference"] is not None]
    other = [r for r in rows if r["difference"] is None]
    for r in same + other:
        ours = f"{r['ours_mean']:.2f} ± {r['ours_std']:.2f} ({r['n']})"
        diff = f"{r['difference']:>+6.2f}" if r["difference"] is not None else f"{'-':>6}"
        lines.append(
            f"{r['source'][:44]:<44} {r['model']:<18} {r['scheme']:<8} {r['density']:>7g} "
            f"{r['paper']:>7.2f} {ours:>18} {diff} {r['epochs']:>6}"
        )
        if r["differs"]:
            lines.append(f"{'':<4}not the paper's setting: {r['differs']}")
    if not same:
        lines.append("no group was trained in a paper's setting: no difference is computed")
    return "\n".join(lines)
