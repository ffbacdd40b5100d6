"""Data loaders on the real shared data, synthetic official layouts, and device batches."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psconv.data import CIFAR10_CLASSES, DeviceData, load_dataset, resolve_data_dir
from psconv.data.sources import _read_source


def test_exact_npz(cifar_npz: Path) -> None:
    ds = load_dataset("cifar10", cifar_npz)
    assert ds.x_train.shape == (4000, 32, 32, 3) and ds.x_test.shape == (1000, 32, 32, 3)
    assert ds.classes == list(CIFAR10_CLASSES)
    assert ds.y_train.dtype == np.int64 and set(np.unique(ds.y_train)) == set(range(10))


def test_jpeg_tar_matches_official_pixels(cifar_jpeg_tar: Path, cifar_npz: Path) -> None:
    jpeg = load_dataset("cifar10", cifar_jpeg_tar.parent)  # the directory: finds the full tar
    assert jpeg.x_train.shape == (50000, 32, 32, 3) and jpeg.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(jpeg.y_train).tolist() == [5000] * 10
    exact = load_dataset("cifar10", cifar_npz)
    # File k of a class is that class's k-th official image: equal up to JPEG noise.
    for c in range(10):
        a = exact.x_train[exact.y_train == c][:5].astype(np.float64)
        b = jpeg.x_train[jpeg.y_train == c][:5].astype(np.float64)
        assert np.abs(a - b).mean() < 12


def test_tiny_imagenet_sample(tiny_tar: Path) -> None:
    ds = load_dataset("tinyimagenet", tiny_tar)
    assert ds.num_classes == 200 and ds.image_size == 64
    assert ds.x_train.shape == (20000, 64, 64, 3) and ds.x_test.shape == (10000, 64, 64, 3)
    assert np.bincount(ds.y_train, minlength=200).tolist() == [100] * 200
    assert np.bincount(ds.y_test, minlength=200).tolist() == [50] * 200
    # Readable names from words.txt beside the wnids (the first synonym of each).
    assert ds.classes[0].startswith("n") and len(ds.class_words) == 200
    words = dict(line.split("\t") for line in _tiny_words(tiny_tar).splitlines())
    assert ds.class_words[0] == words[ds.classes[0]].split(",")[0]


def _tiny_words(tar: Path) -> str:
    with tarfile.open(tar) as t:
        return t.extractfile("tiny-imagenet-200/words.txt").read().decode()


def test_holdout_is_disjoint_fixed_and_leaves_test_alone(cifar_npz: Path) -> None:
    ds = load_dataset("cifar10", cifar_npz)
    held = ds.holdout(500)
    assert held.x_train.shape[0] == 3500 and held.x_test.shape[0] == 500
    key = lambda x: {img.tobytes() for img in x}  # noqa: E731
    assert not key(held.x_train) & key(held.x_test)  # no validation image is trained on
    assert key(held.x_train) | key(held.x_test) == key(ds.x_train)  # and none of the test set is used
    assert np.array_equal(ds.holdout(500).y_test, held.y_test)  # the same draw every time
    assert "held out" in held.source
    with pytest.raises(ValueError, match="--holdout must be between 1 and 3999"):
        ds.holdout(4000)


def _official_batches(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    planar = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for i in range(1, 6):
        part = slice((i - 1) * 20, i * 20)
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": planar[part], b"labels": y[part].tolist()}, f, protocol=2)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": planar[:10], b"labels": y[:10].tolist()}, f, protocol=2)


def test_official_python_batches(tmp_path: Path, cifar_npz: Path) -> None:
    exact = load_dataset("cifar10", cifar_npz)
    _official_batches(tmp_path, exact.x_train[:100], exact.y_train[:100])
    ds = load_dataset("cifar10", tmp_path, use_cache=False)
    assert np.array_equal(ds.x_train, exact.x_train[:100]) and np.array_equal(ds.y_train, exact.y_train[:100])


def test_batches_refuse_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        load_dataset("cifar10", tmp_path, use_cache=False)


def test_png_image_folder_and_greyscale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(
                    tmp_path / split / c / f"{k}.png"
                )
    with pytest.raises(ValueError, match="2 classes"):
        load_dataset("cifar10", tmp_path, use_cache=False)


def test_missing_and_malformed_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSCONV_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="--data-dir.*--download"):
        resolve_data_dir(None, "cifar10")
    with pytest.raises(FileNotFoundError, match="no cifar10 data found.*image folder"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    (tmp_path / "cifar10-broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="cannot be read"):
        load_dataset("cifar10", tmp_path, use_cache=False)
    (tmp_path / "cifar10-broken.tar.gz").unlink()
    for empty in ("cifar10.npz", "cifar10.tar.gz"):  # as left by an interrupted copy
        (tmp_path / empty).write_bytes(b"")
        with pytest.raises(ValueError, match=r"is not a readable \.npz|cannot be read"):
            load_dataset("cifar10", tmp_path / empty, use_cache=False)
        (tmp_path / empty).unlink()
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "0.jpg").write_bytes(b"garbage")
    (tmp_path / "test" / "cat" / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be used"):
        load_dataset("cifar10", tmp_path, use_cache=False)
    Image.new("RGB", (16, 16)).save(tmp_path / "train" / "cat" / "0.jpg", format="PNG")
    with pytest.raises(ValueError, match="16x16, expected 32x32"):
        load_dataset("cifar10", tmp_path, use_cache=False)


def test_device_batches_augment_and_shard() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 100)
    data = DeviceData(x, y)
    full = list(data.train_batches(20, seed=1, epoch=3))
    assert len(full) == 5 and full[0][0].shape == (20, 3, 32, 32) and full[0][0].dtype == torch.float32
    again = list(data.train_batches(20, seed=1, epoch=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    other = next(data.train_batches(20, seed=1, epoch=4))[0]
    assert not torch.equal(other, full[0][0])
    shards = [list(data.train_batches(20, seed=1, epoch=3, rank=r, world_size=2)) for r in range(2)]
    for step in range(5):
        joined = torch.cat([shards[0][step][0], shards[1][step][0]])
        assert torch.equal(joined, full[step][0])
    # Without padding or flips an evaluation batch is the normalised image itself.
    xb, yb = next(data.eval_batches(100))
    assert torch.equal(yb, torch.from_numpy(y))
    back = xb * data.std + data.mean
    assert torch.allclose(back, torch.from_numpy(x).permute(0, 3, 1, 2).float(), atol=1e-3)


def test_download_verifies_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import hashlib
    import tarfile

    import psconv.data as data

    tree = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (tree / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tree / split / c / "0.png"
            )
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    info = dataclasses.replace(data.DATASETS["cifar10"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(data.DATASETS, "cifar10", info)
    ds = load_dataset("cifar10", tmp_path / "dl", download_missing=True, use_cache=False)
    assert ds.x_train.shape == (10, 32, 32, 3) and (tmp_path / "dl" / info.archive).is_file()
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(info, md5="0" * 32))
    with pytest.raises(ValueError, match="md5"):
        load_dataset("cifar10", tmp_path / "dl2", download_missing=True, use_cache=False)
    assert not any((tmp_path / "dl2").iterdir())  # nothing half-written is left behind


def _tiny_layout(root: Path, val_names: list[str]) -> None:
    """A two-class Tiny ImageNet tree: two train images a class (one greyscale), ``val_names``
    listed in val_annotations.txt, of which only the first is written."""
    base = root / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tkoala\n")
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        Image.new("RGB", (64, 64), (200, 10, 10)).save(base / "train" / w / "images" / f"{w}_0.png")
        Image.new("L", (64, 64), 77).save(base / "train" / w / "images" / f"{w}_1.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(base / "val" / "images" / val_names[0])
    ann = "".join(f"{n}\t{wnids[i % 2]}\t0\t0\t63\t63\n" for i, n in enumerate(val_names))
    (base / "val" / "val_annotations.txt").write_text(ann)


def test_tiny_imagenet_layout_names_words_and_greyscale(tmp_path: Path) -> None:
    _tiny_layout(tmp_path, ["val_0.png"])
    # The reader itself: load_dataset would refuse two classes where Tiny ImageNet has 200.
    classes, x_train, y_train, x_test, y_test, words = _read_source("tinyimagenet", tmp_path)
    assert classes == ["n01", "n02"] and words == ["goldfish", "koala"]
    assert y_train.tolist() == [0, 0, 1, 1] and y_test.tolist() == [0]
    assert np.array_equal(x_train[1], np.full((64, 64, 3), 77))  # greyscale -> RGB
    assert x_train[0, 0, 0].tolist() == [200, 10, 10] and x_test[0, 0, 0].tolist() == [1, 2, 3]


def test_tiny_imagenet_val_file_listed_but_missing(tmp_path: Path) -> None:
    _tiny_layout(tmp_path, ["val_0.png", "val_1.png"])
    with pytest.raises(
        FileNotFoundError, match=r"val/images/val_1.png' \(listed in val_annotations.txt\) is missing"
    ):
        _read_source("tinyimagenet", tmp_path)
