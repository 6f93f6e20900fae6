"""The papers' own numbers, to put each reproduced mean ± std (n) beside.

Test accuracy in percent, as the papers print it. Sparsity s is density 1 - s. Only numbers
the papers state in their text or that their figures are labelled with are listed; the
report matches them to the groups of a sweep by model, data set, scheme and density.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rp_tune.results.grouping import Group, groups


@dataclass(frozen=True)
class PaperNumber:
    source: str
    model: str  # canonical model name
    data: str
    scheme: str  # a group label: "dense", "erk", "snip", ...
    density: float
    value: float  # test accuracy, percent


def _liu_fig6() -> list[PaperNumber]:
    src = "Liu et al. Fig. 6 (CIFAR-10, 50% sparsity)"
    out = []
    for model, erk, snip, dense in (
        ("cifar_resnet_20", 91.57, 91.86, 92.37),
        ("cifar_resnet_56", 93.21, 93.27, 93.14),
        ("cifar_resnet_110", 93.46, 93.27, 93.34),
    ):
        out += [
            PaperNumber(src, model, "cifar10", "erk", 0.5, erk),
            PaperNumber(src, model, "cifar10", "snip", 0.5, snip),
            PaperNumber(src, model, "cifar10", "dense", 1.0, dense),
        ]
    return out


def _liu_wrn50() -> list[PaperNumber]:
    src = "Liu et al. ImageNet (Fig. 6 bottom, Fig. 14 right)"
    out = [PaperNumber(src, "wide_resnet50_2", "imagenet", "dense", 1.0, 78.11)]
    for density, erk, snip in ((0.15, 68.93, 73.48), (0.3, 74.50, 76.81), (0.4, 76.28, 77.55)):
        out += [
            PaperNumber(src, "wide_resnet50_2", "imagenet", "erk", density, erk),
            PaperNumber(src, "wide_resnet50_2", "imagenet", "snip", density, snip),
        ]
    return out


def _he_dense() -> list[PaperNumber]:
    src = "He et al. 2016 (dense CIFAR-10 ResNets)"
    return [
        PaperNumber(src, f"cifar_resnet_{d}", "cifar10", "dense", 1.0, acc)
        for d, acc in ((20, 91.25), (32, 92.49), (44, 92.83), (56, 93.03), (110, 93.39))
    ]


PAPER_NUMBERS: tuple[PaperNumber, ...] = (*_liu_fig6(), *_liu_wrn50(), *_he_dense())


def _data(g: Group) -> str:
    return str(g.rows[0].get("data.name"))


def beside_the_paper(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per paper number a finished group reproduces: the paper's value, ours as
    mean ± std (n) in percent, the difference, and the epochs ours trained (a smoke run's
    two epochs are no reproduction of 160). Groups are matched by model, data set, scheme
    label and density; a number with no such group is left out."""
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
            out.append(
                {
                    "source": p.source,
                    "model": p.model,
                    "data": p.data,
                    "scheme": p.scheme,
                    "density": p.density,
                    **{
                        k: v
                        for k, v in g.keys().items()
                        if k not in ("model.name", "scheme", "sparsity.density")
                    },
                    "paper": p.value,
                    "ours_mean": mean,
                    "ours_std": std,
                    "n": n,
                    "difference": mean - p.value,
                    "epochs": ",".join(map(str, epochs)),
                }
            )
    return out


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `beside_the_paper` as text."""
    if not rows:
        return "no finished group matches a number the papers give"
    head = (
        f"{'source':<44} {'model':<18} {'scheme':<8} {'density':>7} {'paper':>7} "
        f"{'ours (n)':>18} {'diff':>6} {'epochs':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ours = f"{r['ours_mean']:.2f} ± {r['ours_std']:.2f} ({r['n']})"
        lines.append(
            f"{r['source'][:44]:<44} {r['model']:<18} {r['scheme']:<8} {r['density']:>7g} "
            f"{r['paper']:>7.2f} {ours:>18} {r['difference']:>+6.2f} {r['epochs']:>6}"
        )
    return "\n".join(lines)
