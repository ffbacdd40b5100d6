"""``psconv inspect`` and ``psconv predict`` on real CIFAR-10 / Tiny ImageNet images."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import psconv
from psconv import deploy
from psconv.cli import main
from psconv.data import CIFAR10_CLASSES, DeviceData
from psconv.evaluate import evaluate


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with O(1), input-dependent logits, in eval mode.

    The paper's init gives logits of about 1e-20, which would make every comparison of outputs
    pass trivially. Here: He-scaled weights over each layer's kept fan-in, then BatchNorm
    statistics measured on real CIFAR-10 training images (or noise if the data is absent).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, psconv.PSConv2d):
                fan_in = m.nnz / m.out_channels
                m.weight_values.copy_(torch.randn(m.nnz, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.momentum = None  # cumulative average over the calibration batch
                m.reset_running_stats()
        size = int(model.psconv_config["image_size"])
        model.train()
        model(_calibration_batch(size))
    return model.eval()


def _calibration_batch(size: int) -> torch.Tensor:
    from conftest import shared_data_dir

    npz = shared_data_dir() / "cifar10-exact-subset.npz"
    if npz.is_file():
        with np.load(npz) as z:
            images = z["x_train"][: 24 if size == 32 else 8]
    else:
        images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    x = DeviceData(images, np.zeros(len(images), dtype=np.int64), "cpu", pad=0).normalize(
        torch.from_numpy(images).permute(0, 3, 1, 2)
    )
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear") if size != 32 else x


_CKPT_CACHE: dict[str, tuple[Path, torch.nn.Module]] = {}


@pytest.fixture(scope="session")
def sparse_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, torch.nn.Module]]:
    """``get(name) -> (checkpoint path, model)``: a PSD1_P16 CIFAR-10 model with spread weights,
    built once per session on first use (shared with test_export.py, which imports this
    fixture: pytest then holds two definitions, hence the module-level cache)."""
    cache = _CKPT_CACHE

    def get(name: str) -> tuple[Path, torch.nn.Module]:
        if name not in cache:
            model = spread_weights(psconv.create_model(name, "PSD1_P16"))
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.ckpt"
            psconv.save(model, path, dataset="cifar10", epoch=3, test_top1=12.5)
            cache[name] = (path, model)
        return cache[name]

    return get


@pytest.fixture
def vgg_ckpt(sparse_ckpt: Callable[[str], tuple[Path, torch.nn.Module]]) -> tuple[Path, torch.nn.Module]:
    return sparse_ckpt("vgg16")


@pytest.fixture(scope="module")
def cifar(cifar_npz_module: Path) -> dict[str, np.ndarray]:
    with np.load(cifar_npz_module) as z:
        return {"x": z["x_test"][:24].copy(), "y": z["y_test"][:24].copy()}


@pytest.fixture(scope="module")
def cifar_npz_module() -> Path:
    from conftest import shared_file

    return shared_file("cifar10-exact-subset.npz")


# --------------------------------------------------------------------------------------------
# inspect


def test_inspect_matches_profile(vgg_ckpt: tuple[Path, torch.nn.Module]) -> None:
    path, model = vgg_ckpt
    s = deploy.summarize_checkpoint(path)
    prof = psconv.profile(model, (1, 3, 32, 32))
    assert s["model"] == "vgg16" and s["pattern"] == "PSD1_P16" and s["sparse_layers"] == 12
    assert (s["params"], s["dense_params"]) == (prof["params"], prof["dense_params"])
    assert (s["macs"], s["dense_macs"]) == (prof["macs"], prof["dense_macs"])
    assert (
        s["file_bytes"]
        == path.stat().st_size
        == prof["checkpoint_bytes"]
        + len(json.dumps({"dataset": "cifar10", "epoch": 3, "test_top1": 12.5}, separators=(",", ":")))
        - len("{}")
    )
    # The dense size is an estimate from the removed weights: within a kilobyte.
    assert abs(s["dense_file_bytes_approx"] - prof["dense_checkpoint_bytes"]) < 1024
    assert s["classes"] == list(CIFAR10_CLASSES)
    assert s["metrics"] == {"epoch": 3, "test_top1": 12.5}


def test_inspect_uses_recorded_counts_and_classes(tmp_path: Path) -> None:
    model = psconv.create_model("resnet18", "PS1_P9", num_classes=3, image_size=64)
    names = ["n01", "n02", "n03"]
    path = tmp_path / "r.ckpt"
    extra = {"momentum": torch.ones(100)}  # resume state: not part of the model's size
    psconv.save(
        model, path, extra=extra, dataset="tinyimagenet", classes=names, macs=7, dense_params=8, dense_macs=9
    )
    s = deploy.summarize_checkpoint(path)
    assert s["counts_source"] == "meta" and (s["macs"], s["dense_macs"]) == (7, 9)
    assert s["extra_bytes"] == 400 and s["model_bytes_approx"] == s["file_bytes"] - 400
    assert "resume state 400" in deploy.format_summary(s)
    assert s["classes"] == names and s["image_size"] == 64


def test_inspect_cli_text_and_json(
    vgg_ckpt: tuple[Path, torch.nn.Module], capsys: pytest.CaptureFixture
) -> None:
    path, _ = vgg_ckpt
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "PSD1_P16" in text and "5.83x fewer" in text and "test_top1=12.5" in text
    assert main(["inspect", str(path), "--json", "--no-macs"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 2_470_986 and "macs" not in data


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
    dm = deploy.load_for_inference(path)
    files = []
    for i, img in enumerate(cifar["x"][:6]):
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(img).save(files[-1], quality=90)
    result = deploy.predict_files(dm, files, top_k=1)
    decoded = np.stack([np.array(Image.open(f).convert("RGB")) for f in files])
    assert [p["top"][0]["index"] for p in result.predictions] == _reference_top1(model, decoded)
    # A larger, non-square photo: shorter side to 32, centre crop; 32x32 stays untouched.
    big = Image.fromarray(cifar["x"][0]).resize((96, 64))
    big.save(tmp_path / "big.png")
    assert deploy.load_image(tmp_path / "big.png", 32).shape == (32, 32, 3)
    Image.fromarray(cifar["x"][1]).save(tmp_path / "exact.png")
    assert np.array_equal(deploy.load_image(tmp_path / "exact.png", 32), cifar["x"][1])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_predict_other_pixel_modes(tmp_path: Path, mode: str) -> None:
    img = Image.fromarray(np.arange(40 * 50, dtype=np.uint8).reshape(40, 50))
    img.convert(mode).save(tmp_path / "x.png")
    assert deploy.load_image(tmp_path / "x.png", 32).shape == (32, 32, 3)


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
    ckpt = tmp_path / "t.ckpt"
    psconv.save(model, ckpt, dataset="tinyimagenet", classes=["a", "b", "c", "d"])
    dm = deploy.load_for_inference(ckpt)
    result = deploy.predict_files(dm, [tmp_path / "real.JPEG"], top_k=10)
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


def test_classify_refuses_non_finite(vgg_ckpt: tuple[Path, torch.nn.Module]) -> None:
    _, model = vgg_ckpt
    x = torch.zeros(2, 3, 32, 32)
    values, indices = deploy.classify(model, x, top_k=20)
    assert values.shape == (2, 10) and torch.allclose(values.sum(1), torch.ones(2))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            deploy.classify(model, x)


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
