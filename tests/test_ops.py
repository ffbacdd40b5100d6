"""The kernels as PyTorch operators: opcheck, torch.compile without graph breaks, torch.export."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from conftest import needs_kernels

import psconv
from psconv import kernels
from psconv.kernels import ops


@pytest.fixture(autouse=True)
def _fast_backend(keep_backend):
    """These tests are about the operators: every sparse layer runs them, whatever 'auto' would pick."""
    kernels.set_backend("fast")


def _spread(model: torch.nn.Module) -> torch.nn.Module:
    """O(1) logits (the paper's init gives ~1e-20, which any comparison passes)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() else 0.1))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
    return model


@needs_kernels
@pytest.mark.parametrize(
    ("pattern", "ci", "co", "stride", "bias", "relu"),
    [
        ("PS4_P4", 16, 16, 1, True, False),
        ("PSD1_P16", 19, 32, 2, False, True),
        ("PS1_P9", 32, 24, 1, True, True),
    ],
)
def test_opcheck(pattern: str, ci: int, co: int, stride: int, bias: bool, relu: bool) -> None:
    g = torch.Generator().manual_seed(1)
    nnz = int(psconv.pattern_mask(pattern, co, ci).sum())
    x = torch.randn(2, ci, 7, 6, generator=g, requires_grad=True)
    values = torch.randn(nnz, generator=g, requires_grad=True)
    b = torch.randn(co, generator=g, requires_grad=True) if bias else None
    args = (x, values, b, pattern, 0, co, [stride, stride], [1, 1], relu, False)
    torch.library.opcheck(ops.conv, args)
    out = ops.conv(*args)
    # The gradients are differentiable operators too (second derivatives): inputs with grads.
    grad = torch.randn(out.shape, generator=g, requires_grad=True)
    torch.library.opcheck(ops.conv_grad_input, (grad, values, pattern, 0, ci, [7, 6], [stride] * 2, [1, 1]))
    torch.library.opcheck(ops.conv_grad_weight, (x, grad, pattern, 0, nnz, [stride] * 2, [1, 1]))


@needs_kernels
@pytest.mark.parametrize(("pattern", "ci", "co", "stride"), [("PSD2_P8", 16, 16, 1), ("PS1_P9", 17, 9, 2)])
def test_second_derivatives_equal_the_reference(pattern: str, ci: int, co: int, stride: int) -> None:
    """A gradient penalty (gradients of gradients) through the kernels equals the reference's."""
    layer = psconv.PSConv2d(ci, co, pattern=pattern, stride=stride)
    x0 = torch.randn(2, ci, 9, 8)
    results = []
    for backend in ("reference", "fast"):
        kernels.set_backend(backend)
        layer.zero_grad()
        x = x0.clone().requires_grad_(True)
        loss = torch.relu(layer(x)).square().sum()
        gx, gw = torch.autograd.grad(loss, (x, layer.weight_values), create_graph=True)
        (gx.square().sum() + gw.sin().sum()).backward()
        results.append((gx.detach(), gw.detach(), x.grad, layer.weight_values.grad.clone()))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@needs_kernels
@pytest.mark.parametrize("backend", ["fast", "auto"])
@pytest.mark.parametrize("mode", ["train", "eval", "no_grad"])
def test_compile_captures_a_sparse_resnet_whole(mode: str, backend: str) -> None:
    """'auto' (the default) included: its per-layer decision must not call into the library
    while dynamo traces."""
    kernels.set_backend(backend)
    torch._dynamo.reset()
    model = _spread(psconv.create_model("resnet18", "PS1_P9")).train(mode == "train")
    x = torch.randn(2, 3, 32, 32)
    with torch.set_grad_enabled(mode != "no_grad"):
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@needs_kernels
def test_compile_captures_the_inference_form_after_eager_calls() -> None:
    """Bound eager calls (psconv.kernels.bound) and the 1x1 matrix products stay traceable."""
    torch._dynamo.reset()
    fast = psconv.optimize_for_inference(_spread(psconv.create_model("resnet18", "PSD4_P8")).eval())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        eager = [fast(x), fast(x)]
        explained = torch._dynamo.explain(fast)(x)
        compiled = torch.compile(fast)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch.testing.assert_close(compiled, eager[1], rtol=1e-4, atol=1e-4)


@needs_kernels
def test_compiled_model_equals_eager_in_both_modes() -> None:
    torch._dynamo.reset()
    model = _spread(psconv.create_model("vgg16", "PSD2_P8")).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))
    model.train()
    eager_grads = torch.autograd.grad(model(x).square().sum(), model.features[3].weight_values)
    model.train()
    compiled_grads = torch.autograd.grad(compiled(x).square().sum(), model.features[3].weight_values)
    # Train-mode BatchNorm over 3 images divides by small batch deviations, and the compiled
    # graph sums its statistics in another order: a few gradients move by ~0.3% of the largest.
    scale = float(eager_grads[0].abs().max())
    torch.testing.assert_close(compiled_grads[0], eager_grads[0], rtol=1e-3, atol=5e-3 * scale)


