"""``psconv export``: ONNX (onnxruntime) and TorchScript round trips equal psconv's outputs."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import psconv
from psconv import export, predict
from psconv.cli import main
from psconv.data import DeviceData

MODELS = ("vgg16", "resnet18")


def _have_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


needs_onnx = pytest.mark.skipif(
    not _have_onnx(), reason="optional onnx/onnxruntime not installed (pip install 'psconv[onnx]')"
)


@pytest.fixture(scope="module")
def exported(sparse_ckpt: Callable, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:  # noqa: F811
    """The shared sparse checkpoint of each model, exported once to each available format."""
    out: dict[str, dict] = {}
    for name in MODELS:
        ckpt, model = sparse_ckpt(name)
        folder = tmp_path_factory.mktemp(name)
        loaded = predict.load_for_inference(ckpt)  # once for both formats
        files = {}
        for fmt in ("torchscript", "onnx") if _have_onnx() else ("torchscript",):
            files[fmt] = folder / f"{name}.{fmt}"
            # The export's own check (one run of the file) is exercised once; the tests below
            # compare far more inputs anyway.
            verify = name == "resnet18"
            files[f"{fmt}-result"] = export.export_model(loaded, fmt, files[fmt], verify=verify)
        out[name] = {"model": model, "ckpt": ckpt, **files}
    return out


def _inputs() -> list[torch.Tensor]:
    """Random normalised batches and real CIFAR-10 test images (the exact official pixels)."""
    from conftest import shared_file

    g = torch.Generator().manual_seed(7)
    batches = [torch.randn(1, 3, 32, 32, generator=g), torch.randn(5, 3, 32, 32, generator=g) * 2]
    with np.load(shared_file("cifar10-exact-subset.npz")) as z:
        images = z["x_test"][100:116]
    data = DeviceData(images, np.zeros(len(images), dtype=np.int64), "cpu", pad=0)
    batches.append(data.normalize(data.x))
    return batches


def _check_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert theirs.shape == ours.shape
    scale = float(ours.abs().max())
    assert scale > 0.1  # real logits, not ~0 from the paper's init
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(theirs.argmax(1), ours.argmax(1))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_onnx)])
def test_round_trip_equals_ours(exported: dict[str, dict], name: str, fmt: str) -> None:
    entry = exported[name]
    run = export.load_exported(entry[fmt], fmt)
    for x in _inputs():
        with torch.no_grad():
            ours = entry["model"](x)
        _check_same(ours, run(x))
    if name == "resnet18":
        assert entry[f"{fmt}-result"]["max_abs_diff"] < 1e-3


@needs_onnx
@pytest.mark.parametrize("name", MODELS)
def test_onnx_metadata_and_dense_graph(exported: dict[str, dict], name: str) -> None:
    import onnx

    entry = exported[name]
    proto = onnx.load(str(entry["onnx"]))
    props = {p.key: p.value for p in proto.metadata_props}
    prof = psconv.profile(entry["model"], (1, 3, 32, 32), file_size=False)
    assert props["psconv.pattern"] == "PSD1_P16" and props["psconv.model"] == name
    assert int(props["psconv.params"]) == prof["params"] and int(props["psconv.macs"]) == prof["macs"]
    meta = json.loads(props["psconv.json"])
    assert meta["dense_macs"] == prof["dense_macs"] and meta["classes"][0] == "airplane"
    assert meta["mean"] == [0.4914, 0.4822, 0.4465] and meta["metrics"] == {"epoch": 3, "test_top1": 12.5}
    ops = {node.op_type for node in proto.graph.node}
    assert "Conv" in ops and not ops & {"ScatterND", "ScatterElements"}  # dense-equivalent graph
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_metadata(exported: dict[str, dict], name: str) -> None:
    entry = exported[name]
    with zipfile.ZipFile(entry["torchscript"]) as z:
        (member,) = [n for n in z.namelist() if n.endswith("extra/psconv.json")]
        meta = json.loads(z.read(member))
    assert meta["pattern"] == "PSD1_P16" and meta["model"] == name
    assert meta["params"] == entry["torchscript-result"]["params"]
    assert meta["macs"] < meta["dense_macs"] and meta["image_size"] == 32


def test_export_overwrite_policy(exported: dict[str, dict], tmp_path: Path, capsys) -> None:
    ckpt = exported["resnet18"]["ckpt"]
    out = tmp_path / "a" / "b" / "model.pt"
    argv = ["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]
    assert main([*argv, "--json", "--no-verify"]) == 0  # creates the parent folders
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and result["file_bytes"] == out.stat().st_size
    out.write_bytes(b"precious")
    assert main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    # Never the checkpoint itself, even with --force; never a directory.
    before = ckpt.read_bytes()
    for target in (ckpt, out.parent):
        assert main([*argv[:-1], str(target), "--force"]) == 2
        assert "psconv: error:" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    # --force replaces atomically (the writer behind the command, without a slow export).
    export._write_new_file(out, b"new", force=True, protect=ckpt)
    assert out.read_bytes() == b"new"
    with pytest.raises(ValueError, match="already exists"):
        export._write_new_file(out, b"newer", force=False, protect=ckpt)
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt"]  # no temporary left behind
