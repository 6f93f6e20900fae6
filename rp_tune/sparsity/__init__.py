"""Scheme registry: name -> per-layer densities meeting the global budget exactly.

    plan = layer_densities("erk", layer_specs(model), 0.1)
    plan.densities, plan.kept, plan.achieved_density

Data-free schemes need only the layer shapes. `snip` and `grasp` also need the model and a
training batch, `synflow` the model and the input shape; they still return a `DensityPlan`, so
masks are drawn the same way for every scheme.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rp_tune.sparsity.schemes import (
    DATA_FREE,
    DensityPlan,
    LayerSpec,
    allocate,
    check_density,
    target_count,
)

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMES",
    "DensityPlan",
    "LayerSpec",
    "Scheme",
    "layer_densities",
    "layer_overrides",
    "scheme_options",
    "scheme_names",
    "check_no_empty_layers",
    "empty_layers",
    "width_factor",
    "widths_up_to_factor",
]


@dataclass(frozen=True)
class Scheme:
    """A scheme and what it needs.

    needs_model: scores the model itself (saliency ratios); data-free schemes need only the
        layer shapes. batch: the data it scores: None (none), "random" (`sparsity.score_batch`
        images) or "per_class" (`sparsity.grasp_per_class` images of every class).
    options: the `sparsity.<name>` config keys it reads, handed to it as keyword arguments.
    Every scheme also takes per-layer overrides (`layer_densities(overrides=...)`).
    """

    name: str
    needs_model: bool
    batch: str | None
    description: str
    options: tuple[str, ...] = ()

    @property
    def needs_batch(self) -> bool:
        return self.batch is not None


SCHEMES: dict[str, Scheme] = {
    "uniform": Scheme("uniform", False, None, "p_l = d"),
    "uniform_plus": Scheme(
        "uniform_plus", False, None, "first conv dense, classifier >= 0.2, rest uniform"
    ),
    "er": Scheme("er", False, None, "Erdos-Renyi: (c_out + c_in) / (c_out c_in)"),
    "erk": Scheme(
        "erk", False, None, "Erdos-Renyi-Kernel with iterative dense cap", ("erk_power_scale",)
    ),
    "erk_plus": Scheme(
        "erk_plus", False, None, "ERK with a dense classifier", ("fc_density", "erk_power_scale")
    ),
    "snip": Scheme("snip", True, "random", "SNIP ratio on one batch, random positions"),
    "grasp": Scheme("grasp", True, "per_class", "GraSP ratio, class-balanced batch, T = 200"),
    "synflow": Scheme("synflow", True, None, "SynFlow ratio, 100 rounds, data-free"),
    "balanced": Scheme("balanced", False, None, "same kept count in every layer"),
    "pyramidal": Scheme("pyramidal", False, None, "p_l = r^l in layer order"),
}


def scheme_options(scheme: str, sparsity: Any) -> dict[str, Any]:
    """The keyword options `scheme` reads, from a SparsityConfig (or anything with them)."""
    return {name: getattr(sparsity, name) for name in SCHEMES[scheme].options}


def layer_overrides(
    layers: Sequence[LayerSpec],
    layer_density: Mapping[str, float] | None = None,
    classifier_density: float | None = None,
) -> dict[str, float]:
    """Per-layer densities set by hand: a map of layer name to density (RigL's
    `custom_sparsity_map`) and/or the classifier's (the last layer); ValueError naming an
    unknown layer and some valid names."""
    out = dict(layer_density or {})
    names = [s.name for s in layers]
    unknown = sorted(set(out) - set(names))
    if unknown:
        raise ValueError(
            f"sparsity.layer_density names {unknown}, not layers of this model; valid: "
            f"{names[:3] + ['...'] + names[-2:] if len(names) > 5 else names}"
        )
    if classifier_density is not None:
        out[names[-1]] = classifier_density
    return out


def scheme_names() -> list[str]:
    return list(SCHEMES)


def empty_layers(plan: DensityPlan) -> list[str]:
    """Layers the plan keeps no weight of: such a network passes no signal through them."""
    return [layer.name for layer, k in zip(plan.layers, plan.kept) if k == 0]


def check_no_empty_layers(plan: DensityPlan, allowed: bool = False) -> None:
    """ValueError naming the empty layers, unless `allowed` (sparsity.allow_empty_layers)."""
    empty = empty_layers(plan)
    if empty and not allowed:
        raise ValueError(
            f"sparsity.density={plan.target_density:g} with scheme {plan.scheme!r} keeps no "
            f"weight in {len(empty)} of {len(plan.layers)} layers ({', '.join(empty[:4])}"
            f"{', ...' if len(empty) > 4 else ''}); valid: a higher density, another scheme, "
            "or sparsity.allow_empty_layers=true"
        )


def width_factor(density: float) -> float:
    """How much wider a random network with layer density p must be to approximate a dense
    target: 1 / log(1 / (1 - p)) (Gadhikar et al., ICML 2023, Theorem 2.2); p = 0.5 -> 1.44,
    p = 0.1 -> 9.49. Below 1 (p > 1 - 1/e) no widening is needed."""
    check_density(density)
    if density == 1.0:
        return 0.0
    return 1.0 / math.log(1.0 / (1.0 - density))


def widths_up_to_factor(
    base: int, density: float, multipliers: Sequence[float] = (1, 1.5, 2, 3, 4, 6, 8, 10, 12, 16)
) -> list[int]:
    """base x each multiplier, up to and including the first multiplier >= width_factor(p)."""
    need = width_factor(density)
    out = []
    for m in multipliers:
        out.append(int(round(base * m)))
        if m >= need:
            return out
    raise ValueError(
        f"density {density}: width factor {need:.2f} exceeds the largest multiplier "
        f"{max(multipliers)}; pass larger multipliers"
    )


def _saliency(scheme: str) -> Callable[..., list[int]]:
    from rp_tune.sparsity import (
        saliency,  # torch is imported only when a model-based scheme is asked for
    )

    return {
        "snip": saliency.snip_counts,
        "grasp": saliency.grasp_counts,
        "synflow": saliency.synflow_counts,
    }[scheme]


def layer_densities(
    scheme: str,
    layers: Sequence[LayerSpec],
    density: float,
    *,
    model: Any = None,
    batch: tuple | None = None,
    input_shape: tuple[int, ...] | None = None,
    overrides: Mapping[str, float] | None = None,
    **options: Any,
) -> DensityPlan:
    """Per-layer kept counts of `scheme` at global `density` (sum == round(d N) exactly).

    overrides: {layer name: density} fixed by hand (`layer_overrides`); those layers keep
        round(p n) weights and the scheme shares the rest of the budget among the others, so
        the total is unchanged (as RigL's custom_sparsity_map). Density 1.0 is dense whatever
        they say.
    options: `fc_density` and `erk_power_scale` (erk_plus), `erk_power_scale` (erk),
        `min_fc_density` (uniform_plus), `rounds` (synflow), `temperature` (grasp).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown sparsity scheme {scheme!r}; valid choices: {scheme_names()}")
    check_density(density)
    if not layers:
        raise ValueError("no prunable layers given")
    layers = tuple(layers)
    info = SCHEMES[scheme]
    if overrides and density < 1.0:
        return _with_overrides(
            scheme, layers, density, overrides, model, batch, input_shape, options
        )
    if density == 1.0:
        plan = DensityPlan(scheme, 1.0, layers, tuple(s.numel for s in layers))
    elif scheme in DATA_FREE:
        plan = DATA_FREE[scheme](layers, density, **options)
    else:
        if model is None:
            raise ValueError(f"scheme {scheme!r} needs the model")
        if info.needs_batch and batch is None:
            raise ValueError(f"scheme {scheme!r} needs a training batch (images, labels)")
        keep = target_count(layers, density)
        if scheme == "synflow":
            if input_shape is None:
                if batch is None:
                    raise ValueError("scheme 'synflow' needs input_shape (C, H, W) or a batch")
                input_shape = tuple(batch[0].shape[1:])
            counts = _saliency(scheme)(model, layers, keep, input_shape, **options)
        else:
            counts = _saliency(scheme)(model, layers, keep, batch, **options)
        # the global top-k already meets the budget; allocate() only re-checks it
        plan = DensityPlan(
            scheme,
            density,
            layers,
            allocate(layers, [c / s.numel for c, s in zip(counts, layers)], keep),
        )
    log.debug(  # the trial logs the whole per-layer table of its masks
        "scheme %s: target density %.6g, achieved %.6g (%d of %d weights)",
        scheme,
        density,
        plan.achieved_density,
        plan.total_kept,
        plan.total,
    )
    return plan


def _with_overrides(scheme, layers, density, overrides, model, batch, input_shape, options):
    """The plan with some layers fixed: the scheme runs on the other layers (in their order,
    so the classifier stays last) at the density that keeps the global total exact."""
    if "fc_density" in SCHEMES[scheme].options and layers[-1].name in overrides:
        raise ValueError(
            f"scheme {scheme!r} sets the classifier ({layers[-1].name}) by fc_density; "
            "override other layers, or use erk with sparsity.classifier_density"
        )
    for name, p in overrides.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"layer {name}: density {p!r} outside [0, 1]")
    fixed = {s.name: round(overrides[s.name] * s.numel) for s in layers if s.name in overrides}
    rest = tuple(s for s in layers if s.name not in overrides)
    total = target_count(layers, density)
    left = total - sum(fixed.values())
    n_rest = sum(s.numel for s in rest)
    if not rest or left <= 0 or left > n_rest:
        raise ValueError(
            f"per-layer densities {dict(overrides)} keep {sum(fixed.values())} of the "
            f"{total} weights that density {density:g} allows, leaving {left} for the other "
            f"{n_rest} weights; valid: overrides that leave between 1 and all of them"
        )
    sub = layer_densities(
        scheme, rest, left / n_rest, model=model, batch=batch, input_shape=input_shape, **options
    )
    kept_rest = dict(zip((s.name for s in rest), sub.kept))
    kept = tuple(fixed[s.name] if s.name in fixed else kept_rest[s.name] for s in layers)
    return DensityPlan(scheme, density, layers, kept)
