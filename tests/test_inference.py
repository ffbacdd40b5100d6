"""The inference form: folded BatchNorm, fused epilogues, same outputs, original untouched."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import psconv
import psconv.cli
from psconv.inference import FusedConv2d, FusedPSConv2d, PointwiseMatmul, optimize_for_inference

REPO = Path(__file__).resolve().parents[1]


def _trained_like(model: nn.Module) -> nn.Module:
    """O(1) weights and non-trivial BatchNorm statistics, as after training."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("vgg16", "PSD1_P16"),
        ("resnet18", "PS1_P9"),
        ("resnet18", "PSD4_P8"),
        ("mobilenetv2", "dense"),
        ("shufflenet", "dense"),
    ],
)
def test_same_outputs_folded_and_fused(name: str, pattern: str) -> None:
    model = _trained_like(psconv.create_model(name, pattern))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # every BN folded
    graph = fast.graph
    modules = dict(fast.named_modules())
    relus_after_sparse = [
        n for n in graph.nodes
        if "relu" in str(n.target) and any(isinstance(modules.get(str(a.target)), psconv.PSConv2d) for a in n.all_input_nodes)
    ]  # fmt: skip
    assert not relus_after_sparse  # every ReLU after a sparse conv is fused into it
    if name == "resnet18":  # relu(bn2(conv2(x)) + shortcut) is one fused sparse conv per block
        fused = [m for m in fast.modules() if isinstance(m, FusedPSConv2d)]
        assert len(fused) == 16 and all(m.relu for m in fused)
        assert sum(1 for n in graph.nodes if n.op == "call_module" and len(n.args) == 2) == 8


@pytest.mark.parametrize("stride", [1, 2, (2, 1)])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_as_a_matrix_product(stride: int | tuple[int, int], layout: str, bias: bool) -> None:
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(24, 40, 1, stride=stride, bias=bias)
    with torch.no_grad():
        conv.weight.normal_(generator=g)
    x = torch.randn(2, 24, 9, 7, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert PointwiseMatmul.applies_to(conv)
    got = PointwiseMatmul(conv)(x)
    with torch.no_grad():
        expected = conv(x)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 8, 3),
        nn.Conv2d(8, 8, 1, groups=2),
        nn.Conv2d(8, 8, 1, padding=1),
        nn.Conv2d(8, 8, 1, dilation=2),
    ],
    ids=["3x3", "grouped", "padded", "dilated"],
)
def test_only_plain_pointwise_convs_become_products(conv: nn.Conv2d) -> None:
    assert not PointwiseMatmul.applies_to(conv)


def test_resnet_shortcuts_become_products() -> None:
    fast = optimize_for_inference(_trained_like(psconv.create_model("resnet18", "PSD4_P8")))
    assert sum(isinstance(m, PointwiseMatmul) for m in fast.modules()) == 3
    assert sum(type(m) is nn.Conv2d for m in fast.modules()) == 1  # the first layer


def test_untraceable_model_is_refused_with_the_reason() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="torch.fx cannot trace this model"):
        optimize_for_inference(Branchy())


