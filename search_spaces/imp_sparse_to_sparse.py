from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Gadhikar et al. (ICML 2023, sparse to sparse): iterative magnitude pruning of CIFAR-10 "
    "ResNet-20 from a dense start (classic IMP) vs from random ER and balanced masks at "
    "density 0.5 and 0.2, down to 0.05 and 0.02, 3 seeds; 20% of the kept weights pruned "
    "per round (global magnitude), rewound to the initialization; the report draws test "
    "accuracy and cumulative training FLOPs against each round's density"
)
# Each round trains the CIFAR recipe (160 epochs, lr x0.1 at 80 and 120); a start at 0.5
# skips the 3 rounds a dense start needs to get there, at 0.2 the 7, and each of its rounds
# trains a sparser net. Their code trains 150 epochs of cosine lr per round; set
# train.epochs/milestones to follow it.
GRID = [
    {  # classic IMP: a dense start (no scheme: every weight is kept)
        "sparsity.start_density": [1.0],
        "sparsity.density": [0.05, 0.02],
        "seed": [0, 1, 2],
    },
    {  # sparse to sparse: a random start at the scheme's layer-wise ratios
        "sparsity.scheme": ["er", "balanced"],
        "sparsity.start_density": [0.5, 0.2],
        "sparsity.density": [0.05, 0.02],
        "seed": [0, 1, 2],
    },
]
FIXED = {
    "model.name": "cifar_resnet_20",
    "data.name": "cifar10",
    "sparsity.mode": "imp",
    "sparsity.prune_fraction": 0.2,
    "sparsity.prune_scope": "global",
    "sparsity.rewind_epoch": 0,
}
FIGURES = ("Gadhikar et al. IMP", "Gadhikar et al. sparse to sparse")
# Two quick trials: a dense start in 3 rounds (1.0, 0.5, 0.25) and an ER start at 0.5 in 2,
# each round 2 epochs and every later one 1 (rewound to epoch 1)
_SMOKE_COMMON = {
    **SMOKE_DATA,
    "model.name": "cifar_resnet_8",
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.milestones": [1],
    "sparsity.density": [0.25],
    "sparsity.prune_fraction": 0.5,
    "sparsity.rewind_epoch": 1,
    "seed": [0],
    "evaluation.ood_sets": ["gaussian"],
}
SMOKE = [
    _SMOKE_COMMON,
    {**_SMOKE_COMMON, "sparsity.scheme": ["er"], "sparsity.start_density": [0.5]},
]
