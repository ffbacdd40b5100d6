"""The compiled engine against the reference path (the oracle): every family, shape, stride,
packing and thread count, forward and both gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_kernels, run_python

from psconv import kernels
from psconv.layers import PSConv2d

FAMILIES = ["PS4_P4", "PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9", "PS2_P6", "pSC4", "pSC1", "dense"]


pytestmark = pytest.mark.usefixtures("keep_backend")


@pytest.fixture(params=["diagonal", "pair"])
def packing(request):
    """Runs a test with each weight packing forced (pair where the mask allows it)."""
    kernels.set_packing(request.param)
    yield request.param
    kernels.set_packing("auto")


def _reference64(layer: PSConv2d, x: torch.Tensor, gout: torch.Tensor):
    """Forward and gradients in float64 with the masked dense kernel (independent of the engine)."""
    x64 = x.detach().double().requires_grad_(True)
    v64 = layer.weight_values.detach().double().requires_grad_(True)
    b64 = layer.bias.detach().double().requires_grad_(True) if layer.bias is not None else None
    dense = torch.zeros(layer.mask.numel(), dtype=torch.float64).index_put((layer.flat_index,), v64)
    y = F.conv2d(x64, dense.view(layer.weight_shape), b64, layer.stride, layer.padding)
    inputs = [x64, v64] + ([b64] if b64 is not None else [])
    grads = torch.autograd.grad(y, inputs, gout.double())
    return y, grads


def _fast(layer: PSConv2d, x: torch.Tensor, gout: torch.Tensor):
    kernels.set_backend("fast")
    x = x.detach().requires_grad_(True)
    y = layer(x)
    inputs = [x, layer.weight_values] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(y, inputs, gout)
    return y, grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / (b.abs().max() + 1e-30))


def _check(pattern, ci, co, hw, stride=1, padding=1, batch=2, bias=True, seed=0, x=None):
    torch.manual_seed(seed)
    layer = PSConv2d(ci, co, 3, stride, padding, bias=bias, pattern=pattern, seed=seed)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    if x is None:
        x = torch.randn(batch, ci, *hw)
    assert kernels.fast_supported(layer, x) is None
    with torch.no_grad():
        shape = layer.reference_forward(x).shape
    gout = torch.randn(shape)
    y_ref, g_ref = _reference64(layer, x, gout)
    y, g = _fast(layer, x, gout)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-4, "forward"
    names = ["grad_input", "grad_weight", "grad_bias"]
    for name, a, b in zip(names, g, g_ref):
        assert a.shape == b.shape, name
        assert _rel(a, b) < 1e-4, name


@needs_kernels
@pytest.mark.parametrize("pattern", FAMILIES)
def test_families_odd_channels(pattern):
    _check(pattern, 17, 70, (9, 7))
    _check(pattern, 3, 5, (5, 6), batch=1)


@needs_kernels
@pytest.mark.parametrize("pattern", ["PS4_P4", "PSD1_P16", "PS1_P9", "pSC2"])
def test_stride2_and_padding(pattern):
    _check(pattern, 32, 48, (8, 8), stride=2)
    _check(pattern, 16, 24, (7, 9), stride=2)
    _check(pattern, 20, 16, (7, 7), stride=1, padding=0)
    _check(pattern, 16, 16, (9, 8), stride=2, padding=0, bias=False)


@needs_kernels
@pytest.mark.parametrize("pattern", ["PS1_P9", "PS4_P4", "PSD2_P8"])
@pytest.mark.parametrize(("ci", "stride"), [(64, 1), (128, 1), (64, 2), (256, 1)])
def test_fixed_stride_tiles(pattern, ci, stride):
    # Channel counts whose pixel stride (ci * stride floats) has a specialised full-tile
    # kernel; rows of 20 pixels hold full tiles of every width (16, 12, 8, 6, 4) and remainders.
    _check(pattern, ci, 64 if ci == 256 else ci, (6, 20), stride=stride, batch=2)


@needs_kernels
@pytest.mark.parametrize("pattern", ["PS1_P9", "PS2_P6", "PSD4_P8", "PS4_P4"])
@pytest.mark.parametrize(
    ("ci", "co", "hw", "stride", "batch", "bias"),
    [
        (17, 70, (9, 7), 1, 2, True),
        (3, 5, (5, 6), 1, 1, False),
        (64, 64, (6, 20), 1, 2, False),
        (64, 128, (8, 9), 2, 1, True),
        (128, 128, (4, 17), 1, 2, True),
        (256, 40, (3, 3), 1, 3, False),
    ],
)
def test_both_packings(packing, pattern, ci, co, hw, stride, batch, bias):
    _check(pattern, ci, co, hw, stride=stride, batch=batch, bias=bias)


@needs_kernels
def test_pair_packing_plan():
    from psconv.kernels.plan_builder import additive_period, build_weight_plan, pair_lanes

    layer = PSConv2d(64, 64, pattern="PS1_P9")
    mask = layer.mask.reshape(64, 64, 9).numpy().astype(bool)
    assert additive_period(mask) == 9
    assert additive_period(PSConv2d(64, 64, pattern="pSC4").mask.reshape(64, 64, 9).numpy()) is None
    lanes = pair_lanes(64, 9)
    # Every filter in exactly one lane; even lanes class K, odd lanes class K - 1.
    assert sorted(lanes[lanes >= 0].tolist()) == list(range(64))
    for blk in lanes:
        ev, od = blk[0::2][blk[0::2] >= 0] % 9, blk[1::2][blk[1::2] >= 0] % 9
        assert len(set(ev.tolist())) <= 1 and len(set(od.tolist())) <= 1
        if len(ev) and len(od):
            assert (ev[0] - od[0]) % 9 == 1
    flat = mask.reshape(-1)
    vidx = np.full(flat.shape, -1)
    vidx[flat] = np.arange(flat.sum())
    plan = build_weight_plan(mask, vidx.reshape(mask.shape), bcast=2)
    # One tap per entry (every lane shares it): 65 channel pairs (-1, 0) .. (63, 64) for the
    # four paired blocks, 64 for the last class alone (its pair (-1, 0) has no lane).
    assert len(plan.groups) == 5 and len(plan.ents) == 4 * 65 + 64
    assert plan.executed_macs_per_pixel == (4 * 65 + 64) * 16
    for grp in plan.groups:  # a channel pair listed under two taps would appear twice
        ds = plan.ents[grp[7] : grp[8], 1]
        assert len(set(ds.tolist())) == len(ds)
    # The packed weights hold every kept weight exactly once.
    kept = np.sort(plan.gather[plan.gather < plan.needed_macs_per_pixel])
    assert (kept == np.arange(plan.needed_macs_per_pixel)).all()
    with pytest.raises(ValueError, match="periodic in a \\+ b"):
        build_weight_plan(PSConv2d(16, 16, pattern="pSC2").mask.reshape(16, 16, 9).numpy(), vidx, bcast=2)


@pytest.mark.parametrize("lanes", [4, 8])
def test_part_major_order_reads_each_part_contiguously(lanes):
    from psconv.kernels.plan_builder import build_weight_plan, part_major_order

    mask = PSConv2d(40, 48, pattern="PSD4_P8").mask.reshape(48, 40, 9).numpy().astype(bool)
    vidx = np.full(mask.shape, -1)
    vidx[mask] = np.arange(mask.sum())
    plan = build_weight_plan(mask, vidx)
    order = part_major_order(plan.groups, plan.total, lanes)
    assert (np.sort(order) == np.arange(plan.total)).all()
    assert (part_major_order(plan.groups, plan.total, 16) == np.arange(plan.total)).all()
    # Float q of part h, entry e, block f, lane j of a group sits at [e][f][h * lanes + j].
    for nf, *_, e0, e1, woff16 in plan.groups.tolist():
        n, base = e1 - e0, woff16 * 16
        for h, e, f, j in [
            (0, 0, 0, 0),
            (16 // lanes - 1, n - 1, nf - 1, lanes - 1),
            (1, n // 2, nf // 2, 1),
        ]:
            q = base + ((h * n + e) * nf + f) * lanes + j
            assert order[q] == base + (e * nf + f) * 16 + h * lanes + j
    with pytest.raises(ValueError, match="lanes must divide 16, got 3"):
        part_major_order(plan.groups, plan.total, 3)


@needs_kernels
def test_auto_packing_choice():
    kernels.set_packing("auto")
    for pattern, ch, expected in [
        ("PS1_P9", 64, 2),
        ("PS1_P9", 256, 2),
        ("PSD1_P16", 64, 0),
        ("PS4_P4", 128, 0),
    ]:
        layer = PSConv2d(ch, ch, pattern=pattern)
        kernels.fast_forward(layer, torch.randn(1, ch, 4, 4))
        assert kernels.layer_plans(layer).fwd.bcast == expected, (pattern, ch)
        assert kernels.packing_of(layer) == ("pair" if expected else "diagonal")
    with pytest.raises(ValueError, match="packing must be one of"):
        kernels.set_packing("bogus")


@needs_kernels
@pytest.mark.parametrize("pattern", ["PSD4_P8", "PS1_P9"])
@pytest.mark.parametrize("stride", [1, 2])
def test_batch_split_into_image_blocks(pattern, stride):
    # The AVX2 build runs a batch in blocks of about 1 MB of input (4 images of 64 x 32 x 32
    # here), every pixel class of a block before the next: 9 images make blocks of 4, 4 and 1.
    _check(pattern, 64, 64, (32, 32), stride=stride, batch=9)


@needs_kernels
@pytest.mark.parametrize("pattern", ["PSD4_P8", "PS1_P9"])
def test_few_work_items_split_into_half_chunks(pattern):
    # A stride-2 layer at batch 1 has 4 pixel classes and 6 chunks of 96 pixels: the AVX2
    # build runs it in chunks of 48 (its 225 interior pixels: four full chunks and a partial).
    _check(pattern, 64, 128, (32, 32), stride=2, batch=1)


@needs_kernels
@pytest.mark.parametrize("pattern", ["PSD2_P8", "PS1_P9"])
def test_large_output_uses_streaming_stores_correctly(pattern):
    # Outputs above 16 MiB are written with non-temporal stores (forward and grad-input alike).
    torch.manual_seed(0)
    layer = PSConv2d(64, 64, pattern=pattern)
    x = torch.randn(3, 64, 150, 150, requires_grad=True)
    assert 3 * 64 * 150 * 150 * 4 > 16 << 20
    kernels.set_backend("fast")
    y = layer(x)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    kernels.set_backend("reference")
    y_ref = layer(x)
    (gx_ref,) = torch.autograd.grad(y_ref, x, torch.ones_like(y_ref))
    assert _rel(y, y_ref) < 1e-4
    assert _rel(gx, gx_ref) < 1e-4


@needs_kernels
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (4, 4), (3, 5)])
def test_small_images(hw):
    _check("PSD2_P8", 64, 40, hw, batch=3)
    _check("PS4_P4", 128, 16, hw, batch=1)


@needs_kernels
@pytest.mark.parametrize("hw", [(4, 4), (6, 5)])
def test_large_weight_gradient_tiles(hw):
    # Packed gradients of a megabyte; 4x4 images (16 output pixels) run position-major in the
    # weight-gradient kernel, with runs that cross images.
    _check("PSD4_P8", 256, 256, hw, batch=3, bias=False)
    _check("PS1_P9", 256, 288, hw, stride=1, batch=2, bias=False)


@needs_kernels
@pytest.mark.parametrize("cin, cout", [(200, 24), (24, 512), (384, 40)])
def test_weight_gradient_tile_widths(cin, cout):
    # The AVX2 weight gradient sizes its tiles by the widest channel count (16 KB of a pixel
    # row: 20, 8 and 10 pixels here), so tiles end mid-row and mid-image.
    _check("PSD4_P8", cin, cout, (7, 5), batch=2, bias=False)
    _check("PSD2_P8", cin, cout, (4, 4), batch=3, bias=False)


@needs_kernels
def test_random_shapes():
    rng = np.random.default_rng(1)
    pats = ["PS4_P4", "PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9", "pSC2", "PS2_P3[01,34,78]"]
    for i in range(10):
        ci, co = (int(v) for v in rng.integers(1, 90, size=2))
        hw = tuple(int(v) for v in rng.integers(1, 12, size=2))
        stride = int(rng.integers(1, 3))
        _check(pats[i % len(pats)], ci, co, hw, stride=stride, batch=int(rng.integers(1, 4)), seed=i)


@needs_kernels
def test_non_contiguous_and_channels_last_inputs():
    base = torch.randn(2, 40, 12, 22)
    _check("PSD4_P8", 20, 24, (12, 11), x=base[:, ::2, :, ::2])
    _check("PS4_P4", 22, 18, (12, 22), x=base.transpose(2, 3).contiguous().transpose(2, 3)[:, 9:31])
    _check("PS1_P9", 40, 40, (12, 22), x=base.contiguous(memory_format=torch.channels_last))


@needs_kernels
def test_output_is_standard_tensor_and_grad_weight_order():
    layer = PSConv2d(32, 32, pattern="PSD2_P8")
    x = torch.randn(2, 32, 6, 6)
    kernels.set_backend("fast")
    y = layer(x)
    assert y.shape == (2, 32, 6, 6) and y.dtype == torch.float32
    kernels.set_backend("reference")
    assert torch.allclose(y.contiguous(), layer(x), atol=1e-5)
    # grad-weight lands in weight_values order: compare with the masked dense gradient
    kernels.set_backend("fast")
    layer.zero_grad()
    layer(x).square().sum().backward()
    fast_grad = layer.weight_values.grad.clone()
    conv = layer.to_conv()
    F.conv2d(x, conv.weight, conv.bias, 1, 1).square().sum().backward()
    dense_grad = conv.weight.grad.reshape(-1)[layer.flat_index]
    assert _rel(fast_grad, dense_grad) < 1e-4


@needs_kernels
def test_training_steps_match_reference():
    torch.manual_seed(0)

    def make():
        torch.manual_seed(3)
        return torch.nn.Sequential(
            PSConv2d(16, 32, pattern="PSD1_P16"),
            torch.nn.BatchNorm2d(32),
            torch.nn.ReLU(),
            PSConv2d(32, 32, stride=2, pattern="PS4_P4"),
        )

    data = torch.randn(4, 16, 8, 8)
    results = []
    for backend in ("reference", "fast"):
        kernels.set_backend(backend)
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            model(data).square().mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        # biases feeding a BatchNorm get ~1e-10 gradients: judge them on an absolute scale
        assert float((a - b).abs().max()) <= 1e-4 * max(float(b.abs().max()), 1e-3)


@needs_kernels
def test_packed_weights_cached_for_inference_only():
    kernels.set_backend("fast")
    layer = PSConv2d(16, 16, pattern="PS4_P4")
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        layer(x)
    fwd = kernels.layer_plans(layer).fwd
    assert id(layer.weight_values) in fwd.packed_cache
    with torch.no_grad():
        layer.weight_values.mul_(-2.0)  # in place, like an optimizer step: the packing is stale
    layer(x).sum().backward()  # training: values change every step, nothing is kept
    assert id(layer.weight_values) not in fwd.packed_cache
    assert not kernels.layer_plans(layer).bwd.packed_cache
    with torch.no_grad():
        y = layer(x)
    assert _rel(y, layer.reference_forward(x)) < 1e-5
    # Another tensor at a recycled address never gets this one's packing.
    other = PSConv2d(16, 16, pattern="PS4_P4")
    with torch.no_grad():
        assert _rel(other(x), other.reference_forward(x)) < 1e-5


@needs_kernels
def test_generic_isa_path():
    code = (
        "import torch; from psconv import kernels; from psconv.layers import PSConv2d\n"
        "from psconv.kernels import binding; assert binding.isa() == 'generic'\n"
        "kernels.set_backend('fast'); torch.manual_seed(0)\n"
        "ok = True\n"
        "for pat, s in (('PSD4_P8', 1), ('PS1_P9', 2), ('pSC2', 1), ('PS2_P6', 1)):\n"
        "    l = PSConv2d(20, 36, stride=s, pattern=pat); x = torch.randn(2, 20, 7, 7, requires_grad=True)\n"
        "    y = l(x); y.square().sum().backward(); gx, gw = x.grad.clone(), l.weight_values.grad.clone()\n"
        "    kernels.set_backend('reference'); x.grad = None; l.weight_values.grad = None\n"
        "    r = l(x); r.square().sum().backward(); kernels.set_backend('fast')\n"
        "    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())\n"
        "    ok &= rel(y, r) < 1e-4 and rel(gx, x.grad) < 1e-4 and rel(gw, l.weight_values.grad) < 1e-4\n"
        "print(ok)"
    )
    assert run_python(code, PSCONV_KERNEL_ISA="generic") == "True"
    assert run_python(code, PSCONV_KERNEL_ISA="generic", PSCONV_PACKING="pair") == "True"


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_small_maps_forward_and_input_gradient_across_threads(threads):
    # At most 64 output pixels from 128 channels at stride 1 take the small-map forward (forced on
    # here, whatever the build's default), and so does the gradient w.r.t. the input of a layer
    # with 128 filters or more (the same kernel on the transposed plan). With more threads than
    # (group, part) pairs it splits the pixels into ranges: 8 threads over 1-2 groups.
    code = (
        "import torch; from psconv import kernels; from psconv.layers import PSConv2d\n"
        f"torch.set_num_threads({threads}); torch.manual_seed(0)\n"
        "rel = lambda a, b: float((a - b).abs().max() / b.abs().max())\n"
        "worst = 0.0\n"
        "for ci, co, hw, b in ((128, 16, (8, 8), 1), (256, 48, (5, 7), 1), (128, 40, (4, 4), 2), (48, 128, (3, 5), 1)):\n"
        "    l = PSConv2d(ci, co, pattern='PSD4_P8', bias=True); torch.nn.init.normal_(l.bias)\n"
        "    x = torch.randn(b, ci, *hw, requires_grad=True)\n"
        "    grads = []\n"
        "    for backend in ('fast', 'reference'):\n"
        "        kernels.set_backend(backend); x.grad = None\n"
        "        y = l(x); y.square().sum().backward(); grads.append((y.detach(), x.grad.clone()))\n"
        "    worst = max(worst, rel(grads[0][0], grads[1][0]), rel(grads[0][1], grads[1][1]))\n"
        "print(worst < 1e-4, worst)"
    )
    assert run_python(code, PSCONV_SMALL_MAPS="on").split()[0] == "True"


@needs_kernels
def test_models_match_reference_if_present():
    psconv = pytest.importorskip("psconv")
    if not hasattr(psconv, "create_model"):
        pytest.skip("psconv.create_model not available yet")
    torch.manual_seed(0)
    model = psconv.create_model("resnet18", pattern="PSD1_P16", num_classes=10, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        kernels.set_backend("reference")
        ref = model(x)
        kernels.set_backend("fast")
        fast = model(x)
    assert _rel(fast, ref) < 1e-4


@needs_kernels
@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_both_weight_gradient_kernels(threshold, monkeypatch):
    # 0.0: always the pixel-class kernel; 2.0: always the input-pixel (haloed dy) kernel.
    monkeypatch.setattr(kernels.ops, "_GRADW2_BELOW", threshold)
    for pattern in ("PS1_P9", "PSD4_P8", "pSC2"):
        _check(pattern, 24, 40, (6, 5), batch=2)
        _check(pattern, 16, 16, (3, 3), batch=3, padding=0)
        _check(pattern, 64, 32, (2, 2), batch=2, padding=2)


@needs_kernels
@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_pair_plan_weight_gradient_kernels(threshold, monkeypatch):
    # Both weight-gradient kernels on pair-broadcast plans (by default only wide groups use
    # them, from 256 filters at period 9; here every pair plan does).
    monkeypatch.setattr(kernels.ops, "_GRADW2_BELOW", threshold)
    monkeypatch.setattr(kernels.plans, "GW_PAIR_MIN_EFFICIENCY", 0.0)
    kernels.set_packing("pair")
    try:
        for pattern in ("PS1_P9", "PS2_P6", "PSD4_P8"):
            _check(pattern, 24, 40, (6, 5), batch=2)
            _check(pattern, 17, 33, (3, 3), batch=3, padding=0)
            _check(pattern, 64, 32, (2, 2), batch=2, padding=2)
        layer = PSConv2d(24, 40, pattern="PS1_P9")
        kernels.fast_forward(layer, torch.randn(1, 24, 4, 4))
        assert kernels.layer_plans(layer).gw(True).bcast == 2
    finally:
        kernels.set_packing("auto")


@needs_kernels
@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_weight_gradient_is_bit_reproducible(threshold, monkeypatch):
    # Exact resume of training needs the same bits on every run for a given thread count.
    monkeypatch.setattr(kernels.ops, "_GRADW2_BELOW", threshold)
    kernels.set_backend("fast")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = PSConv2d(64, 64, pattern="PS1_P9")
        x = torch.randn(8, 64, 12, 12)
        grads = []
        for _ in range(3):
            layer.zero_grad()
            layer(x).square().sum().backward()
            grads.append(layer.weight_values.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
