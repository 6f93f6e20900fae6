"""The protocol of a sparse-training method: what the config asks of it (checks, epochs, the
piece of a trial's name), and the hooks one trial's loop calls, in the order it calls them.

`trial` in the hooks is the trial the loop trains (`rp_tune.trial.state.Trial`); a method
reads its `cfg`, `model`, `masks`, `optimizer`, `best`, `rank`, `key` and `data.steps`, and
asks it for `evaluate_test()`, `training_flops(densities, images)`, `save_masks()` and
`reset_model_selection()`. Every hook has a default that leaves the mask fixed, so a method
overrides only what it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rp_tune.core.errors import ConfigError, fail
from rp_tune.sparsity.schemes import check_density

# Keys of drop-and-grow (SET / RigL); GraNet reads them too.
DYNAMIC_KEYS = (
    "sparsity.growth",
    "sparsity.update_frequency",
    "sparsity.death_rate",
    "sparsity.drop_schedule",
    "sparsity.death_rate_final",
    "sparsity.stop_at",
)


def default_of(s: Any, name: str) -> Any:
    """The default of a field of the config section `s` (a dataclass)."""
    return type(s).__dataclass_fields__[name].default


def check_below_start(s: Any, what: str) -> None:
    """A sparse-to-sparse method's target lies below its start: start_density in (0, 1]
    and density < start_density, one message each."""
    try:
        check_density(s.start_density)
    except ValueError:
        fail("sparsity.start_density", s.start_density, "a number in (0, 1]; 1.0: dense")
    if s.density >= s.start_density:
        raise ConfigError(
            f"sparsity.density={s.density!r} with sparsity.start_density="
            f"{s.start_density!r}: {what} from the start density down to "
            "sparsity.density, so it must be below the start (equal: a fixed mask, "
            "sparsity.mode='static')"
        )


def refuse_changed(s: Any, keys: tuple[str, ...], mode: str, why: str, other: str) -> None:
    """Refuse `keys` set away from their defaults under `mode`, with the reason and the mode
    (`other`) that reads them."""
    changed = [
        k for k in keys if getattr(s, k.split(".", 1)[1]) != default_of(s, k.split(".", 1)[1])
    ]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)} with sparsity.mode={mode!r}: {why}. Use one "
            f"mode: {mode!r} or {other!r}"
        )


class SparseTraining:
    """A fixed mask: every hook a no-op. Methods subclass it and override what they change.

    Order of the calls in one trial: `prepare_masks` (fresh start masks only, before they
    are bound to the model), `start` (masks bound, before DDP wraps the model), `parameters`
    and `recipe_step` (the optimizer and its schedule), then every epoch `begin_epoch`, per
    step `before_step` / `apply_masks` / `after_step`, `end_epoch`, `after_validation`; at
    the end `final_metrics`; every checkpoint `state_dict` and `write_artifacts`; a resume
    `load_state_dict`.
    """

    state_key = ""  # its entry in a checkpoint's state ("": it keeps no state)
    dense_gradient_on_update = False  # a step that updates the masks computed a dense gradient

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # --- what the config asks ----------------------------------------------------------

    @classmethod
    def check(cls, s: Any) -> None:
        """Check the sparsity section's values this method reads; ConfigError, one message."""

    @classmethod
    def check_trial(cls, cfg: Any) -> None:
        """Checks that need the whole trial config (e.g. against train.epochs)."""

    @classmethod
    def total_epochs(cls, s: Any, epochs: int) -> int:
        """Epochs the trial trains in all, for a recipe of `epochs`."""
        return epochs

    @classmethod
    def variant(cls, get: Callable[[str], Any]) -> str:
        """The piece of a trial's run key and plot label beyond the scheme ("rigl"), read
        through `get(flat key)`; "" for none."""
        return ""

    # --- set-up --------------------------------------------------------------------------

    def prepare_masks(self, masks: Mapping[str, Any], key: str) -> None:
        """Change freshly drawn masks (a dict name -> bool tensor) before they are bound."""

    def start(self, model: Any, masks: Any, steps_per_epoch: int) -> None:
        """The masks are bound to the model; DDP has not wrapped it yet."""

    def parameters(self) -> list[Any] | None:
        """What SGD trains instead of the model's parameters (None: the model's)."""
        return None

    def recipe_step(self, step: int, steps_per_epoch: int) -> int:
        """The step of the learning-rate recipe that training step `step` trains at."""
        return step

    # --- the loop ------------------------------------------------------------------------

    def begin_epoch(self, trial: Any, epoch: int) -> None:
        """Before the epoch's first step."""

    def before_step(self) -> None:
        """After backward, before the optimizer step."""

    def apply_masks(self, masks: Any) -> None:
        """After the optimizer step: zero the pruned weights again (one fused multiply)."""
        masks.apply_()

    def after_step(self, step: int, optimizer: Any) -> bool:
        """After the masks were applied; True when this step changed the masks."""
        return False

    def gradient_densities(self) -> dict[str, float] | None:
        """Per-layer density of the weight gradient a step computes, where it differs from
        the masks' (strong tickets' scores cover the source); None: the masks'."""
        return None

    def end_epoch(self, trial: Any, epoch: int) -> dict[str, Any]:
        """After the epoch's last step: the method's metrics of the epoch."""
        return {}

    def after_validation(self, trial: Any, epoch: int) -> dict[str, Any]:
        """After the epoch's validation: metrics (e.g. the record of a round that ended)."""
        return {}

    def final_metrics(self, trial: Any) -> dict[str, Any]:
        """Final metrics it sets or overrides (e.g. training FLOPs counted per round)."""
        return {}

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def write_artifacts(self, trial: Any, folder: Any) -> None:
        """Files beside the checkpoint's masks, for trackers to log (open formats)."""


def refuse_drop_and_grow(s: Any, mode: str, why: str) -> None:
    """Refuse drop-and-grow's keys (set away from their defaults) under a method whose mask
    only shrinks, with its reason."""
    refuse_changed(
        s,
        DYNAMIC_KEYS,
        mode,
        f"these set dynamic sparse training (SET/RigL), whose drop-and-grow revives weights; {why}",
        "dynamic",
    )