class PadSame(nn.Conv2d):
    """Like timm's Conv2dSame: pads by the input's size, Python control flow that torch.fx
    cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = nn.functional.pad(x, (1, 1, 1, 1))
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


def test_submodules_fx_cannot_trace_are_kept_whole_and_the_rest_optimised() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        PadSame(16, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        psconv.PSConv2d(16, 16, pattern="PSD2_P8", bias=False), nn.BatchNorm2d(16), nn.ReLU(),
    )  # fmt: skip
    model = _trained_like(model)
    fast = optimize_for_inference(model)
    for size in (8, 9):  # both branches of PadSame's control flow
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            expected = model(x)
            torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    kinds = [type(m).__name__ for m in fast.modules()][1:]
    # The stem's and the sparse conv's BatchNorms are folded; PadSame's is not (its forward is its own).
    assert kinds.count("BatchNorm2d") == 1 and "PadSame" in kinds and "FusedPSConv2d" in kinds


@pytest.mark.parametrize(
    "bn",
    [nn.BatchNorm2d(16, affine=False), nn.BatchNorm2d(16, track_running_stats=False)],
    ids=["not affine", "batch statistics"],
)
def test_batchnorm_without_affine_or_running_statistics(bn: nn.BatchNorm2d) -> None:
    model = _trained_like(nn.Sequential(nn.Conv2d(3, 16, 3), psconv.PSConv2d(16, 16, pattern="PS1_P9"), bn))
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # Running statistics fold; a BatchNorm that normalises by the batch stays.
    assert any(type(m) is nn.BatchNorm2d for m in fast.modules()) == (not bn.track_running_stats)


def test_pt2_export_reloads_in_a_fresh_process(tmp_path: Path) -> None:
    model = _trained_like(psconv.create_model("resnet18", "PSD2_P8"))
    ckpt = psconv.save(model, tmp_path / "m.safetensors", dataset="cifar10")
    out = tmp_path / "m.pt2"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = psconv.cli.main(["export", "--checkpoint", str(ckpt), "--format", "pt2", "--out", str(out)])
    assert status == 0
    # A user's export prints no warning (torch's archive warned about the channels-last stem).
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, psconv\n"
        f"m = torch.export.load({str(out)!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(
        torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())
    )


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_dense_fused_form_equals_the_sparse_one(relu: bool, stride: int) -> None:
    """What an exported program runs for a layer left on oneDNN: the same fused output."""
    torch.manual_seed(0)
    layer = FusedPSConv2d.from_layer(psconv.PSConv2d(16, 24, stride=stride, padding=1, pattern="PSD2_P8"))
    with torch.no_grad():
        layer.bias = nn.Parameter(torch.randn(24))
    layer.relu = relu
    dense = FusedConv2d(layer)
    x = torch.randn(3, 16, 9, 9)
    residual = torch.randn(3, 24, (9 - 1) // stride + 1, (9 - 1) // stride + 1)
    with torch.no_grad():
        for res in (None, residual):
            torch.testing.assert_close(dense(x, res), layer(x, res), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in dense.parameters())


def test_load_program_calls_the_kernels_directly_with_equal_outputs(tmp_path: Path) -> None:
    from psconv.kernels.ops import conv_direct

    model = _trained_like(psconv.create_model("vgg16", "PSD1_P16"))
    ckpt = psconv.save(model, tmp_path / "m.safetensors", dataset="cifar10")
    out = tmp_path / "m.pt2"
    backend = psconv.get_backend()
    psconv.set_backend("fast")  # every sparse layer calls the operator, whatever the CPU
    try:
        assert (
            psconv.cli.main(["export", "--checkpoint", str(ckpt), "--format", "pt2", "--out", str(out)]) == 0
        )
    finally:
        psconv.set_backend(backend)
    standard, direct = torch.export.load(out).module(), psconv.load_program(out)
    targets = [node.target for node in direct.graph.nodes if node.op == "call_function"]
    assert targets.count(conv_direct) == 12 and torch.ops.psconv.conv.default not in targets
    with torch.no_grad():
        for b in (1, 3):
            x = torch.randn(b, 3, 32, 32)
            torch.testing.assert_close(direct(x), standard(x), rtol=0, atol=0)
    # A call that needs gradients takes the operator, which has them.
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    (g_direct,) = torch.autograd.grad(direct(x).sum(), x)
    (g_standard,) = torch.autograd.grad(standard(x).sum(), x)
    torch.testing.assert_close(g_direct, g_standard)


def test_load_program_refuses_what_export_did_not_write(tmp_path: Path) -> None:
    ckpt = psconv.save(psconv.create_model("vgg16", "PSD1_P16"), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"is not a program written by `psconv export --format pt2`"):
        psconv.load_program(ckpt)
    with pytest.raises(FileNotFoundError, match="load_program: no file"):
        psconv.load_program(tmp_path / "missing.pt2")
