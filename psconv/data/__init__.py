"""Data: CIFAR-10 and Tiny ImageNet in plain torch, decoded once, held and augmented on device.

- :mod:`.info`: what is known of each data set before reading it (sizes, classes, archive);
- :mod:`.sources`: finding and reading a directory, an archive or an ``.npz``; the download;
- :mod:`.datasets`: :class:`ImageDataset` and :func:`load_dataset` (with the decoded cache);
- :mod:`.batches`: :class:`DeviceData`, a split as one tensor on the training device.
"""

from .batches import DeviceData, epoch_seed
from .datasets import ImageDataset, load_dataset
from .info import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD, DATASETS, DatasetInfo, cache_dir
from .sources import download, resolve_data_dir

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "DatasetInfo",
    "DeviceData",
    "ImageDataset",
    "cache_dir",
    "download",
    "epoch_seed",
    "load_dataset",
    "resolve_data_dir",
]
