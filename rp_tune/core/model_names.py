"""Model names and what they mean, without torch: the config validates names with these, so
`import rp_tune.config` (and planning a sweep's configs) never loads torch. The models
themselves are built by `rp_tune.models.build_model`.
"""

from __future__ import annotations

import re
from typing import Any

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2")
CIFAR_RESNET = re.compile(r"^cifar_resnet_(\d+)(?:_(\d+))?$")
VGG_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19")  # rp_tune.models.vgg.VGG_CONFIGS
# ResNet-18/50 for small images (rp_tune.models.small_image_resnet.SMALL_IMAGE_RESNETS)
SMALL_IMAGE_RESNETS = ("cifar_resnet18", "tiny_resnet50")
# image side of the small datasets that are not 32x32 (CIFAR, SVHN and synthetic are)
DATA_IMAGE_SIZE = {"tinyimagenet": 64}
DEFAULT_WIDTH = 16  # He et al.'s CIFAR ResNets: stages of 16, 32, 64 channels


def model_names() -> list[str]:
    """The registered names (cifar_resnet_* stands for the whole family)."""
    return [
        "cifar_resnet_<depth>[_<width>]",
        *SMALL_IMAGE_RESNETS,
        *(f"{k}_bn" for k in VGG_NAMES),
        *IMAGENET_MODELS,
    ]


def parse_cifar_resnet(name: str) -> tuple[int, int] | None:
    """(depth, width) of a `cifar_resnet_<depth>[_<width>]` name, None if it is not one."""
    m = CIFAR_RESNET.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or DEFAULT_WIDTH)


def canonical_model_name(name: str) -> str:
    """One spelling per network, so one trial has one run key whichever a space uses:
    cifar_resnet_20_16 (the default width spelled) is cifar_resnet_20; other names as given."""
    dw = parse_cifar_resnet(name)
    if dw is None:
        return name
    depth, width = dw
    return f"cifar_resnet_{depth}" + ("" if width == DEFAULT_WIDTH else f"_{width}")


def check_model_name(name: str) -> None:
    """Raise ValueError naming the bad value and the valid choices."""
    if name in SMALL_IMAGE_RESNETS:
        return
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
    if name in IMAGENET_MODELS or (name.endswith("_bn") and name[:-3] in VGG_NAMES):
        return
    raise ValueError(f"unknown model {name!r}; valid choices: {model_names()}")


def input_kind(name: str) -> str:
    """'imagenet' for the torchvision nets, 'cifar' (32x32 inputs) for the rest."""
    return "imagenet" if name in IMAGENET_MODELS else "cifar"


def input_size(cfg: Any) -> tuple[int, int]:
    """(height, width) of the images a trial's model sees: an image folder (ImageNet) is
    cropped to data.image_size; the small in-memory sets keep their own (32x32; Tiny ImageNet
    64x64), whichever the model."""
    if cfg.data.name == "imagenet":
        return cfg.data.image_size, cfg.data.image_size
    size = DATA_IMAGE_SIZE.get(cfg.data.name, 32)
    return size, size
