from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Liu et al. Fig. 1: ResNet-20/32/44/56/110 x schemes x sparsity 0.1..0.9 + dense, CIFAR-10"
)
FIGURES = ("Liu et al. Fig. 1", "Liu et al. Fig. 6 top", "Liu et al. Figs. 8-13, 15-17")
GRID = {
    "model.name": [f"cifar_resnet_{d}" for d in (20, 32, 44, 56, 110)],
    "sparsity.scheme": ["erk", "uniform", "uniform_plus", "snip", "grasp"],
    "sparsity.density": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 1.0],
    "seed": [0, 1, 2],
}
FIXED = {"data.name": "cifar10"}  # CIFAR-100: --set data.name=cifar100
SMOKE = {
    "model.name": ["cifar_resnet_8", "cifar_resnet_14"],
    "sparsity.scheme": ["erk", "snip"],
    "sparsity.density": [0.1, 0.5, 1.0],  # two sparse points: a curve in the figures
    "seed": [0],
    **SMOKE_DATA,
}
