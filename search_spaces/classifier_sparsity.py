from search_spaces import IMAGENET_FIXED, IMAGENET_SMOKE

DESCRIPTION = (
    "Liu et al. Fig. 14 left: ImageNet Wide ResNet-50-2, ERK at 70% overall sparsity with the "
    "classifier's sparsity 0.8/0.5/0.4/0.1/0.0 (the other layers take up the budget)"
)
FIGURES = ("Liu et al. Fig. 14 left",)
GRID = {
    # classifier density = 1 - its sparsity; erk_plus keeps the overall density at 0.3
    # (the same plan as erk with sparsity.classifier_density)
    "sparsity.fc_density": [0.2, 0.5, 0.6, 0.9, 1.0],
}
FIXED = {
    **IMAGENET_FIXED,
    "model.name": "wide_resnet50_2",
    "sparsity.scheme": "erk_plus",
    "sparsity.density": 0.3,
}
SMOKE = {**IMAGENET_SMOKE, "sparsity.fc_density": [0.2, 1.0]}
