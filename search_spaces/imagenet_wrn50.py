from search_spaces import IMAGENET_FIXED, IMAGENET_SMOKE

DESCRIPTION = (
    "Liu et al. ImageNet: Wide ResNet-50-2, ERK+ vs SNIP ratio at sparsity 0.3/0.5/0.7, 4-GPU DDP"
)
GRID = {
    "sparsity.scheme": ["erk_plus", "snip"],
    "sparsity.density": [0.7, 0.5, 0.3],
}
FIXED = {**IMAGENET_FIXED, "model.name": "wide_resnet50_2"}
SMOKE = {**IMAGENET_SMOKE, "sparsity.density": [0.5]}
