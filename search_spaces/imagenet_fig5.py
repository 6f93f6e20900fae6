DESCRIPTION = (
    "Liu et al. Fig. 5: ImageNet ResNet-18/34/50/101 with the SNIP ratio and Wide ResNet-50-2 "
    "with the SNIP ratio and ERK+, sparsity 0.3/0.5/0.7, each with its dense model"
)
_DENSITIES = [0.7, 0.5, 0.3, 1.0]  # sparsity 0.3 / 0.5 / 0.7, and dense
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
FIXED = {
    "data.name": "imagenet",
    "train.recipe": "imagenet",
    "resources.workers": 4,
    "resources.gpus_per_worker": 1.0,
    "resources.cpus_per_worker": 8,
    "seed": 0,
}
SMOKE = {  # synthetic 32x32 images through the same DDP/ImageNet-recipe path
    "model.name": ["resnet18"],
    "sparsity.density": [0.5, 1.0],
    "data.name": "synthetic",
    "data.synthetic_train": 64,
    "resources.workers": 1,
    "resources.gpus_per_worker": None,  # a GPU where there is one, else the CPU
    "resources.cpus_per_worker": 1,
    "train.epochs": 1,
    "train.batch_size": 8,
    "evaluation.batch_size": 16,
}