@needs_kernels
def test_export_round_trips_with_a_free_batch(tmp_path) -> None:
    model = _spread(psconv.create_model("resnet18", "PSD1_P16")).eval()
    x = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=512)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    assert any(node.target is torch.ops.psconv.conv.default for node in program.graph.nodes)
    path = tmp_path / "m.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        for b in (1, 5):
            xb = torch.randn(b, 3, 32, 32)
            torch.testing.assert_close(loaded(xb), model(xb), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("inference_form", [False, True], ids=["model", "optimized"])
def test_jit_trace_records_the_operator(tmp_path, inference_form: bool) -> None:
    """torch.jit.trace sees the operator (not a direct call it cannot record): the trace keeps
    the sparse kernels, runs any batch size and survives save and load."""
    model = _spread(psconv.create_model("resnet18", "PSD1_P16")).eval()
    model = psconv.optimize_for_inference(model) if inference_form else model
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks, batch-generic here
        traced = torch.jit.trace(model, torch.randn(2, 3, 32, 32))
    assert "psconv::conv" in str(traced.inlined_graph)
    torch.jit.save(traced, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    with torch.no_grad():
        x = torch.randn(3, 3, 32, 32)
        expected = model(x)
        # Float rounding only: the TorchScript executor may order the shortcut products' sums
        # differently (logits here are ~1e5, so 1e-5 relative is a few units).
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@needs_kernels
@pytest.mark.parametrize(
    ("pattern", "packing"), [("PSD2_P8", "auto"), ("PS1_P9", "pair"), ("PS1_P9", "diagonal")]
)
def test_fused_epilogue_bias_residual_relu(pattern: str, packing: str) -> None:
    kernels.set_packing(packing)
    try:
        g = torch.Generator().manual_seed(2)
        layer = psconv.PSConv2d(32, 48, pattern=pattern)
        with torch.no_grad():
            layer.weight_values.normal_(generator=g)
            layer.bias.normal_(generator=g)
        x = torch.randn(2, 32, 9, 7, generator=g)
        res = torch.randn(2, 48, 9, 7, generator=g)
        args = (x, layer.weight_values, layer.bias, pattern, 0, 48, [1, 1], [1, 1])
        with torch.no_grad():
            fused = ops.conv(*args, True, True, res)
            expected = torch.relu(layer.reference_forward(x) + res)
            torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(
                ops.conv(*args, False, True, None), layer.reference_forward(x), rtol=1e-4, atol=1e-4
            )
            res[0, 0, 0, 0] = float("nan")  # the fused ReLU keeps NaN, as torch.relu does
            assert torch.isnan(ops.conv(*args, True, True, res)[0, 0, 0, 0])
        with pytest.raises(ValueError, match="residual of shape"):
            ops.conv(*args, True, True, res[:, :, :4])
    finally:
        kernels.set_packing("auto")


def test_struct_layout_and_abi_match_the_header() -> None:
    """``PscArgs`` mirrors ``psc_args`` field for field, and the ABI versions agree."""
    import re
    from pathlib import Path

    from psconv.kernels import binding

    header = (Path(__file__).resolve().parents[1] / "csrc" / "psconv_kernels.h").read_text()
    body = re.search(r"typedef struct \{(.*?)\} psc_args;", header, re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if decl:
            names += [re.sub(r"\[.*\]", "", n).strip().lstrip("*") for n in decl.split(",")]
            names[-len(decl.split(",")) :] = [
                n.split()[-1].lstrip("*") for n in names[-len(decl.split(",")) :]
            ]
    assert names == [name for name, _ in binding.PscArgs._fields_]
    assert int(re.search(r"#define PSC_ABI_VERSION (\d+)", header).group(1)) == binding.ABI_VERSION
    if binding.available():
        assert binding.lib.psc_abi_version() == binding.ABI_VERSION


@needs_kernels
def test_threads_sharing_a_layer_get_their_own_outputs() -> None:
    """A server may run one model from several Python threads (ctypes releases the GIL): each
    call fills its own argument block, so no thread's kernel reads another's pointers."""
    layer = psconv.PSConv2d(32, 32, pattern="PSD2_P8").eval()
    xs = [torch.randn(1, 32, 8, 8) for _ in range(4)]
    with torch.no_grad():
        want = [layer(x) for x in xs]
        plan = ops.plans_for("PSD2_P8", 32, 32, 0).fwd
        geo = ops.geometry(0, 8, 8, (1, 1), (1, 1))
        first, second = ops._args(plan, geo, 1, 32, 32), ops._args(plan, geo, 1, 32, 32)
    assert first is not second and bytes(first) == bytes(second)
    wrong = []

    def work(i: int) -> None:
        with torch.no_grad():
            wrong.extend(i for _ in range(300) if not torch.equal(layer(xs[i]), want[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
