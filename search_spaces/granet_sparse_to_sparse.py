from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Gadhikar et al. (ICML 2023, Sec. 4): GraNet's gradual magnitude pruning with regrowth "
    "from random sources (ERK at 0.5, pyramidal at 0.1, balanced at 0.05) vs from a dense "
    "start, down to density 0.01, CIFAR-10 VGG-16, 160 epochs, 3 seeds"
)
# As their code runs it: an update every 1000 iterations, the cubic schedule until epoch 110
# of 160 (prune_end 0.6875), regrowth by gradient anywhere (the source sets the start),
# ceil(r k) dropped per layer, r by cosine from 0.5 to 0.005; batch 100, SGD lr 0.1
# Nesterov, momentum 0.9, weight decay 5e-4, x0.1 at epochs 80 and 120. Unlike theirs: our
# VGG-16 has max-pools and bias-free convs with BatchNorm (theirs: average pool). As theirs,
# flow preservation connects every unit of the source before training.
GRID = [
    {"sparsity.scheme": ["erk"], "sparsity.start_density": [0.5], "seed": [0, 1, 2]},
    {"sparsity.scheme": ["pyramidal"], "sparsity.start_density": [0.1], "seed": [0, 1, 2]},
    {"sparsity.scheme": ["balanced"], "sparsity.start_density": [0.05], "seed": [0, 1, 2]},
    {"sparsity.start_density": [1.0], "seed": [0, 1, 2]},
]
FIGURES = ("Gadhikar et al. sparse to sparse",)
FIXED = {
    "model.name": "vgg16_bn",
    "data.name": "cifar10",
    "sparsity.mode": "granet",
    "sparsity.density": 0.01,
    "sparsity.update_frequency": 1000,
    "sparsity.prune_end": 0.6875,
    "sparsity.flow_preservation": True,
    "sparsity.death_rate": 0.5,
    "sparsity.death_rate_final": 0.005,
    "train.epochs": 160,
    "train.batch_size": 100,
    "train.milestones": [80, 120],
}
# Two quick trials: an ERK source at 0.5 and a dense start, to 0.1, an update every 4 steps
_SMOKE = {**SMOKE_DATA, "model.name": "cifar_resnet_8", "sparsity.density": 0.1,
          "sparsity.update_frequency": 4, "train.epochs": 2, "train.batch_size": 32,
          "seed": [0], "evaluation.ood_sets": ["gaussian"]}  # fmt: skip
SMOKE = [
    _SMOKE,
    {**_SMOKE, "sparsity.scheme": ["erk"], "sparsity.start_density": [0.5]},
    {**_SMOKE, "sparsity.scheme": ["erk"], "sparsity.start_density": [0.5]},
    {**_SMOKE, "sparsity.start_density": [1.0]},
]
