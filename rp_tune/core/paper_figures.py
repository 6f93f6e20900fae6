"""The figures of Liu et al. (ICLR 2022) and Gadhikar et al. (ICML 2023) a search space may
name (its FIGURES), each with the plot kind of `rp_tune.results.figures` that draws it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperFigure:
    """A figure of Liu et al. (ICLR 2022) or Gadhikar et al. (ICML 2023) and the plot that
    draws it; `plot` None for one
    the report does not draw, with the reason in `shows`."""

    ref: str
    shows: str
    plot: str | None
    metrics: tuple[str, ...] = ("test_acc",)


FIGURES: dict[str, PaperFigure] = {
    f.ref: f
    for f in (
        PaperFigure("Liu et al. Fig. 1", "CIFAR ResNet-20..110: test accuracy vs sparsity per "
                    "scheme, dense as the reference", "sparsity"),
        PaperFigure("Liu et al. Fig. 2", "CIFAR ResNet-20 at widths 8..56: test accuracy vs "
                    "sparsity per scheme", "sparsity"),
        PaperFigure("Liu et al. Fig. 5", "ImageNet ResNet-18/34/50/101 and Wide ResNet-50-2: "
                    "accuracy, FGSM, ImageNet-O AUROC, ECE, NLL vs parameters and FLOPs",
                    "params", ("test_acc", "fgsm_acc", "ood_auroc_imagenet_o", "test_ece",
                               "test_loss")),
        PaperFigure("Liu et al. Fig. 5 (FLOPs)", "the same against inference FLOPs", "flops",
                    ("test_acc", "fgsm_acc", "ood_auroc_imagenet_o", "test_ece", "test_loss")),
        PaperFigure("Liu et al. Fig. 6 top", "gradient norm vs iteration over the first 20k "
                    "iterations, CIFAR ResNets", "grad_flow", ()),
        PaperFigure("Liu et al. Fig. 6 bottom", "Wide ResNet-50-2 on ImageNet: gradient norm "
                    "over the first 40k iterations", "grad_flow", ()),
        PaperFigure("Liu et al. Fig. 7", "CIFAR-10 ResNet-20/32/44: test accuracy vs width "
                    "multiplier, a line per sparsity", "width"),
        PaperFigure("Liu et al. Fig. 14 left", "Wide ResNet-50-2, ERK at 70% sparsity: test "
                    "accuracy vs the classifier's sparsity", "classifier"),
        PaperFigure("Liu et al. Fig. 14 right", "sparse Wide ResNet-50-2 against dense "
                    "ResNet-18/34/50 by parameter count", "params"),
        PaperFigure("Liu et al. App. C", "GraSP ratio vs SNIP ratio and ERK, CIFAR-10 ResNets",
                    "sparsity"),
        PaperFigure("Liu et al. Figs. 8-13, 15-17", "the depth, width and ratio scans on "
                    "CIFAR-100 (--set data.name=cifar100) and with VGGs; OoD AUROC, ECE and NLL "
                    "against sparsity (which number shows which variant is not checked here)",
                    "sparsity", ("test_acc", "test_ece", "test_loss", "fgsm_acc", "ood_auroc_")),
        PaperFigure("Gadhikar et al. IMP", "iterative magnitude pruning from a dense start "
                    "vs from random ER/balanced starts: test accuracy and cumulative training "
                    "cost against density", "imp_rounds", ()),
        PaperFigure("Gadhikar et al. sparse to sparse", "IMP, strong lottery tickets and "
                    "GraNet from a dense start vs from random sources: test accuracy and "
                    "cumulative training FLOPs against the final density", "sparse_to_sparse",
                    ()),
        PaperFigure("Liu et al. Figs. 3-4", "not drawn: what they plot could not be checked "
                    "against the paper when this table was written", None),
    )
}  # fmt: skip
