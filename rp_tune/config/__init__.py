"""The trial config: one frozen dataclass tree, its flat dict, validation and run key.

Sections: model, data, sparsity, train, evaluation, resources, plus the trial seed. The flat
dict (`{"sparsity.scheme": "erk", ...}`) is what a search space sweeps, what MLflow logs and
what `run_key` hashes. Every value is validated on construction; an error names the key, the
value and the valid choices.

Training hyperparameters left as None take the recipe's value (Liu et al. 2022, Table 1), so a
resolved config always holds concrete numbers and the flat dict round-trips exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rp_tune.core.errors import ConfigError, fail
from rp_tune.core.model_names import canonical_model_name, check_model_name
from rp_tune.methods import DEFAULT_METHOD, METHODS, method, method_keys
from rp_tune.methods.base import default_of
from rp_tune.sparsity import SCHEMES
from rp_tune.sparsity.schemes import check_density

__all__ = ["ConfigError"]  # defined in rp_tune.core.errors (the methods' checks raise it too)


DATASETS: dict[str, int] = {
    # name -> number of classes (0: read from the image folder)
    "cifar10": 10,
    "cifar100": 100,
    "svhn": 10,
    "imagenet": 0,
    "tinyimagenet": 200,  # Tiny ImageNet: 64x64, 100k training and 10k validation images
    "synthetic": 10,
}
RECIPES: dict[str, dict[str, Any]] = {
    "cifar": dict(
        epochs=160,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        bn_weight_decay=True,
        milestones=(80, 120),
        gamma=0.1,
        warmup_epochs=0,
        label_smoothing=0.0,
    ),
    "imagenet": dict(
        epochs=100,
        batch_size=192,
        lr=0.4,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        bn_weight_decay=False,
        milestones=(30, 60, 90),
        gamma=0.1,
        warmup_epochs=5,
        label_smoothing=0.1,
    ),
}
# Liu et al. Table 1 trains the dense ImageNet nets 90 epochs with decay at 30/60/80 (the
# sparse ones 100, at 30/60/90): a space gives its dense trials this recipe.
RECIPES["imagenet_dense"] = {**RECIPES["imagenet"], "epochs": 90, "milestones": (30, 60, 80)}
# recipe of the sparse trials -> the recipe their dense reference trains with, where the
# paper gives the dense nets their own (the report matches them as one recipe)
DENSE_RECIPE = {"imagenet": "imagenet_dense"}
PRECISIONS = ("auto", "fp32", "bf16")
SAMPLINGS = ("exact", "bernoulli")
# sparsity.mode: the registered sparse-training methods (rp_tune.methods.METHODS)
MODES = tuple(METHODS)
PRUNE_SCOPES = ("global", "layer")
GROWTHS = ("random", "gradient")
# Keys that only shape a sparse plan (dropped at density 1.0: a dense net is one trial).
SCHEME_OPTION_KEYS = (
    "sparsity.fc_density",
    "sparsity.classifier_density",
    "sparsity.layer_density",
    "sparsity.erk_power_scale",
)
# Drop-fraction schedules of dynamic sparse training (rp_tune.methods.dst.death_rate).
DROP_SCHEDULES = ("rigl", "cosine_whole_run")
# Keys that change where or how fast a trial runs, never its result: left out of run_key so
# the same experiment keeps its name on another machine or cluster.
NOT_HASHED = ("data.root", "data.download", "data.num_workers", "train.checkpoint_every")


_fail = fail


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cifar_resnet_20"

    def __post_init__(self) -> None:
        try:
            check_model_name(self.name)
        except ValueError as e:
            raise ConfigError(f"model.name: {e}") from None
        # one network, one name: cifar_resnet_20_16 and cifar_resnet_20 are the same trial
        object.__setattr__(self, "name", canonical_model_name(self.name))


def default_val_fraction(name: str) -> float:
    """0.1 of a CIFAR-sized training set (45k/5k; Tiny ImageNet 90k/10k); 0 for ImageNet,
    trained on in full."""
    return 0.0 if name == "imagenet" else 0.1


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar10"
    root: str = "data"
    download: bool = True
    # held-out share of the training set for model selection; None: 0.1 for the CIFAR-sized
    # sets (45k/5k, as both papers), 0.0 for ImageNet (both papers train on all of it)
    val_fraction: float | None = None
    num_classes: int = 0  # 0: the dataset's own (CIFAR-10: 10, ...; image folder: its classes)
    num_workers: int = 8  # DataLoader workers for image folders; small sets live on the device
    image_size: int = 224  # train/eval crop for image folders
    synthetic_train: int = 1024
    synthetic_test: int = 256

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            _fail("data.name", self.name, str(list(DATASETS)))
        if self.val_fraction is None:
            object.__setattr__(self, "val_fraction", default_val_fraction(self.name))
        if not 0.0 <= self.val_fraction < 1.0:
            _fail("data.val_fraction", self.val_fraction, "a fraction in [0, 1)")
        if self.num_classes < 0:
            _fail("data.num_classes", self.num_classes, "0 (the dataset's own) or a count >= 1")
        for key in ("num_workers",):
            if getattr(self, key) < 0:
                _fail(f"data.{key}", getattr(self, key), "an integer >= 0")
        for key in ("image_size", "synthetic_train", "synthetic_test"):
            if getattr(self, key) < 1:
                _fail(f"data.{key}", getattr(self, key), "an integer >= 1")

    @property
    def classes(self) -> int:
        """Number of classes (0 for an image folder until it is read)."""
        return self.num_classes or DATASETS[self.name]


@dataclass(frozen=True)
class SparsityConfig:
    scheme: str = "erk"
    density: float = 0.1  # kept fraction of all conv/linear weights; 1.0 = dense
    sampling: str = "exact"
    fc_density: float = 1.0  # erk_plus: classifier density
    # per-layer overrides, for every scheme: those layers keep this density and the scheme
    # shares the rest of the budget among the others (the total stays `density`)
    classifier_density: float | None = None  # the last layer (Liu et al. Fig. 14 left)
    layer_density: str = ""  # "name=density,name=density" (as RigL's custom_sparsity_map)
    erk_power_scale: float = 1.0  # erk, erk_plus: p_l ~ (sum shape / prod shape)^power
    score_batch: int = 128  # snip: images in the scoring batch (Liu et al.: 128)
    grasp_per_class: int = 10  # grasp: images per class in its class-balanced batch (paper: 10)
    # a plan that keeps no weight in some layer cuts the network: refused unless this is set
    allow_empty_layers: bool = False
    mode: str = DEFAULT_METHOD  # a sparse-training method of rp_tune.methods.METHODS
    growth: str = "gradient"  # dynamic: random (SET) or gradient (RigL); drop is by magnitude
    update_frequency: int = 100  # dynamic: steps between mask updates
    death_rate: float = 0.5  # dynamic: initial fraction of kept weights replaced per update
    # rigl: cosine decay from death_rate to 0 at stop_at, no update after (Evci et al. 2020);
    # cosine_whole_run: cosine to death_rate_final over the whole run, updates never stop
    # (the released code of Liu et al.)
    drop_schedule: str = "rigl"
    death_rate_final: float = 0.005  # cosine_whole_run only: the rate at the end of training
    stop_at: float = 0.75  # rigl only: fraction of training after which the mask freezes
    # imp: the random start mask keeps `start_density` (the scheme's layer ratios; 1.0 = a
    # dense start, classic IMP); each round trains, then removes the smallest-magnitude
    # `prune_fraction` of the weights still kept (over all masked layers, or per layer) and
    # rewinds the survivors to their values at `rewind_epoch`, until `density` is reached
    start_density: float = 1.0
    prune_fraction: float = 0.2  # Frankle & Carbin 2019: 20% of the remaining weights a round
    prune_scope: str = "global"
    rewind_epoch: int = 0  # 0: the initialization (Frankle & Carbin); k: weight rewinding
    # slt: scores trained inside a random source mask at `start_density` (1.0: a dense
    # source), the density annealed to `density` in `levels` levels of train.epochs each
    levels: int = 5  # Gadhikar et al.'s code: 5
    # granet: from a random source at `start_density`, magnitude pruning to `density` on the
    # cubic schedule between these fractions of training (Gadhikar et al.: epochs 0 to 110 of
    # 160), and drop-and-regrow by gradient every update_frequency steps all run long
    prune_start: float = 0.0
    prune_end: float = 0.6875
    regrow_in_source: bool = False  # True: regrow only at the source's positions
    # True: every unit of the source gets a connection first (Gadhikar et al.'s GraNet runs)
    flow_preservation: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            _fail("sparsity.scheme", self.scheme, str(list(SCHEMES)))
        try:
            check_density(self.density)
        except ValueError:
            _fail("sparsity.density", self.density, "a number in (0, 1]; 1.0 means dense")
        if self.sampling not in SAMPLINGS:
            _fail("sparsity.sampling", self.sampling, str(list(SAMPLINGS)))
        if not 0.0 < self.fc_density <= 1.0:
            _fail("sparsity.fc_density", self.fc_density, "a number in (0, 1]")
        if self.classifier_density is not None:
            if not 0.0 <= self.classifier_density <= 1.0:
                _fail("sparsity.classifier_density", self.classifier_density, "a number in [0, 1]")
            if "fc_density" in SCHEMES[self.scheme].options:
                raise ConfigError(
                    f"sparsity.classifier_density with sparsity.scheme={self.scheme!r}: "
                    f"{self.scheme} sets the classifier by sparsity.fc_density; use one of them"
                )
        # ConfigError if malformed; one spelling per map, so one trial has one run key
        canonical = ",".join(
            f"{k}={v!r}" for k, v in sorted(layer_density_map(self.layer_density).items())
        )
        object.__setattr__(self, "layer_density", canonical)
        if self.erk_power_scale != 1.0 and "erk_power_scale" not in SCHEMES[self.scheme].options:
            _fail(
                "sparsity.erk_power_scale",
                self.erk_power_scale,
                f"1.0 with scheme {self.scheme!r} (only "
                f"{[n for n, s in SCHEMES.items() if 'erk_power_scale' in s.options]} read it)",
            )
        if self.erk_power_scale < 0:
            _fail("sparsity.erk_power_scale", self.erk_power_scale, "a number >= 0")
        for key in ("score_batch", "grasp_per_class"):
            if getattr(self, key) < 1:
                _fail(f"sparsity.{key}", getattr(self, key), "an integer >= 1")
        if self.drop_schedule not in DROP_SCHEDULES:
            _fail("sparsity.drop_schedule", self.drop_schedule, str(list(DROP_SCHEDULES)))
        if self.mode not in MODES:
            _fail("sparsity.mode", self.mode, str(list(MODES)))
        if self.growth not in GROWTHS:
            _fail("sparsity.growth", self.growth, str(list(GROWTHS)))
        if self.update_frequency < 1:
            _fail("sparsity.update_frequency", self.update_frequency, "an integer >= 1")
        for key in ("death_rate", "death_rate_final", "stop_at"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                _fail(f"sparsity.{key}", getattr(self, key), "a fraction in [0, 1]")
        if self.prune_scope not in PRUNE_SCOPES:
            _fail("sparsity.prune_scope", self.prune_scope, str(list(PRUNE_SCOPES)))
        row = method(self.mode)
        row.load().check(self)  # its own values first, then others' keys
        for key in method_keys():
            name = key.split(".", 1)[1]
            default = default_of(self, name)
            if key not in row.keys and getattr(self, name) != default:
                readers = [
                    f"{m.title} (sparsity.mode={m.name!r})"
                    for m in METHODS.values()
                    if key in m.keys
                ]
                raise ConfigError(
                    f"{key}={getattr(self, name)!r} with sparsity.mode={self.mode!r}: only "
                    f"{' and '.join(readers)} {'reads' if len(readers) == 1 else 'read'} it; "
                    f"leave it at {default!r}"
                )


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "cifar"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    bn_weight_decay: bool | None = None
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    warmup_epochs: int | None = None
    label_smoothing: float | None = None
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = True  # CUDA only
    checkpoint_every: int = 1
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            _fail("train.recipe", self.recipe, str(list(RECIPES)))
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        positive_int = ("epochs", "batch_size", "checkpoint_every")
        for key in positive_int:
            if getattr(self, key) < 1:
                _fail(f"train.{key}", getattr(self, key), "an integer >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail("train.lr", self.lr, "a finite number > 0")
        if not 0.0 <= self.momentum < 1.0:
            _fail("train.momentum", self.momentum, "a number in [0, 1)")
        if self.weight_decay < 0:
            _fail("train.weight_decay", self.weight_decay, "a number >= 0")
        if list(self.milestones) != sorted(set(self.milestones)) or any(
            m < 1 for m in self.milestones
        ):
            _fail("train.milestones", self.milestones, "strictly increasing epochs >= 1")
        if not 0.0 < self.gamma <= 1.0:
            _fail("train.gamma", self.gamma, "a number in (0, 1]")
        if self.warmup_epochs < 0:
            _fail("train.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            _fail("train.label_smoothing", self.label_smoothing, "a number in [0, 1)")
        if self.precision not in PRECISIONS:
            _fail("train.precision", self.precision, str(list(PRECISIONS)))
        if self.nesterov and self.momentum == 0:
            _fail("train.nesterov", self.nesterov, "False when train.momentum is 0")


OOD_SETS = ("cifar10", "cifar100", "svhn", "gaussian", "imagenet_o")
DEFAULT_OOD = {
    "cifar10": ("cifar100", "svhn", "gaussian"),
    "cifar100": ("cifar10", "svhn", "gaussian"),
    "svhn": ("cifar10", "cifar100", "gaussian"),
    "synthetic": ("gaussian",),  # fake images: real OoD sets would say nothing
    "tinyimagenet": ("gaussian",),  # 64x64 noise; the 32x32 sets would differ in size too
    "imagenet": ("imagenet_o",),
}


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = 1000
    ece: bool = True  # 15-bin ECE on validation (every epoch) and test
    fgsm: bool = True  # FGSM robust test accuracy at the end
    fgsm_eps: float = 8 / 255  # in [0, 1] pixel space
    top5: bool = False  # top-5 test accuracy on any data set (ImageNet trials always have it)
    ood: bool = True  # OoD ROC-AUC (max softmax probability) at the end; false: none
    # empty: the dataset's defaults (DEFAULT_OOD). Every set named is data the sweep needs:
    # checked before Ray starts like the training set. To run without the real sets, say so:
    # evaluation.ood_sets=gaussian, or evaluation.ood=false.
    ood_sets: tuple[str, ...] = ()
    ood_download: bool = False  # fetch absent OoD sets (torchvision) before the sweep starts
    grad_flow_every: int = 100  # effective gradient flow every k steps; 0 disables
    grad_flow_steps: int = 20_000  # ... for the first N steps (paper: 20k iterations)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            _fail("evaluation.batch_size", self.batch_size, "an integer >= 1")
        if not 0.0 <= self.fgsm_eps <= 1.0:
            _fail("evaluation.fgsm_eps", self.fgsm_eps, "a number in [0, 1] (pixel scale)")
        bad = [s for s in self.ood_sets if s not in OOD_SETS]
        if bad:
            _fail("evaluation.ood_sets", self.ood_sets, f"names from {list(OOD_SETS)}")
        for key in ("grad_flow_every", "grad_flow_steps"):
            if getattr(self, key) < 0:
                _fail(f"evaluation.{key}", getattr(self, key), "an integer >= 0")


@dataclass(frozen=True)
class ResourcesConfig:
    workers: int = 1  # DDP workers per trial
    # None: the sweep decides, a GPU per worker wherever the Ray cluster (or its autoscaler's
    # node types) has GPUs, else the CPU (`rp_tune.adapters.ray.sweep.resolve_gpus`); 0: the CPU; a
    # fraction packs several one-worker trials on one GPU
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            _fail("resources.workers", self.workers, "an integer >= 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            _fail(
                "resources.gpus_per_worker",
                self.gpus_per_worker,
                "none (a GPU where there is one), 0 (CPU) or a number > 0",
            )
        gpus = self.gpus_per_worker or 0.0
        if gpus > 1 and gpus != int(gpus):
            _fail(
                "resources.gpus_per_worker",
                self.gpus_per_worker,
                "a fraction <= 1 or a whole number of GPUs",
            )
        if self.cpus_per_worker <= 0:
            _fail("resources.cpus_per_worker", self.cpus_per_worker, "a number > 0")
        if self.workers > 1 and 0 < gpus < 1:
            raise ConfigError(
                f"resources.gpus_per_worker={self.gpus_per_worker!r} with resources.workers="
                f"{self.workers}: NCCL cannot run several DDP workers on one GPU; use a whole "
                "GPU per worker, or one worker per trial for fractional GPUs"
            )


@dataclass(frozen=True)
class SeedsConfig:
    """The trial's three sources of randomness, each its own seed; None (the default) takes
    the trial's `seed`, so one `seed` still reproduces everything. Setting one alone varies
    that randomness alone, e.g. seeds.mask over 0..4 at a fixed init and data order asks how
    much a result owes to which random mask was drawn.

    mask: the random masks, the saliency batch of the snip/grasp ratios, DST's regrowth;
    init: the initial weights; data: batch order, augmentation, the synthetic data set.
    """

    mask: int | None = None
    init: int | None = None
    data: int | None = None

    def __post_init__(self) -> None:
        for key in ("mask", "init", "data"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                _fail(f"seeds.{key}", v, "none (the trial's seed) or an integer >= 0")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "sparsity": SparsityConfig,
    "train": TrainConfig,
    "evaluation": EvaluationConfig,
    "resources": ResourcesConfig,
    "seeds": SeedsConfig,
}


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            _fail("seed", self.seed, "an integer >= 0")
        for section in SECTIONS:
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    _fail(f"{section}.{f.name}", value, "a finite number")
        if self.data.name in self.evaluation.ood_sets:
            raise ConfigError(
                f"evaluation.ood_sets={self.evaluation.ood_sets!r} holds the training dataset "
                f"data.name={self.data.name!r}; an OoD set must be another dataset"
            )
        row = method(self.sparsity.mode)
        if row.no_ddp and self.resources.workers > 1:
            raise ConfigError(
                f"resources.workers={self.resources.workers} with sparsity.mode="
                f"{row.name!r}: {row.no_ddp}; valid: resources.workers=1"
            )
        row.load().check_trial(self)
        if self.data.name == "imagenet" and self.model.name.startswith(("cifar_", "vgg")):
            raise ConfigError(
                f"model.name={self.model.name!r} is a 32x32 CIFAR net; with data.name="
                "'imagenet' use one of resnet18, resnet34, resnet50, resnet101, wide_resnet50_2"
            )

    def to_flat(self) -> dict[str, Any]:
        return to_flat(self)

    @property
    def total_epochs(self) -> int:
        """Epochs the trial trains in all: train.epochs, or what its method's rounds or
        levels add up to (`SparseTraining.total_epochs`)."""
        return method(self.sparsity.mode).load().total_epochs(self.sparsity, self.train.epochs)

    def seed_of(self, what: str) -> int:
        """The seed of one source of randomness ("mask", "init", "data"): seeds.<what>,
        or the trial's `seed` where that is unset."""
        own = getattr(self.seeds, what)
        return self.seed if own is None else own

    def replace(self, **flat: Any) -> TrialConfig:
        """A copy with flat keys overridden, e.g. cfg.replace(**{"train.epochs": 2}).

        Keys that set a value alone change their section in place (dataclasses.replace runs
        every check again, as from_flat would); a new recipe or data set, whose defaults
        reach other keys, rebuilds the whole config."""
        if not {"train.recipe", "data.name"} & set(flat):
            return _replace_fields(self, flat)
        base = to_flat(self)
        if flat.get("train.recipe", self.train.recipe) != self.train.recipe:
            for key in RECIPES[self.train.recipe]:  # let the new recipe fill its own values
                base.pop(f"train.{key}")
        name = flat.get("data.name", self.data.name)
        if name != self.data.name and "data.val_fraction" not in flat:
            if self.data.val_fraction == default_val_fraction(self.data.name):
                base.pop("data.val_fraction")  # the new dataset's own default
        return from_flat({**base, **flat})


