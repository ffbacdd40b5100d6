"""Data: CIFAR-10 and Tiny ImageNet in plain torch, decoded once, held and augmented on device.

Sources (``--data-dir`` or ``$PSCONV_DATA``; a directory, an archive or an ``.npz``):

- CIFAR-10: the official python batches (``cifar-10-batches-py/``), an image-folder tree
  (``train/<class>/*.jpg|png`` + ``test/<class>/*``), a ``.tar.gz``/``.zip`` of either (the
  official ``cifar-10-python.tar.gz`` or ``cifar10-jpeg.tar.gz``), or an ``.npz`` with
  ``x_train y_train x_test y_test`` (uint8 NHWC, like ``cifar10-exact-subset.npz``).
- Tiny ImageNet in its official layout (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
  ``val/images`` + ``val/val_annotations.txt``), as a directory or an archive. Its test split
  has no labels, so ``val`` serves as the test split.

Decoded images are cached as uint8 NHWC arrays in ``$PSCONV_CACHE`` (default
``~/.cache/psconv``), keyed by the source's path, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "ImageDataset",
    "DeviceData",
    "load_dataset",
    "resolve_data_dir",
    "cache_dir",
    "epoch_seed",
]

# The paper's normalisation (the authors' scripts); Tiny ImageNet uses the same numbers so that
# a model's input statistics do not depend on which data set it was built for.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CACHE_VERSION = 1
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: int
    num_classes: int
    url: str
    archive: str
    md5: str
    layout_hint: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        image_size=32,
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
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
        layout_hint=(
            "Tiny ImageNet's official layout (tiny-imagenet-200/ with wnids.txt, "
            "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt) or an "
            "archive of it (tiny-imagenet-200.zip or .tar.gz)"
        ),
    ),
}


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
        return ImageDataset(
            self.name,
            self.classes,
            self.x_train[train],
            self.y_train[train],
            self.x_train[val],
            self.y_train[val],
            f"{self.source} (train split; {n} held out as validation)",
        )

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
        return ImageDataset(self.name, self.classes, x_train, y_train, x_test, y_test, self.source)


# --------------------------------------------------------------------------------------------
# Locating the data


def cache_dir() -> Path:
    return Path(os.environ.get("PSCONV_CACHE") or Path.home() / ".cache" / "psconv")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, dataset: str, download: bool = False) -> Path:
    """``data_dir``, else ``$PSCONV_DATA``, else (with ``download``) the cache; else an error."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("PSCONV_DATA")
    if env:
        return Path(env).expanduser()
    if download:
        return cache_dir() / "datasets"
    info = _info(dataset)
    raise FileNotFoundError(
        f"no data directory for {dataset}: pass --data-dir DIR (or set $PSCONV_DATA) pointing at "
        f"{info.layout_hint}, or pass --download to fetch {info.url}"
    )


