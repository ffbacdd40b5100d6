"""VGG16 as in the authors' CIFAR scripts: conv3x3 (bias) + BN + ReLU, one linear classifier."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    def __init__(self, cfg: tuple[int | str, ...], num_classes: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(True)]
                channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** cfg.count("M")
        self.classifier = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg16")
def vgg16(num_classes: int = 10, image_size: int = 32) -> VGG:
    return VGG(VGG16_CFG, num_classes, image_size)
