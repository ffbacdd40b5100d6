"""``predict``: real CIFAR-10 / Tiny ImageNet images, and every kind of bad file or value."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snapshot as _snapshot
from conftest import spread_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import psconv
from psconv import predict
from psconv.cli import main
from psconv.data import CIFAR10_CLASSES, DeviceData
from psconv.evaluate import evaluate

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _tiny_dense() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1)
    )


# --------------------------------------------------------------------------------------------
# predict


def _reference_top1(model: torch.nn.Module, images: np.ndarray) -> list[int]:
    """Top-1 exactly as ``psconv eval`` computes it: DeviceData's batches through the model."""
    data = DeviceData(images, np.zeros(len(images), dtype=np.int64), "cpu", pad=0)
    with torch.no_grad():
        return [int(i) for x, _ in data.eval_batches(500) for i in model(x).argmax(1)]


def test_predict_png_equals_eval(
    vgg_ckpt: tuple[Path, torch.nn.Module], cifar: dict[str, np.ndarray], tmp_path: Path, capsys
) -> None:
    path, model = vgg_ckpt
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(cifar["x"]):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    assert main(["predict", "--checkpoint", str(path), str(folder), "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = [p["top"][0]["index"] for p in out["predictions"]]
    assert [Path(p["file"]).name for p in out["predictions"]] == [f"{i:03d}.png" for i in range(24)]
    assert got == _reference_top1(model, cifar["x"])
    assert len(set(got)) > 1  # the spread weights give a real decision, not one constant class
    assert all(len(p["top"]) == 3 for p in out["predictions"]) and out["skipped"] == []
    top = out["predictions"][0]["top"]
    assert top[0]["class"] == CIFAR10_CLASSES[top[0]["index"]]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    # Same accuracy as `psconv eval`'s function on the same images.
    result = evaluate(model, DeviceData(cifar["x"], cifar["y"], "cpu", pad=0))
    assert result["top1"] == pytest.approx(100 * np.mean(np.array(got) == cifar["y"]))


def test_predict_jpeg_and_resize(
    vgg_ckpt: tuple[Path, torch.nn.Module], cifar: dict[str, np.ndarray], tmp_path: Path
) -> None:
    path, model = vgg_ckpt
    dm = predict.load_for_inference(path)
    files = []
    for i, img in enumerate(cifar["x"][:6]):
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(img).save(files[-1], quality=90)
    result = predict.predict_files(dm, files, top_k=1)
    decoded = np.stack([np.array(Image.open(f).convert("RGB")) for f in files])
    assert [p["top"][0]["index"] for p in result.predictions] == _reference_top1(model, decoded)
    # A larger, non-square photo: shorter side to 32, centre crop; 32x32 stays untouched.
    big = Image.fromarray(cifar["x"][0]).resize((96, 64))
    big.save(tmp_path / "big.png")
    assert predict.load_image(tmp_path / "big.png", 32).shape == (32, 32, 3)
    Image.fromarray(cifar["x"][1]).save(tmp_path / "exact.png")
    assert np.array_equal(predict.load_image(tmp_path / "exact.png", 32), cifar["x"][1])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_predict_other_pixel_modes(tmp_path: Path, mode: str) -> None:
    img = Image.fromarray(np.arange(40 * 50, dtype=np.uint8).reshape(40, 50))
    img.convert(mode).save(tmp_path / "x.png")
    assert predict.load_image(tmp_path / "x.png", 32).shape == (32, 32, 3)


def test_predict_tinyimagenet_image(tmp_path: Path) -> None:
    from conftest import shared_file

    tar_path = shared_file("tiny-imagenet-200-sample.tar.gz")
    with tarfile.open(tar_path) as tar:
        for member in tar:
            # A training image: they come first in the archive, the val images after 20k entries.
            if member.isfile() and member.name.endswith(".JPEG"):
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                break
    (tmp_path / "real.JPEG").write_bytes(raw)
    model = spread_weights(psconv.create_model("vgg16", "PSD2_P8", num_classes=4, image_size=64))
    ckpt = tmp_path / "t.safetensors"
    psconv.save(model, ckpt, dataset="tinyimagenet", classes=["a", "b", "c", "d"])
    dm = predict.load_for_inference(ckpt)
    result = predict.predict_files(dm, [tmp_path / "real.JPEG"], top_k=10)
    (pred,) = result.predictions
    pixels = np.array(Image.open(io.BytesIO(raw)).convert("RGB"))[None]
    assert pred["top"][0]["index"] == _reference_top1(model, pixels)[0]
    assert len(pred["top"]) == 4 and pred["top"][0]["class"] in "abcd"


def test_predict_skips_bad_files(vgg_ckpt: tuple[Path, torch.nn.Module], tmp_path: Path, capsys) -> None:
    path, _ = vgg_ckpt
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    args = ["predict", "--checkpoint", str(path), str(tmp_path), str(tmp_path / "missing.jpg")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.count("good.png") == 1
    skipped = [line for line in captured.err.splitlines() if line.startswith("psconv: skipped")]
    assert len(skipped) == 3 and not any(".hidden" in line for line in skipped)
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "notes.txt")]) == 2
    assert "no image could be classified" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / ".cache").mkdir(parents=True)
    (empty / ".cache" / "a.png").write_bytes((tmp_path / "good.png").read_bytes())  # hidden: not walked
    assert main(["predict", "--checkpoint", str(path), str(empty)]) == 2
    assert f"no files found in {str(empty)!r} (folders are walked; hidden" in capsys.readouterr().err


