import pytest
import torch
import torch.nn.functional as F
from torch import nn

import psconv
from psconv import PSConv2d
from psconv.patterns import pattern_mask

CASES = [
    # (in, out, stride, batch, pattern)
    (3, 5, 1, 1, "PS4_P4"),
    (8, 16, 2, 2, "PSD4_P8"),
    (17, 9, 1, 3, "PS1_P9"),
    (16, 33, 2, 1, "PSD1_P16"),
    (6, 7, 1, 2, "pSC2"),
    (5, 4, 2, 2, "PS2_P6"),
]


@pytest.fixture(autouse=True)
def reference_backend(keep_backend):
    psconv.set_backend("reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cin", "cout", "stride", "batch", "pattern"), CASES)
def test_forward_and_gradients_equal_masked_dense_conv(cin, cout, stride, batch, pattern, dtype):
    torch.manual_seed(0)
    layer = PSConv2d(cin, cout, 3, stride=stride, padding=1, pattern=pattern, seed=3).to(dtype)
    with torch.no_grad():
        layer.bias.normal_()
    mask = pattern_mask(pattern, cout, cin, seed=3)
    x = torch.randn(batch, cin, 11, 10, dtype=dtype, requires_grad=True)
    dense = torch.zeros(cout, cin, 3, 3, dtype=dtype)
    dense[mask] = layer.weight_values.detach()
    dense.requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    expected = F.conv2d(ref_x, dense * mask, layer.bias.detach(), stride, 1)
    out = layer(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.weight_values.grad, dense.grad[mask], rtol=tol, atol=tol)


def test_parameters_hold_only_free_weights():
    layer = PSConv2d(64, 64, pattern="PSD1_P16")
    mask = pattern_mask("PSD1_P16", 64, 64)
    assert layer.weight_values.numel() == int(mask.sum())
    assert sum(p.numel() for p in layer.parameters()) == int(mask.sum()) + 64


def test_optimizer_and_weight_decay_cannot_fill_zeros():
    layer = PSConv2d(8, 8, pattern="PS1_P9")
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 8, 6, 6)).square().sum().backward()
        opt.step()
    assert (layer.weight[~layer.mask] == 0).all()
    assert (layer.weight[layer.mask] != 0).any()


def test_init_is_masked_xavier_with_gain_half():
    layer = PSConv2d(256, 256, pattern="PS4_P4")
    bound = 0.5 * (6 / (256 * 9 * 2)) ** 0.5
    values = layer.weight_values
    assert values.abs().max() <= bound and values.abs().max() > 0.95 * bound
    assert (layer.bias == 0).all()


def test_from_conv_and_to_conv_round_trip():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    layer = PSConv2d.from_conv(conv, "PSD2_P8")
    mask = pattern_mask("PSD2_P8", 10, 6)
    torch.testing.assert_close(layer.weight, conv.weight.detach() * mask)
    back = layer.to_conv()
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(back(x), layer(x))


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="in_channels"):
        PSConv2d(0, 4)
    with pytest.raises(ValueError, match="pattern 'PS9_P4'"):
        PSConv2d(4, 4, pattern="PS9_P4")
    with pytest.raises(ValueError, match="kernel_size"):
        PSConv2d(4, 4, kernel_size=(3, 1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_reference_path_follows_weight_updates_without_gradients(channels_last: bool) -> None:
    """The no-grad dense kernel is cached; an in-place update or a load must not serve stale weights."""
    layer = PSConv2d(8, 8, pattern="PS4_P4")
    x = torch.randn(2, 8, 5, 5)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    with torch.no_grad():
        layer(x)
        layer.weight_values.mul_(2.0)
        after_update = layer(x)
    layer.load_state_dict({k: v * 3 for k, v in layer.state_dict().items()})
    with torch.no_grad():
        after_load = layer(x)
    for got in (after_update, after_load):
        assert got.is_contiguous(memory_format=torch.channels_last) or not channels_last
    torch.testing.assert_close(after_load, F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1))
    torch.testing.assert_close(after_update * 3, after_load)


@pytest.mark.parametrize(
    ("make", "kernel_channels_last"),
    [
        (lambda x: x[:, :8].contiguous(), False),
        (lambda x: x[:, :8].contiguous(memory_format=torch.channels_last), True),
        (lambda x: x.contiguous(memory_format=torch.channels_last)[:, 8:16], True),  # a channel slice
        (lambda x: x[:, 8:16], False),
    ],
    ids=["nchw", "channels_last", "channels_last slice", "nchw slice"],
)
def test_the_kept_dense_kernel_takes_the_input_layout(make, kernel_channels_last: bool) -> None:
    """oneDNN and the fallback conv reorder a kernel whose layout differs from the input's on
    every call: the kernel kept for no-grad calls follows the input, slices of it included."""
    layer = PSConv2d(8, 8, pattern="PSD2_P8")
    x = make(torch.randn(2, 24, 5, 5))
    with torch.no_grad(), psconv.kernels.using_backend("reference"):
        got = layer(x)
    kept = layer.__dict__["_dense_cache"][1]
    assert kept.is_contiguous(memory_format=torch.channels_last) == kernel_channels_last
    assert kept.is_contiguous() != kernel_channels_last
    torch.testing.assert_close(got, F.conv2d(x.contiguous(), layer.dense_weight(), layer.bias, 1, 1))


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_layer_made_under_inference_mode_runs_and_sees_in_place_updates(backend: str) -> None:
    """Inference tensors carry no version counter: the caches keyed on it must step aside."""
    if backend == "fast" and not psconv.kernels.kernels_available():
        pytest.skip("compiled kernels not built")
    psconv.set_backend(backend)
    x = torch.randn(2, 16, 6, 6)
    with torch.inference_mode():
        layer = PSConv2d(16, 16, pattern="PSD4_P8")
        assert layer.weight_values.is_inference()
        first = layer(x)
        layer.weight_values.mul_(2.0)
        second = layer(x)
        expected = F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(first * 2, second, rtol=1e-4, atol=1e-4)


def test_sparse_layer_inputs_lists_each_call_with_its_input_shape(keep_backend):
    from psconv.layers import sparse_layer_inputs

    model = psconv.create_model("resnet18", "PSD2_P8").eval()
    psconv.set_backend("fast")
    found = sparse_layer_inputs(model, torch.zeros(2, 3, 32, 32))
    assert psconv.get_backend() == "fast"  # the probe's reference backend is not left behind
    assert [name for name, _, _ in found][:2] == ["layers.0.conv1", "layers.0.conv2"] and len(found) == 16
    assert all(model.get_submodule(name) is layer for name, layer, _ in found)
    assert found[0][2] == (2, 64, 32, 32) and found[-1][2] == (2, 512, 4, 4)
