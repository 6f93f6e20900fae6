DESCRIPTION = "VGG-11/13/16 with BN, ERK vs SNIP ratio, sparsity 0.1..0.9 + dense, CIFAR-10"
FIGURES = ("Liu et al. Figs. 8-13, 15-17",)
GRID = {
    "model.name": ["vgg11_bn", "vgg13_bn", "vgg16_bn"],
    "sparsity.scheme": ["erk", "snip"],
    "sparsity.density": [0.9, 0.7, 0.5, 0.3, 0.1, 0.05, 1.0],
    "seed": [0, 1, 2],
}
FIXED = {"data.name": "cifar10"}
SMOKE = {
    "model.name": ["vgg11_bn"],
    "sparsity.density": [0.1],
    "seed": [0],
    "data.name": "synthetic",
    "data.synthetic_train": 128,
    "data.synthetic_test": 32,
    "train.epochs": 1,
    "train.batch_size": 32,
}
