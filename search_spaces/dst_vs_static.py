DESCRIPTION = (
    "Static random sparse training vs SET and RigL from the same ERK random masks, ResNet-20, "
    "densities 0.05/0.1/0.2, CIFAR-10"
)
GRID = {
    "sparsity.mode": ["static", "dynamic"],
    "sparsity.growth": ["random", "gradient"],  # dynamic only: SET, RigL
    "sparsity.density": [0.05, 0.1, 0.2],
    "seed": [0, 1, 2],
}
FIXED = {"model.name": "cifar_resnet_20", "sparsity.scheme": "erk", "data.name": "cifar10"}
SMOKE = {
    "model.name": "cifar_resnet_8",
    "sparsity.density": [0.1],
    "seed": [0],
    "data.name": "synthetic",
    "data.synthetic_train": 256,
    "data.synthetic_test": 64,
    "train.epochs": 2,
    "train.batch_size": 32,
    "sparsity.update_frequency": 2,
    "evaluation.ood_sets": ["gaussian"],
}
