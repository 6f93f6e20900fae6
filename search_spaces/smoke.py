DESCRIPTION = (
    "Tiny CPU sweep on synthetic data: 2 schemes x densities 0.1 and 0.5, 2 epochs, 3 at once"
)
GRID = {
    "sparsity.scheme": ["erk", "uniform"],
    "sparsity.density": [0.1, 0.5],  # two points: the figures draw a curve
}
FIXED = {
    "model.name": "cifar_resnet_8",
    "data.name": "synthetic",
    "data.synthetic_train": 256,
    "data.synthetic_test": 64,
    "train.epochs": 2,
    "train.batch_size": 64,
    "evaluation.ood_sets": ["gaussian"],
    "evaluation.grad_flow_every": 1,
    "resources.cpus_per_worker": 0.5,  # three trials at once on a 2-core machine
    "seed": 0,
}
SMOKE: dict = {}
