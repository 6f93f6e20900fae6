DESCRIPTION = (
    "Liu et al. Fig. 14 left: ImageNet Wide ResNet-50-2, ERK at 70% overall sparsity with the "
    "classifier's sparsity 0.8/0.5/0.4/0.1/0.0 (the other layers take up the budget)"
)
GRID = {
    # classifier density = 1 - its sparsity; erk_plus keeps the overall density at 0.3
    "sparsity.fc_density": [0.2, 0.5, 0.6, 0.9, 1.0],
}
FIXED = {
    "model.name": "wide_resnet50_2",
    "sparsity.scheme": "erk_plus",
    "sparsity.density": 0.3,
    "data.name": "imagenet",
    "train.recipe": "imagenet",
    "resources.workers": 4,
    "resources.gpus_per_worker": 1.0,
    "resources.cpus_per_worker": 8,
    "seed": 0,
}
SMOKE = {
    "model.name": "resnet18",
    "sparsity.fc_density": [0.2, 1.0],
    "data.name": "synthetic",
    "data.synthetic_train": 64,
    "resources.workers": 1,
    "resources.gpus_per_worker": None,  # a GPU where there is one, else the CPU
    "resources.cpus_per_worker": 1,
    "train.epochs": 1,
    "train.batch_size": 8,
    "evaluation.batch_size": 16,
}
