from search_spaces import IMAGENET_FIXED, IMAGENET_SMOKE

DESCRIPTION = (
    "Liu et al. Fig. 6 bottom and Fig. 14 right: ImageNet Wide ResNet-50-2 with ERK, SNIP "
    "ratio and ERK+ at sparsity 0.85/0.7/0.6, beside dense Wide ResNet-50-2 and dense "
    "ResNet-18/34/50 (Table 1's dense recipe: 90 epochs)"
)
FIGURES = ("Liu et al. Fig. 6 bottom", "Liu et al. Fig. 14 right")
GRID = [
    {  # the sparse Wide ResNet-50-2: 100 epochs, decay at 30/60/90
        "model.name": ["wide_resnet50_2"],
        "sparsity.scheme": ["erk", "snip", "erk_plus"],
        "sparsity.density": [0.15, 0.3, 0.4],
        "train.recipe": ["imagenet"],
    },
    {  # the dense references: 90 epochs, decay at 30/60/80
        "model.name": ["wide_resnet50_2", "resnet18", "resnet34", "resnet50"],
        "sparsity.density": [1.0],
        "train.recipe": ["imagenet_dense"],
    },
]
FIXED = {
    **{k: v for k, v in IMAGENET_FIXED.items() if k != "train.recipe"},
    "evaluation.grad_flow_steps": 40_000,  # Fig. 6 bottom: the first 40k iterations
}
_SMOKE = {**IMAGENET_SMOKE, "evaluation.grad_flow_steps": 4, "evaluation.grad_flow_every": 1}
SMOKE = [  # one per grid: a sparse and a dense ResNet-18, each under its own recipe
    {**_SMOKE, "model.name": ["resnet18"], "sparsity.scheme": ["erk"], "sparsity.density": [0.3]},
    {**_SMOKE, "model.name": ["resnet18"]},
]
