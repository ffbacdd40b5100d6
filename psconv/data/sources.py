"""Where data comes from: locating a data set, reading a directory or an archive uniformly,
decoding images (in parallel, with a bar on a terminal), and the official download.

Sources (``--data-dir`` or ``$PSCONV_DATA``; a directory, an archive or an ``.npz``):

- CIFAR-10: the official python batches (``cifar-10-batches-py/``), an image-folder tree
  (``train/<class>/*.jpg|png`` + ``test/<class>/*``), a ``.tar.gz``/``.zip`` of either (the
  official ``cifar-10-python.tar.gz`` or ``cifar10-jpeg.tar.gz``), or an ``.npz`` with
  ``x_train y_train x_test y_test`` (uint8 NHWC, like ``cifar10-exact-subset.npz``).
- Tiny ImageNet in its official layout (``wnids.txt``, ``words.txt``,
  ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``), as a directory
  or an archive. Its test split has no labels, so ``val`` serves as the test split.

A reader returns ``(classes, x_train, y_train, x_test, y_test, words)``: ``words`` are readable
class names where the source's own names are ids (Tiny ImageNet's wnids), else None.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import progress
from ..fileio import atomic_stream
from .info import CIFAR10_CLASSES, DATASETS, IMAGE_EXT, DatasetInfo, cache_dir

# --------------------------------------------------------------------------------------------
# Locating the data


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
        # A set beside the list: Tiny ImageNet looks up each of its 10,000 val names.
        self._members = frozenset(self.names)
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
            self._members = frozenset(self.names)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ValueError(f"archive {str(path)!r} cannot be read ({exc}); is it complete?") from None

    def __contains__(self, name: str) -> bool:
        return name in self._members

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
    # One thread: Image.open's header parsing holds the GIL, and on images this small it is
    # most of the work, so a thread pool ran 1.3-1.8x slower than this loop on 2 cores.
    for i, name in enumerate(progress.iterate(names, f"decoding {what}", total=len(names), unit="img")):
        try:
            with Image.open(io.BytesIO(files.read(name))) as img:
                # The header gives the size: refuse before decoding (no decompression bombs).
                if img.size != (size, size):
                    raise ValueError(f"it is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
                out[i] = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except Exception as exc:  # Pillow raises many types for a damaged file
            raise ValueError(f"{what}: image {name!r} in {str(files.path)!r} cannot be used: {exc}") from None
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
        if full not in files:
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
    if root + "batches.meta" in files:
        names = _unpickle(files.read(root + "batches.meta"), root + "batches.meta").get("label_names")
        if isinstance(names, list) and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return classes, x_train, y_train, x_test, y_test, None


def _read_image_folder(files: _Files, size: int, what: str) -> tuple:
    pat = re.compile(r"^(?P<root>(?:.*/)?)(?P<split>train|test)/(?P<cls>[^/]+)/[^/]+$")
    by_split: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    roots = set()
    for n in files.names:
        m = pat.match(n)
        if m and n.lower().endswith(IMAGE_EXT):
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
    return classes, *arrays, None


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
        if n.startswith(prefix) and n.lower().endswith(IMAGE_EXT):
            parts = n[len(prefix) :].split("/")
            if len(parts) == 3 and parts[1] == "images" and parts[0] in index:
                train.append((index[parts[0]], n))
    ann_name = root + "val/val_annotations.txt"
    if ann_name not in files:
        raise FileNotFoundError(f"{what}: {ann_name!r} is missing in {str(files.path)!r}")
    val: list[tuple[int, str]] = []
    for line_no, line in enumerate(files.read(ann_name).decode().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"{what}: {ann_name!r} line {line_no} is malformed or names an unknown wnid")
        name = root + "val/images/" + fields[0]
        if name not in files:
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
    return wnids, x_train, y_train, x_test, y_test, _class_words(files, root, wnids)


def _class_words(files: _Files, root: str, wnids: list[str]) -> list[str] | None:
    """Each wnid's first name in ``words.txt`` (``n01443537\tgoldfish, Carassius auratus``:
    "goldfish"); None when the file is absent. A wnid it lacks keeps its id."""
    name = root + "words.txt"
    if name not in files:
        return None
    words = {}
    for line in files.read(name).decode("utf-8", "replace").splitlines():
        wnid, _, text = line.partition("\t")
        if text.strip():
            words[wnid.strip()] = text.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def _load_npz(path: Path, size: int) -> tuple:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except KeyError as exc:
        raise ValueError(
            f"{str(path)!r} lacks array {exc}; expected x_train, y_train, x_test, y_test"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOFError: an empty file
        raise ValueError(f"{str(path)!r} is not a readable .npz ({exc})") from None
    for name, x in (("x_train", arrays[0]), ("x_test", arrays[2])):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{str(path)!r}: {name} must be uint8 [N, {size}, {size}, 3], got {x.dtype} {x.shape}"
            )
    y_max = int(max(arrays[1].max(initial=0), arrays[3].max(initial=0)))
    if classes is None:
        classes = [str(i) for i in range(y_max + 1)]
    return classes, arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64), None


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


def download(dataset: str, dest_dir: Path, show_progress: bool = True) -> Path:
    """Fetch the official archive into ``dest_dir`` (atomically) and verify its md5."""
    info = _info(dataset)
    target = dest_dir / info.archive
    if target.is_file() and _md5(target) == info.md5:
        return target
    try:
        with atomic_stream(target) as out, urllib.request.urlopen(info.url, timeout=60) as resp:  # noqa: S310
            total = int(resp.headers.get("Content-Length") or 0) or None
            digest = hashlib.md5()  # noqa: S324 (the publisher's checksum)
            with progress.bar(
                total or 0, f"downloading {info.archive}", unit="B", enabled=show_progress
            ) as b:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    b.update(len(chunk))
            if digest.hexdigest() != info.md5:  # raised inside: the file never takes its name
                raise ValueError(
                    f"download of {info.url} is corrupt: md5 {digest.hexdigest()}, expected {info.md5}"
                )
    except OSError as exc:
        raise FileNotFoundError(f"cannot download {info.url}: {exc}") from None
    return target


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 (the publisher's checksum)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
