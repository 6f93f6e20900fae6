"""Layer 3, sparse-training methods: how a trial's mask changes while it trains.

A method is one module of this package (its checks of the config and the hooks the trial's
loop calls: `rp_tune.methods.base.SparseTraining`) and one row of `METHODS` below, which says,
without importing torch, what planning, the config and the report need to know of it: the
value of `sparsity.mode` that selects it, its title, the config keys only it reads, whether
it starts from `sparsity.start_density` (sparse to sparse), whether each of its rounds or
levels trains the recipe again, and why its trials cannot share a fused trial group or DDP.
No module outside this package names a method; they ask this registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from rp_tune.core.errors import ConfigError
from rp_tune.core.layout import IMP_ROUNDS_FILE
from rp_tune.methods.base import DYNAMIC_KEYS, SparseTraining

__all__ = ["DEFAULT_METHOD", "DYNAMIC_KEYS", "METHODS", "Method", "SparseTraining"]

# Why drop-and-grow cannot train fused: per-member magnitudes, gradients and momentum.
_REGROWS_ALONE = (
    "SET/RigL and GraNet drop and regrow each layer's weights from that member's own "
    "magnitudes, gradients and momentum, which a fused model holds as one tensor per layer; "
    "dynamic sparse trials run alone"
)


# the method of a trial that names none, and of every dense trial: a fixed mask
DEFAULT_METHOD = "static"


@dataclass(frozen=True)
class Method:
    """One registry row: what the rest of rp_tune may know of a method without running it."""

    name: str  # the value of sparsity.mode
    title: str  # in messages and tables
    runtime: str  # "module:Class", the SparseTraining subclass (imported on first use)
    keys: tuple[str, ...] = ()  # config keys only it reads: refused elsewhere unless at default
    ignores: tuple[str, ...] = ()  # keys a grid may set that it ignores: planning drops them
    from_start: bool = False  # masks drawn at sparsity.start_density, trained to .density
    repeats_recipe: bool = False  # trains train.epochs per round or level (total_epochs)
    alone: str = ""  # why its trials cannot join a fused trial group ("": they can)
    no_ddp: str = ""  # why its trials cannot train with DDP ("": they can)
    round_records: str = ""  # artifact file of its per-round records (the report's table)

    def load(self) -> type[SparseTraining]:
        """The method's class (imports its module, and torch with it)."""
        module, _, cls = self.runtime.partition(":")
        return getattr(importlib.import_module(module), cls)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("static", "a fixed random mask", "rp_tune.methods.static:FixedMask",
               ignores=DYNAMIC_KEYS),
        Method("dynamic", "dynamic sparse training", "rp_tune.methods.dst:DropAndGrow",
               alone=_REGROWS_ALONE),
        Method("imp", "iterative magnitude pruning", "rp_tune.methods.imp:IMP",
               keys=("sparsity.start_density", "sparsity.prune_fraction",
                     "sparsity.prune_scope", "sparsity.rewind_epoch"),
               from_start=True, repeats_recipe=True, round_records=IMP_ROUNDS_FILE,
               alone="each round prunes by that member's own weight magnitudes and rewinds "
               "that member alone, between epochs the members would not share; IMP trials "
               "run alone"),
        Method("slt", "strong lottery tickets", "rp_tune.methods.slt:SLT",
               keys=("sparsity.start_density", "sparsity.levels"),
               from_start=True, repeats_recipe=True,
               alone="each member trains its own scores through its own top-k of frozen "
               "weights, which the fused model's one optimizer over weights does not hold; "
               "strong lottery ticket trials run alone"),
        Method("granet", "GraNet", "rp_tune.methods.granet:GraNet",
               keys=("sparsity.start_density", "sparsity.prune_start", "sparsity.prune_end",
                     "sparsity.regrow_in_source", "sparsity.flow_preservation"),
               from_start=True, alone=_REGROWS_ALONE),
    )
}  # fmt: skip


def method(name: str) -> Method:
    """The registry row of `sparsity.mode=name`; ConfigError naming the valid modes."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"sparsity.mode={name!r} is invalid; valid: {list(METHODS)}") from None


def method_keys() -> tuple[str, ...]:
    """Every key only some methods read (the others refuse it away from its default), in
    registry order. Drop-and-grow's keys are not among them: every method's config carries
    them (static ignores them, IMP and SLT refuse them in their own checks, GraNet reads
    some)."""
    return tuple(dict.fromkeys(k for m in METHODS.values() for k in m.keys))


def from_start(mode: str | None) -> bool:
    """Whether a trial of `mode` draws its masks at sparsity.start_density (sparse to sparse);
    False for a mode that is not registered (stored rows of other releases)."""
    row = METHODS.get(mode or "")
    return row is not None and row.from_start
