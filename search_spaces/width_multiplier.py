from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Liu et al. Fig. 7: CIFAR-10 ResNet-20/32/44 at width multiplier 0.5-2.0 (widths 8-32), "
    "ERK at sparsity 0.3/0.5/0.7/0.9, with dense"
)
_WIDTHS = [8, 12, 16, 20, 24, 32]  # multiplier 0.5, 0.75, 1, 1.25, 1.5, 2 of width 16
FIGURES = ("Liu et al. Fig. 7",)
GRID = {
    "model.name": [f"cifar_resnet_{d}_{w}" for d in (20, 32, 44) for w in _WIDTHS],
    "sparsity.scheme": ["erk"],
    "sparsity.density": [0.7, 0.5, 0.3, 0.1, 1.0],
    "seed": [0, 1, 2],
}
FIXED = {"data.name": "cifar10"}
SMOKE = {
    "model.name": ["cifar_resnet_8_8", "cifar_resnet_8_16"],
    "sparsity.density": [0.3, 1.0],
    "seed": [0],
    **SMOKE_DATA,
}
