from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Gadhikar et al. (ICML 2023): layer-wise density ratios (uniform, ERK, balanced, "
    "pyramidal) of random masks at density 0.1 down to 0.01, ResNet-18 and VGG-16 on "
    "CIFAR-10 and CIFAR-100, ResNet-50 on Tiny ImageNet, each beside its dense net, 3 seeds"
)
_RATIOS = {
    "sparsity.scheme": ["uniform", "erk", "balanced", "pyramidal"],
    "sparsity.density": [1.0, 0.1, 0.05, 0.02, 0.01],  # 1.0: the dense net, run once
    "seed": [0, 1, 2],
}
GRID = [
    {"model.name": ["cifar_resnet18", "vgg16_bn"], "data.name": ["cifar10", "cifar100"],
     **_RATIOS},
    {"model.name": ["tiny_resnet50"], "data.name": ["tinyimagenet"], **_RATIOS},
]  # fmt: skip
FIXED = {
    # pyramidal at 0.02/0.01 can leave the classifier without a weight (p_l = r^l falls below
    # one weight): such trials are part of the comparison, so they are allowed here
    "sparsity.allow_empty_layers": True,
}
# Four quick trials, one per ratio, on the smoke data (both grids give the same ones)
_SMOKE = {**SMOKE_DATA, "model.name": ["cifar_resnet_8"], "data.name": ["synthetic"],
          "sparsity.density": [0.05], "seed": [0], "evaluation.ood_sets": ["gaussian"]}  # fmt: skip
SMOKE = [_SMOKE, _SMOKE]
