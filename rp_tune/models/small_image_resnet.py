"""ResNet-18 and ResNet-50 for small images (Gadhikar et al., ICML 2023).

The common CIFAR variant of He et al.'s ImageNet ResNets (as in kuangliu/pytorch-cifar, which
Gadhikar et al.'s code follows): a 3x3 stride-1 stem conv to 64 channels with BatchNorm and
ReLU and no max-pool, four stages of blocks at 64/128/256/512 channels (strides 1, 2, 2, 2),
a 1x1 conv + BN projection shortcut where the shape changes, global average pooling, one
linear classifier. Any input size works; the papers feed 32x32 (CIFAR) and 64x64 (Tiny
ImageNet).

- `cifar_resnet18`: basic blocks [2, 2, 2, 2]; 11,164,352 Conv2d + Linear weights for 10
  classes (Gadhikar et al.'s CIFAR-10/100 ResNet-18).
- `tiny_resnet50`: bottleneck blocks [3, 4, 6, 3] (1x1, 3x3, 1x1, expansion 4), classifier
  2048 -> classes (Gadhikar et al.'s Tiny ImageNet ResNet-50).

Init as every network here: Kaiming normal (fan_in) for convs and the classifier, BatchNorm
(1, 0).
"""

from __future__ import annotations

import torch
from torch import nn

from rp_tune.models.cifar_resnet import BasicBlock, kaiming_init_, shortcut


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


# name -> (block, blocks per stage)
SMALL_IMAGE_RESNETS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "cifar_resnet18": ("basic", (2, 2, 2, 2)),
    "tiny_resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class SmallImageResNet(nn.Module):
    """The CIFAR variant of an ImageNet ResNet (module docstring)."""

    def __init__(self, name: str, num_classes: int = 10) -> None:
        super().__init__()
        if name not in SMALL_IMAGE_RESNETS:
            raise ValueError(f"unknown model {name!r}; valid: {list(SMALL_IMAGE_RESNETS)}")
        kind, blocks = SMALL_IMAGE_RESNETS[name]
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_in, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layer = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if kind == "basic":
                    layer.append(BasicBlock(c_in, planes, stride))
                    c_in = planes
                else:
                    layer.append(Bottleneck(c_in, planes, stride))
                    c_in = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        x = torch.flatten(
            nn.functional.adaptive_avg_pool2d(self.layer4(self.layer3(self.layer2(x))), 1), 1
        )
        return self.fc(x)