def _replace_fields(cfg: TrialConfig, flat: Mapping[str, Any]) -> TrialConfig:
    """cfg with flat keys set, each coerced to its field's type; ConfigError for a key that
    does not exist. Sections not named keep their (validated) objects."""
    unknown = sorted(k for k in flat if k not in _defaults())
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {flat_keys()}")
    parts: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key != "seed":
            section, name = key.split(".", 1)
            typ = _field_types(SECTIONS[section])[name]
            parts.setdefault(section, {})[name] = coerce(key, value, typ)
    changes: dict[str, Any] = {
        s: dataclasses.replace(getattr(cfg, s), **kw) for s, kw in parts.items()
    }
    if "seed" in flat:
        changes["seed"] = coerce("seed", flat["seed"], int)
    return dataclasses.replace(cfg, **changes)


def layer_density_map(text: str) -> dict[str, float]:
    """sparsity.layer_density "conv1=1.0,fc=0.5" as {"conv1": 1.0, "fc": 0.5}; ConfigError for
    an item that is not name=density with a density in [0, 1]."""
    out: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            density = float(value)
        except ValueError:
            density = float("nan")
        if not sep or not name.strip() or not 0.0 <= density <= 1.0:
            _fail(
                "sparsity.layer_density",
                text,
                "name=density[,name=density...], densities in [0, 1]",
            )
        out[name.strip()] = density
    return out