def test_classify_refuses_non_finite(vgg_ckpt: tuple[Path, torch.nn.Module]) -> None:
    _, model = vgg_ckpt
    x = torch.zeros(2, 3, 32, 32)
    values, indices = predict.classify(model, x, top_k=20)
    assert values.shape == (2, 10) and torch.allclose(values.sum(1), torch.ones(2))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            predict.classify(model, x)


def test_predict_cli_agrees_with_eval_cli_on_real_jpegs(
    vgg_ckpt: tuple[Path, torch.nn.Module], tmp_path: Path, capsys, monkeypatch
) -> None:
    """The real CIFAR-10 JPEGs of ../shared/data: ``psconv predict`` on the test images gives
    the top-1 of ``psconv eval`` on the same image folder, image by image and in total."""
    from conftest import shared_file

    tree = tmp_path / "cifar"
    want = {"train": 1, "test": 3}  # eval's image-folder loader needs both splits
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(shared_file("cifar10-jpeg.tar.gz")) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            split, cls, name = parts[-3:]
            if counts.get((split, cls), 0) < want[split]:
                counts[split, cls] = counts.get((split, cls), 0) + 1
                (tree / split / cls).mkdir(parents=True, exist_ok=True)
                (tree / split / cls / name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    monkeypatch.setenv("PSCONV_CACHE", str(tmp_path / "cache"))
    path, model = vgg_ckpt
    assert main(["eval", "--checkpoint", str(path), "--data-dir", str(tree), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", str(path), str(tree / "test"), "--json", "--top-k", "1"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert ev["images"] == len(preds) == 30
    got = [p["top"][0]["index"] for p in preds]
    truth = [list(CIFAR10_CLASSES).index(Path(p["file"]).parent.name) for p in preds]
    assert ev["top1"] == pytest.approx(100 * np.mean(np.array(got) == np.array(truth)))
    # Image by image: eval's decoded test split (class-major, file-name order, as predict walks).
    from psconv.data import load_dataset

    data = load_dataset("cifar10", tree)
    assert got == _reference_top1(model, data.x_test)


# --------------------------------------------------------------------------------------------
# predict: corrupt, non-image and special files


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


@FUZZ
@given(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"GIF89a"]),
)
def test_load_image_random_bytes(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(prefix + data)
    try:
        image = predict.load_image(path, 32)
    except ValueError:
        return
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_special_image_files(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    raw = good.read_bytes()
    cases = {
        "truncated.jpg": raw[: len(raw) // 2],
        "empty.png": b"",
        "text.png": b"hello",
        "bomb.png": _png_header_only(100_000, 100_000),  # 10^10 pixels declared, 60 bytes stored
        "large.png": _png_header_only(10_000, 10_000),  # Pillow only warns: an error here
        "zero.png": _png_header_only(0, 0),
        "eps.jpg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block for ever: it must be skipped unopened
    (tmp_path / "folder.png").mkdir()
    for name in [*cases, "pipe.png", "folder.png", "missing.png"]:
        with pytest.raises(ValueError), warnings.catch_warnings():
            warnings.simplefilter("error")  # and nothing printed besides
            predict.load_image(tmp_path / name, 32)
    assert predict.load_image(good, 32).shape == (32, 32, 3)


def test_predict_with_special_files_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = psconv.create_model("vgg16", "PS1_P9")
    ckpt = psconv.save(model, tmp_path / "m.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (64, 48), 128).save(images / "grey.png")
    (images / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    os.mkfifo(images / "pipe.jpg")
    (images / "sub").mkdir()
    (images / "sub" / "loop").symlink_to(images, target_is_directory=True)  # not followed
    before = _snapshot(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), str(images), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Path(p["file"]).name for p in out["predictions"]] == ["grey.png"]
    assert {Path(s["file"]).name for s in out["skipped"]} == {"bomb.png", "pipe.jpg"}
    assert _snapshot(tmp_path) == before  # predict writes nothing


# --------------------------------------------------------------------------------------------
# NaN and Inf


def test_nan_inf_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _tiny_dense().eval()
    # The raw network propagates NaN (documented): there is no silent clamping to hide it.
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 4, 4] = float("nan")
    assert torch.isnan(model(x)).any()
    vgg = psconv.create_model("vgg16", "PSD1_P16").eval()
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(1, 3, 32, 32)
        x[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            predict.classify(vgg, x)
    # A diverged checkpoint (NaN weights) is refused by predict and export, with one line.
    with torch.no_grad():
        vgg.classifier.weight[0, 0] = float("nan")
    ckpt = psconv.save(vgg, tmp_path / "nan.safetensors")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png")]) == 2
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("NaN/Inf values in 'classifier.weight'") == 2 and not out.exists()
    # Finite but broken weights (a negative BatchNorm variance): NaN scores are reported per
    # image, never printed as probabilities.
    with torch.no_grad():
        vgg.classifier.weight[0, 0] = 0.0
        vgg.features[1].running_var.fill_(-1.0)
    ckpt = psconv.save(vgg, tmp_path / "broken.safetensors")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png"), "--json"]) == 2
    captured = capsys.readouterr()
    result = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))
    assert result["predictions"] == [] and "NaN/Inf scores" in result["skipped"][0]["reason"]
    assert "NaN/Inf scores" in captured.err
    with pytest.raises(ValueError, match="NaN/Inf scores"):
        predict.classify(vgg, torch.zeros(1, 3, 32, 32))


def test_trained_tiny_imagenet_checkpoint_describes_its_data(
    tiny_tar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A checkpoint from ``psconv train`` carries classes (words and wnids), mean, std, image
    size and data set; ``predict`` and ``inspect`` print the words."""
    from psconv.train import TrainConfig, train

    run = tmp_path / "run"
    config = TrainConfig(model="vgg16", pattern="PSD1_P16", dataset="tinyimagenet", data_dir=str(tiny_tar),
                         epochs=1, batch_size=8, train_subset=16, test_subset=16, out=str(run), num_threads=1)  # fmt: skip
    train(config, log=lambda _m: None)
    meta = psconv.load_checkpoint(run / "last.safetensors").meta
    with tarfile.open(tiny_tar) as t:
        wnids = sorted(t.extractfile("tiny-imagenet-200/wnids.txt").read().decode().split())
        words = dict(
            line.split("\t")
            for line in t.extractfile("tiny-imagenet-200/words.txt").read().decode().splitlines()
        )
        raw = t.extractfile("tiny-imagenet-200/val/images/val_0.JPEG").read()
    assert meta["class_ids"] == wnids and meta["classes"] == [words[w].split(",")[0] for w in wnids]
    assert (meta["dataset"], meta["image_size"]) == ("tinyimagenet", 64)
    assert meta["mean"] == pytest.approx([0.4914, 0.4822, 0.4465]) and len(meta["std"]) == 3
    (tmp_path / "val_0.JPEG").write_bytes(raw)
    capsys.readouterr()
    assert (
        main(
            ["predict", "--checkpoint", str(run / "last.safetensors"), str(tmp_path / "val_0.JPEG"), "--json"]
        )
        == 0
    )
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert all(entry["class"] == meta["classes"][entry["index"]] for entry in top)
    assert main(["inspect", str(run / "last.safetensors"), "--no-macs"]) == 0
    assert meta["classes"][0] in capsys.readouterr().out
