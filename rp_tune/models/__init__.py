"""Model registry by name (the models of Liu et al. 2022, Sec. 4).

- `cifar_resnet_<depth>[_<width>]`: any depth 6n+2, any width >= 1 (default 16)
- `vgg11_bn`, `vgg13_bn`, `vgg16_bn`, `vgg19_bn`: CIFAR VGGs with BatchNorm
- `resnet18`, `resnet34`, `resnet50`, `resnet101`, `wide_resnet50_2`: torchvision ImageNet nets,
  no pretrained weights

Prunable layers are every Conv2d and Linear, in registration order (first conv first,
classifier last), named by their qualified module name.
"""

from __future__ import annotations

import re

from torch import nn

from ..sparsity import LayerSpec
from .cifar_resnet import CifarResNet
from .vgg import VGG_CONFIGS, CifarVGG

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2")
CIFAR_RESNET = re.compile(r"^cifar_resnet_(\d+)(?:_(\d+))?$")
INPUT_KIND = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224)}


def model_names() -> list[str]:
    """The registered names (cifar_resnet_* stands for the whole family)."""
    return ["cifar_resnet_<depth>[_<width>]", *(f"{k}_bn" for k in VGG_CONFIGS), *IMAGENET_MODELS]


def parse_cifar_resnet(name: str) -> tuple[int, int] | None:
    """(depth, width) of a `cifar_resnet_<depth>[_<width>]` name, None if it is not one."""
    m = CIFAR_RESNET.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 16)


def check_model_name(name: str) -> None:
    """Raise ValueError naming the bad value and the valid choices."""
    dw = parse_cifar_resnet(name)
    if dw is not None:
        depth, width = dw
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"model {name!r}: depth {depth} is not 6n+2 with n >= 1 (valid: 8, 14, 20, 32, "
                "44, 56, 110, ...)"
            )
        if width < 1:
            raise ValueError(f"model {name!r}: width {width} must be >= 1")
        return
    if name.startswith("cifar_resnet"):
        raise ValueError(
            f"model {name!r} does not match cifar_resnet_<depth>[_<width>], e.g. cifar_resnet_20 "
            "or cifar_resnet_20_32"
        )
    if name in IMAGENET_MODELS or (name.endswith("_bn") and name[:-3] in VGG_CONFIGS):
        return
    raise ValueError(f"unknown model {name!r}; valid choices: {model_names()}")


def input_kind(name: str) -> str:
    """'imagenet' for the torchvision nets, 'cifar' (32x32 inputs) for the rest."""
    return "imagenet" if name in IMAGENET_MODELS else "cifar"


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model by registered name."""
    check_model_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    dw = parse_cifar_resnet(name)
    if dw is not None:
        return CifarResNet(depth=dw[0], width=dw[1], num_classes=num_classes)
    if name.endswith("_bn"):
        return CifarVGG(name[:-3], num_classes=num_classes)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear module, in registration order, by qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    return [LayerSpec(n, tuple(m.weight.shape)) for n, m in prunable_layers(model)]


__all__ = [
    "build_model",
    "check_model_name",
    "input_kind",
    "layer_specs",
    "model_names",
    "parse_cifar_resnet",
    "prunable_layers",
]