def trial_epochs(flat: Mapping[str, Any]) -> int:
    """`TrialConfig.total_epochs` of a stored flat config (a sweep's trials.json entry or a
    Tune params.json): what "finished" means for that trial. Stored configs of releases
    before IMP lack its keys: their train.epochs."""
    row = METHODS.get(str(flat.get("sparsity.mode")))
    if row is None or not row.repeats_recipe:
        return int(flat["train.epochs"])
    return from_flat(flat).total_epochs


def ood_sets(cfg: TrialConfig) -> tuple[str, ...]:
    """The OoD sets a trial evaluates: evaluation.ood_sets, else its dataset's defaults."""
    if not cfg.evaluation.ood:
        return ()
    return cfg.evaluation.ood_sets or DEFAULT_OOD.get(cfg.data.name, ())


def to_flat(cfg: TrialConfig) -> dict[str, Any]:
    """{"section.key": value} for every field, plus "seed"; tuples stay tuples."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            flat[f"{section}.{f.name}"] = getattr(getattr(cfg, section), f.name)
    flat["seed"] = cfg.seed
    return flat


def flat_keys() -> list[str]:
    return list(_defaults())


def to_flat_defaults() -> dict[str, Any]:
    return dict(_defaults())


@functools.cache
def _defaults() -> dict[str, Any]:
    """The default config, flat; built once (every `from_flat` checks its keys against it:
    building it anew each time was a third of planning a 10,000-trial sweep). Callers get
    copies."""
    return to_flat(TrialConfig())


@functools.cache
def _field_types(section_cls: type) -> dict[str, Any]:
    """Field name -> type of a section; cached: get_type_hints evaluates every annotation
    string anew, which made expanding an 828-trial space take seconds."""
    return typing.get_type_hints(section_cls)


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a value (possibly a CLI string) to the field's type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(key, value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [v for v in (t.strip() for t in text.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            _fail(key, value, "a comma-separated list, e.g. 80,120")
        return tuple(coerce(key, v, args[0]) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        _fail(key, value, "true or false")
    if annotation is int:
        if isinstance(value, bool):
            _fail(key, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        _fail(key, value, "an integer")
    if annotation is float:
        if isinstance(value, bool):
            _fail(key, value, "a number")
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            _fail(key, value, "a number")
        if not math.isfinite(number):  # NaN passes every `< 0` check, inf most others
            _fail(key, value, "a finite number")
        return number
    if annotation is str:
        if not isinstance(value, str):
            _fail(key, value, "a string")
        return value
    raise TypeError(f"unsupported config field type {annotation!r} for {key}")


def from_flat(flat: Mapping[str, Any]) -> TrialConfig:
    """Build (and validate) a TrialConfig from flat keys; missing keys take defaults."""
    valid = _defaults()
    unknown = sorted(k for k in flat if k not in valid)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}")
    parts: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        if key == "seed":
            continue
        section, name = key.split(".", 1)
        parts[section][name] = coerce(key, value, _field_types(SECTIONS[section])[name])
    seed = coerce("seed", flat.get("seed", 0), int)
    built = {s: SECTIONS[s](**kw) for s, kw in parts.items()}
    return TrialConfig(**built, seed=seed)


def config_hash(cfg: TrialConfig, length: int = 10) -> str:
    """sha256 of the flat config (minus NOT_HASHED keys), hex, first `length` chars."""
    flat = {k: v for k, v in to_flat(cfg).items() if k not in NOT_HASHED}
    text = json.dumps(flat, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _value(cfg: TrialConfig, key: str) -> Any:
    """The value of a flat key ("sparsity.growth") in a config."""
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name) if name else getattr(cfg, section)


def run_key(cfg: TrialConfig) -> str:
    """Readable + hashed name, e.g. `cifar_resnet_20-erk-d0.1-s0-3f9a1c2e7b`; no timestamps."""
    s = cfg.sparsity
    scheme = "dense" if s.density == 1.0 else s.scheme
    row = method(s.mode)
    if row.from_start:  # cifar_resnet_20-er0.5-imp-d0.05-s0-...: from ER at 0.5
        start = "dense" if s.start_density == 1.0 else f"{s.scheme}{s.start_density:g}"
        scheme = f"{start}-{s.mode}"
    elif s.density < 1.0 and (variant := row.load().variant(lambda k: _value(cfg, k))):
        scheme += "-" + variant  # cifar_resnet_20-erk-rigl-d0.1-...
    seeds = f"s{cfg.seed}" + "".join(  # s0m3: seed 0, mask seed 3
        f"{k[0]}{getattr(cfg.seeds, k)}"
        for k in ("mask", "init", "data")
        if getattr(cfg.seeds, k) is not None
    )
    return f"{cfg.model.name}-{scheme}-d{s.density:g}-{seeds}-{config_hash(cfg)}"


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (the CLIs' repeatable --set) as a dict; values stay strings, which
    `from_flat` coerces to each field's type; ConfigError for an item without '='."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. --set train.epochs=2)")
        key, value = (s.strip() for s in item.split("=", 1))
        out[key] = value
    return out


# --- comparing configs: a stored sweep against the space expanded now -----------------


def _comparable(
    flat: Mapping[str, Any], drop_gpus: bool = False, read: bool = True
) -> dict[str, Any]:
    """A flat config as this release reads it (fields it added take their defaults), minus
    the keys that never change a result (NOT_HASHED), with lists as tuples; drop_gpus: less
    resources.gpus_per_worker too (compared with configs that leave it to the sweep).
    read=False: `flat` is a TrialConfig's own to_flat(), already as this release reads it."""
    full = from_flat(flat).to_flat() if read else flat
    out = {
        k: tuple(v) if isinstance(v, list) else v for k, v in full.items() if k not in NOT_HASHED
    }
    if drop_gpus:
        out.pop("resources.gpus_per_worker", None)
    return out


