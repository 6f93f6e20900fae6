from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Gadhikar et al.: layer-wise ratios (uniform, erk, balanced, pyramidal, synflow) at high "
    "sparsity"
)
GRID = {
    "model.name": ["cifar_resnet_20", "cifar_resnet_56", "vgg16_bn"],
    "sparsity.scheme": ["uniform", "erk", "balanced", "pyramidal", "synflow"],
    "sparsity.density": [0.1, 0.05, 0.02, 0.01],
    "seed": [0, 1, 2],
}
FIXED = {"data.name": "cifar10"}
SMOKE = {
    "model.name": ["cifar_resnet_8"],
    "sparsity.density": [0.05],
    "seed": [0],
    **SMOKE_DATA,
}
