"""ResNet18, CIFAR style: 3x3 stride-1 stem, no max-pool, 1x1 projection shortcuts."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, image_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages: list[nn.Module] = []
        in_planes = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        # The authors' fixed 4x4 average pool: 64x64 inputs leave 2x2, so the classifier widens.
        side = image_size // 8 // 4
        self.linear = nn.Linear(512 * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.avg_pool2d(self.layers(out), 4)
        return self.linear(out.flatten(1))


@register_model("resnet18")
def resnet18(num_classes: int = 10, image_size: int = 32) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, image_size)
