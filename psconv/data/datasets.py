"""A data set in memory: :class:`ImageDataset` and :func:`load_dataset`, which decodes a source
once and keeps the result as a uint8 array in the cache (``$PSCONV_CACHE``), keyed by the
source's path, sizes and modification times."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from .info import CIFAR_MEAN, CIFAR_STD, cache_dir
from .sources import _Files, _find_source, _info, _read_source, download, resolve_data_dir

__all__ = ["ImageDataset", "load_dataset"]

# Bumped when a cached file's content changes (2: Tiny ImageNet's class words).
_CACHE_VERSION = 2


@dataclass
class ImageDataset:
    """A data set decoded to memory: uint8 NHWC images and int64 labels per split."""

    name: str
    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""
    class_words: list[str] | None = None  # readable names where ``classes`` are ids (wnids)
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    def holdout(self, n: int) -> ImageDataset:
        """Split ``n`` training images off as the test split (a fixed, seed-independent draw):
        a validation set for choosing hyperparameters without touching the real test set."""
        if not 1 <= n < len(self.x_train):
            raise ValueError(f"--holdout must be between 1 and {len(self.x_train) - 1}, got {n}")
        perm = np.random.default_rng([0, 2]).permutation(len(self.x_train))
        val, train = np.sort(perm[:n]), np.sort(perm[n:])
        source = f"{self.source} (train split; {n} held out as validation)"
        return replace(self, x_train=self.x_train[train], y_train=self.y_train[train],
                       x_test=self.x_train[val], y_test=self.y_train[val], source=source)  # fmt: skip

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> ImageDataset:
        """Keep ``train``/``test`` images drawn by a fixed permutation (class-sorted trees too)."""

        def pick(x: np.ndarray, y: np.ndarray, n: int | None, split: int) -> tuple[np.ndarray, np.ndarray]:
            if n is None or n >= len(x):
                return x, y
            if n < 1:
                raise ValueError(f"a subset needs at least 1 image, got {n}")
            # One stream per split: the test subset is the same whatever the train subset.
            idx = np.sort(np.random.default_rng([seed, split]).permutation(len(x))[:n])
            return x[idx], y[idx]

        x_train, y_train = pick(self.x_train, self.y_train, train, 0)
        x_test, y_test = pick(self.x_test, self.y_test, test, 1)
        return replace(self, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def load_dataset(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download_missing: bool = False,
    use_cache: bool = True,
) -> ImageDataset:
    """Load ``dataset`` ('cifar10' or 'tinyimagenet') as uint8 arrays, decoding at most once."""
    info = _info(dataset)
    root = resolve_data_dir(data_dir, dataset, download_missing)
    try:
        source = _find_source(dataset, root)
    except FileNotFoundError:
        if not download_missing:
            raise
        source = download(dataset, root if root.is_dir() or not root.exists() else root.parent)
    fingerprint = _Files(source, lambda n: True).fingerprint if source.is_dir() else None
    if fingerprint is None:
        st = source.stat()
        fingerprint = f"{source.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    key = hashlib.sha256(f"{_CACHE_VERSION}:{dataset}:{fingerprint}".encode()).hexdigest()[:20]
    cached = cache_dir() / f"{dataset}-{key}.npz"
    arrays = _read_cache(cached) if use_cache and source.suffix != ".npz" else None
    if arrays is None:
        arrays = _read_source(dataset, source)
        if use_cache and source.suffix != ".npz":
            _write_cache(cached, arrays)
    classes, x_train, y_train, x_test, y_test, words = arrays
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{str(source)!r}: {split} labels outside 0..{len(classes) - 1}")
    if len(classes) != info.num_classes:
        raise ValueError(f"{str(source)!r} has {len(classes)} classes, {dataset} has {info.num_classes}")
    return ImageDataset(dataset, list(classes), x_train, y_train, x_test, y_test, str(source), words)


def _read_cache(path: Path) -> tuple | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            words = [str(w) for w in z["words"]] if "words" in z.files else None
            arrays = tuple(z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
            return ([str(c) for c in z["classes"]], *arrays, words)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # absent or damaged: rebuild


def _write_cache(path: Path, arrays: tuple) -> None:
    import io
    import sys

    classes, x_train, y_train, x_test, y_test, words = arrays
    buf = io.BytesIO()
    extra = {"words": np.array(words)} if words else {}
    np.savez(
        buf,
        classes=np.array(classes),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        **extra,
    )
    try:
        atomic_write(path, buf.getvalue())
    except OSError as exc:  # a read-only cache costs time, not correctness
        print(f"psconv: warning: cannot write data cache {str(path)!r}: {exc}", file=sys.stderr)