def _info(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz", ".tar", ".zip"))


def _find_source(dataset: str, root: Path) -> Path:
    """The file or directory under ``root`` that holds ``dataset``, best source first."""
    info = _info(dataset)
    if root.is_file():
        if _is_archive(root) or root.suffix == ".npz":
            return root
        raise ValueError(f"{str(root)!r} is neither a directory nor an archive; expected {info.layout_hint}")
    if not root.is_dir():
        raise FileNotFoundError(
            f"data path {str(root)!r} does not exist; expected {info.layout_hint} there "
            f"(or pass --download to fetch {info.url})"
        )
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in candidates:
        if dataset == "cifar10" and ((d / "data_batch_1").is_file() or (d / "cifar-10-batches-py").is_dir()):
            return d / "cifar-10-batches-py" if (d / "cifar-10-batches-py").is_dir() else d
        if dataset == "cifar10" and (d / "train").is_dir() and (d / "test").is_dir():
            return d
        if dataset == "tinyimagenet" and (d / "wnids.txt").is_file():
            return d
        if dataset == "tinyimagenet" and (d / "tiny-imagenet-200" / "wnids.txt").is_file():
            return d / "tiny-imagenet-200"
    files = sorted(p for p in root.iterdir() if p.is_file())
    if dataset == "cifar10":
        patterns = [
            r"^cifar-10-python\.tar\.gz$",
            r"cifar.?10.*\.(tar\.gz|tgz|tar|zip)$",
            r"cifar.?10.*\.npz$",
        ]
    else:
        patterns = [r"^tiny-imagenet-200\.zip$", r"tiny.?imagenet.*\.(zip|tar\.gz|tgz|tar)$"]
    for pat in patterns:
        for f in files:
            if re.search(pat, f.name, re.IGNORECASE):
                return f
    raise FileNotFoundError(
        f"no {dataset} data found in {str(root)!r}: expected {info.layout_hint}; "
        f"pass --data-dir to point elsewhere or --download to fetch {info.url}"
    )


# --------------------------------------------------------------------------------------------
# Reading files from a directory or an archive, uniformly


class _Files:
    """Relative POSIX names -> bytes, over a directory, a tar or a zip archive."""

    def __init__(self, path: Path, wanted: Callable[[str], bool]):
        self.path = path
        self._data: dict[str, bytes] = {}
        self._zip: zipfile.ZipFile | None = None
        self.names: list[str] = []
        stats: list[tuple[str, int, int]] = []
        if path.is_dir():
            for dirpath, _, filenames in os.walk(path):
                for fn in filenames:
                    full = os.path.join(dirpath, fn)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    if wanted(rel):
                        st = os.stat(full)
                        self.names.append(rel)
                        stats.append((rel, st.st_size, st.st_mtime_ns))
        else:
            st = path.stat()
            stats.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
        self.names.sort()
        stats.sort()
        self.fingerprint = hashlib.sha256(json.dumps([str(path.resolve()), stats]).encode()).hexdigest()

    def open(self) -> None:
        """Index an archive (tar: read in one pass, since gzip allows no random access)."""
        path = self.path
        if path.is_dir():
            return
        name = path.name.lower()
        try:
            if name.endswith(".zip"):
                self._zip = zipfile.ZipFile(path)
                self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
            else:
                with tarfile.open(path, mode="r:*") as tar:
                    for member in tar:
                        if member.isfile():
                            handle = tar.extractfile(member)
                            if handle is not None:
                                self._data[member.name.removeprefix("./")] = handle.read()
                self.names = sorted(self._data)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ValueError(f"archive {str(path)!r} cannot be read ({exc}); is it complete?") from None

    def read(self, name: str) -> bytes:
        if self.path.is_dir():
            return (self.path / name).read_bytes()
        if self._zip is not None:
            return self._zip.read(name)
        return self._data[name]


def _decode_images(files: _Files, names: list[str], size: int, what: str) -> np.ndarray:
    """Decode ``names`` with Pillow into a uint8 NHWC array (greyscale and palette -> RGB)."""
    from PIL import Image  # noqa: PLC0415  (only needed when building the cache)

    out = np.empty((len(names), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        name = names[i]
        try:
            with Image.open(io.BytesIO(files.read(name))) as img:
                # The header gives the size: refuse before decoding (no decompression bombs).
                if img.size != (size, size):
                    raise ValueError(f"it is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
                out[i] = np.asarray(img.convert("RGB"))
        except Exception as exc:  # Pillow raises many types for a damaged file
            raise ValueError(f"{what}: image {name!r} in {str(files.path)!r} cannot be used: {exc}") from None

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(names)), chunksize=256))
    return out


class _BatchUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches without running code: only arrays and plain containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct  # noqa: PLC0415

            return _reconstruct
        if module == "_codecs":
            import codecs  # noqa: PLC0415

            return codecs.encode
        return getattr(np, name)


def _unpickle(raw: bytes, name: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"CIFAR-10 batch {name!r} is malformed: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR-10 batch {name!r} is malformed: not a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_batches(files: _Files) -> tuple:
    roots = [n[: -len("data_batch_1")] for n in files.names if n.endswith("data_batch_1")]
    if not roots:
        raise ValueError(f"no data_batch_1 in {str(files.path)!r}")
    root = roots[0]

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        full = root + name
        if full not in files.names:
            raise FileNotFoundError(
                f"CIFAR-10 batches in {str(files.path)!r} are incomplete: {full!r} is missing "
                f"(expected data_batch_1..5 and test_batch)"
            )
        d = _unpickle(files.read(full), full)
        data, labels = d.get("data"), d.get("labels")
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
        ):
            raise ValueError(f"CIFAR-10 batch {full!r} is malformed: 'data' must be uint8 [N, 3072]")
        if labels is None or len(labels) != len(data):
            raise ValueError(f"CIFAR-10 batch {full!r} is malformed: 'labels' missing or of wrong length")
        # Rows are channel-planar (1024 R, 1024 G, 1024 B): to NHWC.
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    classes = list(CIFAR10_CLASSES)
    if root + "batches.meta" in files.names:
        names = _unpickle(files.read(root + "batches.meta"), root + "batches.meta").get("label_names")
        if isinstance(names, list) and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return classes, x_train, y_train, x_test, y_test


def _read_image_folder(files: _Files, size: int, what: str) -> tuple:
    pat = re.compile(r"^(?P<root>(?:.*/)?)(?P<split>train|test)/(?P<cls>[^/]+)/[^/]+$")
    by_split: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    roots = set()
    for n in files.names:
        m = pat.match(n)
        if m and n.lower().endswith(_IMAGE_EXT):
            by_split[m["split"]].append((m["cls"], n))
            roots.add(m["root"])
    if not by_split["train"] or not by_split["test"]:
        raise ValueError(
            f"{what}: {str(files.path)!r} has no images in train/<class>/ and test/<class>/ (JPEG or PNG)"
        )
    if len(roots) > 1:
        raise ValueError(f"{what}: {str(files.path)!r} holds several image trees: {sorted(roots)}")
    classes = sorted({c for c, _ in by_split["train"]})
    extra = {c for c, _ in by_split["test"]} - set(classes)
    if extra:
        raise ValueError(f"{what}: test classes {sorted(extra)} have no train folder in {str(files.path)!r}")
    index = {c: i for i, c in enumerate(classes)}
    arrays = []
    for split in ("train", "test"):
        items = sorted(by_split[split], key=lambda t: (index[t[0]], t[1]))
        arrays.append(_decode_images(files, [n for _, n in items], size, what))
        arrays.append(np.array([index[c] for c, _ in items], dtype=np.int64))
    return classes, *arrays


def _read_tiny_imagenet(files: _Files, size: int) -> tuple:
    what = "Tiny ImageNet"
    wnid_files = [n for n in files.names if n == "wnids.txt" or n.endswith("/wnids.txt")]
    if not wnid_files:
        raise ValueError(f"{what}: no wnids.txt in {str(files.path)!r}")
    root = wnid_files[0][: -len("wnids.txt")]
    wnids = sorted(set(files.read(root + "wnids.txt").decode().split()))
    if not wnids:
        raise ValueError(f"{what}: {root}wnids.txt in {str(files.path)!r} is empty")
    index = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[int, str]] = []
    prefix = root + "train/"
    for n in files.names:
        if n.startswith(prefix) and n.lower().endswith(_IMAGE_EXT):
            parts = n[len(prefix) :].split("/")
            if len(parts) == 3 and parts[1] == "images" and parts[0] in index:
                train.append((index[parts[0]], n))
    ann_name = root + "val/val_annotations.txt"
    if ann_name not in files.names:
        raise FileNotFoundError(f"{what}: {ann_name!r} is missing in {str(files.path)!r}")
    val: list[tuple[int, str]] = []
    for line_no, line in enumerate(files.read(ann_name).decode().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"{what}: {ann_name!r} line {line_no} is malformed or names an unknown wnid")
        name = root + "val/images/" + fields[0]
        if name not in files.names:
            raise FileNotFoundError(f"{what}: {name!r} (listed in val_annotations.txt) is missing")
        val.append((index[fields[1]], name))
    if not train or not val:
        raise ValueError(f"{what}: {str(files.path)!r} has no train/<wnid>/images/*.JPEG or no val images")
    train.sort()
    val.sort(key=lambda t: t[1])
    x_train = _decode_images(files, [n for _, n in train], size, what)
    x_test = _decode_images(files, [n for _, n in val], size, what)
    y_train = np.array([c for c, _ in train], dtype=np.int64)
    y_test = np.array([c for c, _ in val], dtype=np.int64)
    return wnids, x_train, y_train, x_test, y_test


