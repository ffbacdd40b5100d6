"""What psconv knows about each data set before reading a byte of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CIFAR10_CLASSES", "IMAGE_EXT", "DatasetInfo", "DATASETS", "cache_dir"]

# The paper's normalisation (the authors' scripts); Tiny ImageNet uses the same numbers so that
# a model's input statistics do not depend on which data set it was built for.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: int
    num_classes: int
    url: str
    archive: str
    md5: str
    layout_hint: str
    train_images: int  # the official training split


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        image_size=32,
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_images=50_000,
        layout_hint=(
            "the official python batches (cifar-10-batches-py/data_batch_1..5, test_batch), an "
            "image folder (train/<class>/*.jpg|png and test/<class>/*), an archive of either "
            "(cifar-10-python.tar.gz, cifar10-jpeg.tar.gz) or an .npz with x_train/y_train/x_test/y_test"
        ),
    ),
    "tinyimagenet": DatasetInfo(
        name="tinyimagenet",
        image_size=64,
        num_classes=200,
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        archive="tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        train_images=100_000,
        layout_hint=(
            "Tiny ImageNet's official layout (tiny-imagenet-200/ with wnids.txt, words.txt, "
            "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt) or an "
            "archive of it (tiny-imagenet-200.zip or .tar.gz)"
        ),
    ),
}


def cache_dir() -> Path:
    """Where decoded data sets (and downloads) are kept: ``$PSCONV_CACHE`` or ``~/.cache/psconv``."""
    return Path(os.environ.get("PSCONV_CACHE") or Path.home() / ".cache" / "psconv")
