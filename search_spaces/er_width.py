from rp_tune.sparsity import widths_up_to_factor
from search_spaces import SMOKE_DATA

DESCRIPTION = (
    "Gadhikar et al. width vs density: CIFAR-10 ResNet-20 with every layer at density p "
    "(0.5/0.3/0.2/0.1), widths from 16 up to 16 x 1/log(1/(1-p)), against the dense width 16"
)
_DENSITIES = (0.5, 0.3, 0.2, 0.1)
# one grid per density: its widths go up to what the factor asks (p = 0.1: 9.49 -> width 160)
GRID = [
    {
        "model.name": [f"cifar_resnet_20_{w}" for w in widths_up_to_factor(16, p)],
        "sparsity.density": [p],
    }
    for p in _DENSITIES
] + [{"model.name": ["cifar_resnet_20_16"], "sparsity.density": [1.0]}]
FIXED = {
    "sparsity.scheme": "uniform",  # the theory's ER network: every layer at density p
    "data.name": "cifar10",
    "seed": [0, 1, 2],
}
SMOKE = {
    "model.name": ["cifar_resnet_8_8", "cifar_resnet_8_16"],
    "sparsity.density": [0.5],
    "seed": [0],
    **SMOKE_DATA,
}
