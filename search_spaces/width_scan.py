from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Liu et al. Fig. 2: ResNet-20 widths 8..56 x schemes x sparsity 0.1..0.9 + dense, CIFAR-10"
)
FIGURES = ("Liu et al. Fig. 2", "Liu et al. Figs. 8-13, 15-17")
GRID = {
    "model.name": [f"cifar_resnet_20_{w}" for w in (8, 16, 24, 32, 40, 56)],
    "sparsity.scheme": ["erk", "uniform", "uniform_plus", "snip", "grasp"],
    "sparsity.density": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 1.0],
    "seed": [0, 1, 2],
}
FIXED = {"data.name": "cifar10"}  # CIFAR-100: --set data.name=cifar100
SMOKE = {
    "model.name": ["cifar_resnet_8_8", "cifar_resnet_8_16"],
    "sparsity.scheme": ["erk", "uniform"],
    "sparsity.density": [0.1, 0.5, 1.0],  # two sparse points: a curve in the figures
    "seed": [0],
    **SMOKE_DATA,
}
