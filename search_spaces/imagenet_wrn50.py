DESCRIPTION = (
    "Liu et al. ImageNet: Wide ResNet-50-2, ERK+ vs SNIP ratio at sparsity 0.3/0.5/0.7, 4-GPU DDP"
)
GRID = {
    "sparsity.scheme": ["erk_plus", "snip"],
    "sparsity.density": [0.7, 0.5, 0.3],
}
FIXED = {
    "model.name": "wide_resnet50_2",
    "data.name": "imagenet",
    "train.recipe": "imagenet",
    "resources.workers": 4,
    "resources.gpus_per_worker": 1.0,
    "resources.cpus_per_worker": 8,
    "seed": 0,
}
SMOKE = {  # synthetic 32x32 images through the same DDP/ImageNet-recipe path
    "model.name": "resnet18",
    "data.name": "synthetic",
    "data.synthetic_train": 64,
    "sparsity.density": [0.5],
    "resources.workers": 1,
    "resources.gpus_per_worker": None,  # a GPU where there is one, else the CPU
    "resources.cpus_per_worker": 1,
    "train.epochs": 1,
    "train.batch_size": 8,
    "evaluation.batch_size": 16,
}
