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
FIXED = {
    "data.name": "cifar10",
    # pyramidal at density 0.02/0.01 keeps no classifier weight on ResNet-20 (p_l = r^l falls
    # below one weight): such trials are part of the comparison, so they are allowed here
    "sparsity.allow_empty_layers": True,
}
SMOKE = {
    "model.name": ["cifar_resnet_8"],
    "sparsity.density": [0.05],
    "seed": [0],
    **SMOKE_DATA,
}