def gpus_unresolved(configs: Sequence[TrialConfig]) -> bool:
    """Some config leaves resources.gpus_per_worker to the sweep (None): it then matches
    whatever the sweep chose for it."""
    return any(c.resources.gpus_per_worker is None for c in configs)


def trial_identity(flat: Mapping[str, Any], drop_gpus: bool = False) -> str:
    """What makes two trials the same experiment: the flat config as this release reads it,
    less where it runs (NOT_HASHED), whatever run key a release gave it."""
    return repr(sorted(_comparable(flat, drop_gpus).items()))


def config_identity(cfg: TrialConfig, drop_gpus: bool = False) -> str:
    """trial_identity of a config of this release, without reading its flat form again."""
    return repr(sorted(_comparable(cfg.to_flat(), drop_gpus, read=False).items()))


def config_differences(
    stored: Sequence[Mapping[str, Any]], configs: Sequence[TrialConfig]
) -> list[str]:
    """The flat keys whose values differ between the trials a sweep stored and `configs` (the
    space and overrides expanded now); [] when they are the same trials.

    Fields added by a newer release compare at their defaults; resources.gpus_per_worker left
    to the sweep (None now) matches whatever the sweep chose for it.
    """
    drop = gpus_unresolved(configs)
    before = [_comparable(f, drop) for f in stored]
    now = [_comparable(c.to_flat(), drop) for c in configs]
    if sorted(map(repr, before)) == sorted(map(repr, now)):
        return []
    keys = sorted({k for row in before + now for k in row})
    differ = [k for k in keys if {repr(r.get(k)) for r in before} != {repr(r.get(k)) for r in now}]
    return differ or ["the combinations of values (each key takes the same values)"]
