from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Gadhikar et al. (ICML 2023, Sec. 5): strong lottery tickets (edge-popup, weights never "
    "trained) inside random ER source masks at density 0.5/0.3/0.2 vs inside a dense source, "
    "CIFAR-10 ResNet-18 and VGG-16, targets 0.2/0.1/0.05/0.01 (below the source), 5 levels "
    "of 100 epochs, 3 seeds"
)
# The paper's pairs (source; target): (0.5; 0.2, 0.1, 0.05, 0.01), (0.3; 0.1), (0.2; 0.05);
# the dense source (edge-popup as Ramanujan et al. ran it) at every target. Their runs: 5
# levels of 100 epochs, SGD lr 0.1 x0.1 every 30 epochs restarting each level, momentum 0.9,
# weight decay 5e-4, batch 128. Unlike theirs, training images are randomly cropped and
# flipped and normalized by CIFAR-10's channel statistics (theirs: none, and 0.5/0.5), and the
# density anneals from the source (theirs from 0.6, clamped to the source).
_MODELS = ["cifar_resnet18", "vgg16_bn"]
_SEEDS = [0, 1, 2]
GRID = [
    {"model.name": _MODELS, "sparsity.start_density": [0.5],
     "sparsity.density": [0.2, 0.1, 0.05, 0.01], "seed": _SEEDS},
    {"model.name": _MODELS, "sparsity.start_density": [0.3], "sparsity.density": [0.1],
     "seed": _SEEDS},
    {"model.name": _MODELS, "sparsity.start_density": [0.2], "sparsity.density": [0.05],
     "seed": _SEEDS},
    {"model.name": _MODELS, "sparsity.start_density": [1.0],
     "sparsity.density": [0.2, 0.1, 0.05, 0.01], "seed": _SEEDS},
]  # fmt: skip
FIGURES = ("Gadhikar et al. sparse to sparse",)
FIXED = {
    "data.name": "cifar10",
    "sparsity.mode": "slt",
    "sparsity.scheme": "er",
    "sparsity.levels": 5,
    "train.epochs": 100,
    "train.milestones": [30, 60, 90],
    "train.lr": 0.1,
    "train.batch_size": 128,
    "train.weight_decay": 5e-4,
}
# Two quick trials: an ER source at 0.5 and a dense source, to 0.1 in 2 levels of 1 epoch
# (the 0.3 and 0.2 sources' grids give the ER one again)
_SMOKE = {**SMOKE_DATA, "model.name": ["cifar_resnet_8"], "sparsity.levels": 2,
          "sparsity.density": [0.1], "train.milestones": [1], "seed": [0],
          "evaluation.ood_sets": ["gaussian"]}  # fmt: skip
SMOKE = [_SMOKE, {**_SMOKE, "sparsity.start_density": [0.5]},
         {**_SMOKE, "sparsity.start_density": [0.5]}, _SMOKE]  # fmt: skip
