from search_spaces import IMAGENET_FIXED, IMAGENET_SMOKE

DESCRIPTION = (
    "Liu et al. Fig. 5: ImageNet ResNet-18/34/50/101 with the SNIP ratio and Wide ResNet-50-2 "
    "with the SNIP ratio and ERK+, sparsity 0.3/0.5/0.7, each with its dense model"
)
_DENSITIES = [0.7, 0.5, 0.3, 1.0]  # sparsity 0.3 / 0.5 / 0.7, and dense
FIGURES = ("Liu et al. Fig. 5", "Liu et al. Fig. 5 (FLOPs)")
GRID = [
    {
        "model.name": ["resnet18", "resnet34", "resnet50", "resnet101"],
        "sparsity.scheme": ["snip"],
        "sparsity.density": _DENSITIES,
    },
    {
        "model.name": ["wide_resnet50_2"],
        "sparsity.scheme": ["snip", "erk_plus"],
        "sparsity.density": _DENSITIES,
    },
]
FIXED = IMAGENET_FIXED
SMOKE = {**IMAGENET_SMOKE, "model.name": ["resnet18"], "sparsity.density": [0.5, 1.0]}