def _load_npz(path: Path, size: int) -> tuple:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except KeyError as exc:
        raise ValueError(
            f"{str(path)!r} lacks array {exc}; expected x_train, y_train, x_test, y_test"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .npz ({exc})") from None
    for name, x in (("x_train", arrays[0]), ("x_test", arrays[2])):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{str(path)!r}: {name} must be uint8 [N, {size}, {size}, 3], got {x.dtype} {x.shape}"
            )
    y_max = int(max(arrays[1].max(initial=0), arrays[3].max(initial=0)))
    if classes is None:
        classes = [str(i) for i in range(y_max + 1)]
    return classes, arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64)


def _read_source(dataset: str, source: Path) -> tuple:
    info = _info(dataset)
    size = info.image_size
    if source.suffix == ".npz":
        return _load_npz(source, size)
    files = _Files(source, lambda n: True)
    files.open()
    if dataset == "tinyimagenet":
        return _read_tiny_imagenet(files, size)
    if any(n.endswith("data_batch_1") for n in files.names):
        return _read_cifar_batches(files)
    return _read_image_folder(files, size, "CIFAR-10")


# --------------------------------------------------------------------------------------------
# Download


def download(dataset: str, dest_dir: Path, progress: bool = True) -> Path:
    """Fetch the official archive into ``dest_dir`` (atomically) and verify its md5."""
    info = _info(dataset)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / info.archive
    if target.is_file() and _md5(target) == info.md5:
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{info.archive}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(info.url, timeout=60) as resp:  # noqa: S310
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress and sys.stderr.isatty():
                    pct = f"{100 * done / total:5.1f}%" if total else f"{done >> 20} MiB"
                    print(f"\rdownloading {info.url} {pct}", end="", file=sys.stderr, flush=True)
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)
        got = _md5(Path(tmp))
        if got != info.md5:
            raise ValueError(f"download of {info.url} is corrupt: md5 {got}, expected {info.md5}")
        os.replace(tmp, target)
    except OSError as exc:
        raise FileNotFoundError(f"cannot download {info.url}: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 (the publisher's checksum)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Entry point


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
    classes, x_train, y_train, x_test, y_test = arrays
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{str(source)!r}: {split} labels outside 0..{len(classes) - 1}")
    if len(classes) != info.num_classes:
        raise ValueError(f"{str(source)!r} has {len(classes)} classes, {dataset} has {info.num_classes}")
    return ImageDataset(dataset, list(classes), x_train, y_train, x_test, y_test, str(source))


def _read_cache(path: Path) -> tuple | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return (
                [str(c) for c in z["classes"]],
                z["x_train"],
                z["y_train"],
                z["x_test"],
                z["y_test"],
            )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # absent or damaged: rebuild


def _write_cache(path: Path, arrays: tuple) -> None:
    classes, x_train, y_train, x_test, y_test = arrays
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f, classes=np.array(classes), x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
            )
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache costs time, not correctness
        print(f"psconv: warning: cannot write data cache {str(path)!r}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# On-device batches and augmentation


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one epoch's randomness, independent of any earlier epoch (exact resume)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class DeviceData:
    """One split as a single uint8 NCHW tensor on ``device``; batches are cut, augmented
    (pad-4 random crop, horizontal flip) and normalised there, in whole batches."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device | str = "cpu",
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
        pad: int = 4,
    ):
        self.device = torch.device(device)
        self.x = (
            torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).contiguous()
        )
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.pad = pad

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # In the default dtype, so that a float64 model (exact comparisons) gets float64 input.
        return (x.to(self.mean.dtype) - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def train_batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Global batches of ``batch_size`` (the last partial one dropped), of which this rank
        yields its contiguous share. Shuffle, crops and flips are drawn for the whole epoch from
        ``(seed, epoch)`` on the CPU, so a sample's augmentation depends neither on the rank
        count nor on the device nor on earlier epochs."""
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        n = len(self)
        if n < batch_size:
            raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}")
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=g)
        shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        local = batch_size // world_size
        for step in range(n // batch_size):
            lo = step * batch_size + rank * local
            idx = perm[lo : lo + local]
            yield self.augment(idx.to(self.device), shifts[idx].to(self.device), flips[idx].to(self.device))

    def augment(
        self, idx: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[idx]
        b, _, h, w = x.shape
        p = self.pad
        if p:
            # Zero padding in pixel space, as RandomCrop(padding=4) on the raw image does.
            xp = F.pad(x, (p, p, p, p))
            rows = shifts[:, 0:1] + torch.arange(h, device=x.device)
            cols = shifts[:, 1:2] + torch.arange(w, device=x.device)
            bi = torch.arange(b, device=x.device)[:, None, None]
            x = xp[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
        return self.normalize(x), self.y[idx]

    def eval_batches(
        self, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image once, in order; rank r takes a contiguous share of the split."""
        n = len(self)
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            yield self.normalize(self.x[start:stop]), self.y[start:stop]
