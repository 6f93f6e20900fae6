"""Model registry by name (the models of Liu et al. 2022, Sec. 4).

- `cifar_resnet_<depth>[_<width>]`: any depth 6n+2, any width >= 1 (default 16)
- `cifar_resnet18`, `tiny_resnet50`: ResNet-18/50 for small images (Gadhikar et al.: 3x3
  stride-1 stem, no max-pool), for CIFAR and 64x64 Tiny ImageNet
- `vgg11_bn`, `vgg13_bn`, `vgg16_bn`, `vgg19_bn`: CIFAR VGGs with BatchNorm
- `resnet18`, `resnet34`, `resnet50`, `resnet101`, `wide_resnet50_2`: torchvision ImageNet nets,
  no pretrained weights

Prunable layers are every Conv2d and Linear, in registration order (first conv first,
classifier last), named by their qualified module name.
"""

from __future__ import annotations

from torch import nn

from rp_tune.core.model_names import (
    IMAGENET_MODELS,
    check_model_name,
    input_kind,
    model_names,
    parse_cifar_resnet,
)
from rp_tune.core.shapes import LayerSpec
from rp_tune.models.cifar_resnet import CifarResNet
from rp_tune.models.small_image_resnet import SMALL_IMAGE_RESNETS, SmallImageResNet
from rp_tune.models.vgg import CifarVGG


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model by registered name."""
    check_model_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    dw = parse_cifar_resnet(name)
    if dw is not None:
        return CifarResNet(depth=dw[0], width=dw[1], num_classes=num_classes)
    if name in SMALL_IMAGE_RESNETS:
        return SmallImageResNet(name, num_classes=num_classes)
    if name.endswith("_bn"):
        return CifarVGG(name[:-3], num_classes=num_classes)
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    # Kaiming normal with fan_in for every conv, as for the CIFAR nets and as Liu et al.'s
    # code initialises its ImageNet nets; torchvision's own default is fan_out. BatchNorm
    # (1, 0) and the classifier keep torchvision's init.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear module, in registration order, by qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    return [LayerSpec(n, tuple(m.weight.shape)) for n, m in prunable_layers(model)]


__all__ = [
    "IMAGENET_MODELS",
    "build_model",
    "check_model_name",
    "input_kind",
    "layer_specs",
    "model_names",
    "parse_cifar_resnet",
    "prunable_layers",
]
