"""Layer-wise density schemes (Liu et al. 2022; Gadhikar et al. 2023) of layer shapes.

Every scheme turns (layers, global density d) into kept counts k_l per layer with
sum_l k_l == round(d * N) exactly: the real-valued densities p_l a scheme defines are
rounded by the largest-remainder method, and layers a scheme caps (dense layers, a minimum
classifier density) are never moved by that rounding. The reference codes undershoot when a
layer saturates; here the budget freed by a cap is always redistributed.

No torch here: the data-dependent schemes (snip, grasp, synflow) live in `saliency.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rp_tune.core.shapes import LayerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DensityPlan:
    """Result of a scheme: per-layer kept counts and the densities they give."""

    scheme: str
    target_density: float
    layers: tuple[LayerSpec, ...]
    kept: tuple[int, ...]

    @property
    def densities(self) -> tuple[float, ...]:
        return tuple(k / layer.numel for k, layer in zip(self.kept, self.layers))

    @property
    def total(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def total_kept(self) -> int:
        return sum(self.kept)

    @property
    def achieved_density(self) -> float:
        return self.total_kept / self.total

    def as_dict(self) -> dict[str, float]:
        return {layer.name: p for layer, p in zip(self.layers, self.densities)}


def target_count(layers: Sequence[LayerSpec], density: float) -> int:
    """round(d * N): the number of weights every scheme keeps in total."""
    return int(round(density * sum(layer.numel for layer in layers)))


def check_density(density: float) -> None:
    if not isinstance(density, (int, float)) or not (0.0 < float(density) <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density!r}")


def allocate(
    layers: Sequence[LayerSpec],
    densities: Sequence[float],
    target: int,
    fixed: Sequence[int] = (),
) -> tuple[int, ...]:
    """Round real densities to integer counts summing exactly to `target`.

    Free layers get floor(p_l n_l), then the remaining deficit goes one weight at a time to the
    layers with the largest fractional remainders (repeated while layers have room; a surplus is
    taken from the smallest remainders). Layers in `fixed` keep ceil(p_l n_l) and are never
    moved, so a dense layer stays dense and a minimum density stays met. Dense free layers
    (p_l == 1) are moved only if nothing else has room.
    """
    n = [layer.numel for layer in layers]
    fixed_set = set(fixed)
    exact = [min(max(p, 0.0), 1.0) * m for p, m in zip(densities, n)]
    kept = [
        min(m, math.ceil(x - 1e-9)) if i in fixed_set else min(m, math.floor(x + 1e-9))
        for i, (x, m) in enumerate(zip(exact, n))
    ]
    deficit = target - sum(kept)
    free = [i for i in range(len(n)) if i not in fixed_set]
    # Prefer layers the scheme left fractional; touch saturated ones only as a last resort.
    tiers = [[i for i in free if 0.0 < exact[i] < n[i]], free]
    for tier in tiers:
        while deficit > 0:
            room = sorted(
                (i for i in tier if kept[i] < n[i]), key=lambda i: (-(exact[i] - kept[i]), i)
            )
            if not room:
                break
            for i in room[:deficit]:
                kept[i] += 1
            deficit = target - sum(kept)
        while deficit < 0:
            room = sorted((i for i in tier if kept[i] > 0), key=lambda i: (exact[i] - kept[i], i))
            if not room:
                break
            for i in room[:-deficit]:
                kept[i] -= 1
            deficit = target - sum(kept)
    if deficit != 0:
        raise ValueError(
            f"cannot meet the budget of {target} weights: the layers a scheme fixes hold "
            f"{sum(kept[i] for i in fixed_set)} and the rest can hold "
            f"{sum(n[i] for i in free)}; choose a larger density"
        )
    return tuple(kept)


def water_fill(
    layers: Sequence[LayerSpec],
    raw: Sequence[float],
    target: float,
    fixed: dict[int, float] | None = None,
) -> list[float]:
    """Densities p_l = min(1, eps * raw_l) with sum p_l n_l = target (RigL's ERK loop).

    Layers in `fixed` take their given density. Each round solves eps in closed form over the
    free layers; the layers holding the largest raw value (all ties at once) become dense if
    eps * raw > 1, and eps is re-solved over the rest.
    """
    fixed = dict(fixed or {})
    n = [layer.numel for layer in layers]
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(n)) if i not in fixed and i not in dense]
        budget = target - sum(fixed[i] * n[i] for i in fixed) - sum(n[i] for i in dense)
        if not free:
            eps = 0.0
            break
        denom = sum(raw[i] * n[i] for i in free)
        eps = budget / denom if denom > 0 else 0.0
        top = max(raw[i] for i in free)
        if eps * top > 1.0:
            dense.update(i for i in free if raw[i] == top)
            continue
        break
    out = []
    for i in range(len(n)):
        if i in fixed:
            out.append(fixed[i])
        elif i in dense:
            out.append(1.0)
        else:
            out.append(max(0.0, eps * raw[i]))
    return out


def _plan(name: str, layers: Sequence[LayerSpec], d: float, p: Sequence[float], fixed=()):
    return DensityPlan(name, d, tuple(layers), allocate(layers, p, target_count(layers, d), fixed))


def uniform(layers: Sequence[LayerSpec], density: float) -> DensityPlan:
    """p_l = d."""
    return _plan("uniform", layers, density, [density] * len(layers))


def uniform_plus(
    layers: Sequence[LayerSpec], density: float, min_fc_density: float = 0.2
) -> DensityPlan:
    """First conv dense, classifier >= 0.2, the rest uniform q solved for the exact total."""
    if len(layers) < 3:
        raise ValueError("uniform_plus needs at least 3 prunable layers (first, middle, last)")
    target = target_count(layers, density)
    last = len(layers) - 1
    raw = [1.0] * len(layers)
    p = water_fill(layers, raw, target, fixed={0: 1.0})
    if p[last] < min_fc_density:
        p = water_fill(layers, raw, target, fixed={0: 1.0, last: min_fc_density})
        fixed = (0, last)
    else:
        fixed = (0,)
    return DensityPlan(
        "uniform_plus", density, tuple(layers), allocate(layers, p, target, fixed=fixed)
    )


def er(layers: Sequence[LayerSpec], density: float) -> DensityPlan:
    """Erdos-Renyi: p_l = eps * (c_out + c_in) / (c_out * c_in), capped at 1."""
    raw = [(s.shape[0] + s.shape[1]) / (s.shape[0] * s.shape[1]) for s in layers]
    p = water_fill(layers, raw, target_count(layers, density))
    return _plan("er", layers, density, p, fixed=_dense(p))


def erk_raw(layer: LayerSpec) -> float:
    """sum(shape) / prod(shape), kernel dims included (Evci et al. 2020)."""
    return sum(layer.shape) / layer.numel


def erk(layers: Sequence[LayerSpec], density: float, erk_power_scale: float = 1.0) -> DensityPlan:
    """ERK: p_l = eps * (sum(shape) / prod(shape))^power with the iterative dense cap; power
    1 is Evci et al.'s ERK, 0 is uniform (RigL's `erk_power_scale`)."""
    raw = [erk_raw(s) ** erk_power_scale for s in layers]
    p = water_fill(layers, raw, target_count(layers, density))
    return _plan("erk", layers, density, p, fixed=_dense(p))


def erk_plus(
    layers: Sequence[LayerSpec],
    density: float,
    fc_density: float = 1.0,
    erk_power_scale: float = 1.0,
) -> DensityPlan:
    """Classifier at fc_density (dense by default), ERK over the other layers, same total."""
    if not 0.0 < fc_density <= 1.0:
        raise ValueError(f"erk_plus fc_density must be in (0, 1], got {fc_density!r}")
    last = len(layers) - 1
    target = target_count(layers, density)
    if fc_density * layers[last].numel > target:
        raise ValueError(
            f"erk_plus: the classifier at fc_density={fc_density} keeps "
            f"{math.ceil(fc_density * layers[last].numel)} weights, more than the whole budget "
            f"{target} at density {density}; lower fc_density or raise the density"
        )
    raw = [erk_raw(s) ** erk_power_scale for s in layers]
    p = water_fill(layers, raw, target, fixed={last: fc_density})
    return _plan("erk_plus", layers, density, p, fixed=sorted({last, *_dense(p)}))


def balanced(layers: Sequence[LayerSpec], density: float) -> DensityPlan:
    """Same kept count X in every layer: p_l = min(1, X / n_l), X water-filled."""
    p = water_fill(layers, [1.0 / s.numel for s in layers], target_count(layers, density))
    return _plan("balanced", layers, density, p, fixed=_dense(p))


def pyramidal(layers: Sequence[LayerSpec], density: float) -> DensityPlan:
    """p_l = r^l (l = 1..L), r in (0, 1] the root of sum n_l r^l = d N (bisection)."""
    target = target_count(layers, density)
    n = [s.numel for s in layers]

    def total(r: float) -> float:
        return sum(m * r ** (i + 1) for i, m in enumerate(n))

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) < target:
            lo = mid
        else:
            hi = mid
    r = hi
    p = [r ** (i + 1) for i in range(len(n))]
    starved = [s.name for s, q in zip(layers, p) if q * s.numel < 1.0]
    if starved:
        log.warning(
            "pyramidal at density %s (r=%.4f): layers keep fewer than one weight: %s",
            density,
            r,
            ", ".join(starved),
        )
    return _plan("pyramidal", layers, density, p)


def _dense(p: Sequence[float]) -> list[int]:
    return [i for i, q in enumerate(p) if q >= 1.0]


DATA_FREE: dict[str, Callable[..., DensityPlan]] = {
    "uniform": uniform,
    "uniform_plus": uniform_plus,
    "er": er,
    "erk": erk,
    "erk_plus": erk_plus,
    "balanced": balanced,
    "pyramidal": pyramidal,
}
