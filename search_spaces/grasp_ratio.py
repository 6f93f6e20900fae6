from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Liu et al. Appendix C: random pruning with the GraSP ratio vs the SNIP ratio and ERK, "
    "CIFAR-10 ResNet-20/32/44/56/110, sparsity 0.1..0.9 + dense"
)
FIGURES = ("Liu et al. App. C",)
GRID = {
    "model.name": [f"cifar_resnet_{d}" for d in (20, 32, 44, 56, 110)],
    "sparsity.scheme": ["grasp", "snip", "erk"],
    "sparsity.density": [0.9, 0.7, 0.5, 0.3, 0.1, 1.0],
    "seed": [0, 1, 2],
}
FIXED = {"data.name": "cifar10"}
SMOKE = {
    "model.name": ["cifar_resnet_8"],
    "sparsity.scheme": ["grasp", "erk"],
    "sparsity.density": [0.1],
    "seed": [0],
    **SMOKE_DATA,
}
