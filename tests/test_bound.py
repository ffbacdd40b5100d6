"""Bound eager inference calls: the same outputs as the ordinary path, and never a stale one."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from conftest import needs_kernels

import psconv
from psconv import kernels
from psconv.kernels import bound, ops


@pytest.fixture(autouse=True)
def _fast_backend(keep_backend):
    kernels.set_backend("fast")


@pytest.fixture
def prepares(monkeypatch) -> list[tuple[int, ...]]:
    """The input shapes of every call prepared from scratch (a bound call prepares nothing)."""
    seen: list[tuple[int, ...]] = []
    real = bound.prepare_conv

    def spy(in_shape, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(tuple(in_shape))
        return real(in_shape, *args, **kwargs)

    monkeypatch.setattr(bound, "prepare_conv", spy)
    return seen


def _layer(pattern: str = "PSD2_P8", cin: int = 32, cout: int = 48, stride: int = 1) -> psconv.PSConv2d:
    layer = psconv.PSConv2d(cin, cout, stride=stride, pattern=pattern).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight_values.normal_(generator=g)
        layer.bias.normal_(generator=g)
    return layer


def _expected(layer: psconv.PSConv2d, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    out = layer.reference_forward(x)
    return torch.relu(out + residual) if residual is not None else out


@needs_kernels
@pytest.mark.parametrize(("pattern", "stride"), [("PSD2_P8", 1), ("PS1_P9", 2), ("PSD4_P8", 1)])
def test_repeated_calls_reuse_the_binding_and_equal_the_first(pattern: str, stride: int, prepares) -> None:
    layer = _layer(pattern, stride=stride)
    x = torch.randn(1, 32, 9, 9)
    with torch.no_grad():
        first = layer(x)
        again = [layer(x.clone()) for _ in range(3)]
    assert prepares == [(1, 32, 9, 9)]
    assert all(torch.equal(a, first) for a in again)  # the same kernel call, bit for bit
    torch.testing.assert_close(first, _expected(layer, x), rtol=1e-4, atol=1e-4)
    assert first.is_contiguous(memory_format=torch.channels_last)


@needs_kernels
def test_fused_residual_and_relu_through_the_binding(prepares) -> None:
    layer = psconv.inference.FusedPSConv2d.from_layer(_layer(cin=32, cout=32))
    layer.relu = True
    x, residual = torch.randn(1, 32, 6, 6), torch.randn(1, 32, 6, 6)
    with torch.inference_mode():
        first, second = layer(x, residual), layer(x, residual)
    assert len(prepares) == 1 and torch.equal(first, second)
    torch.testing.assert_close(second, _expected(layer, x, residual), rtol=1e-4, atol=1e-4)
    with torch.no_grad(), pytest.raises(ValueError, match="residual of shape"):
        layer(x, torch.randn(1, 32, 5, 5))


@needs_kernels
@pytest.mark.parametrize("change", ["in_place", "data_swap", "new_parameter", "bias"])
def test_changed_weights_are_never_served_stale(change: str, prepares) -> None:
    layer = _layer()
    x = torch.randn(1, 32, 7, 7)
    with torch.no_grad():
        before = layer(x)
        if change == "in_place":
            layer.weight_values.mul_(-2.0)
        elif change == "data_swap":
            layer.weight_values.data = layer.weight_values.data * -2.0
        elif change == "new_parameter":
            layer.weight_values = torch.nn.Parameter(layer.weight_values * -2.0)
        else:
            layer.bias.add_(1.0)
        after = layer(x)
    assert len(prepares) == 2
    torch.testing.assert_close(after, _expected(layer, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(after, before)


@needs_kernels
def test_a_new_shape_threads_or_backend_is_not_served_the_old_binding(prepares, monkeypatch) -> None:
    layer = _layer()
    threads = torch.get_num_threads()
    with torch.no_grad():
        layer(torch.randn(1, 32, 8, 8))
        x = torch.randn(2, 32, 5, 5)
        out = layer(x)
        assert out.shape == (2, 48, 5, 5)
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            layer(x)
        finally:
            torch.set_num_threads(threads)
        assert prepares == [(1, 32, 8, 8), (2, 32, 5, 5), (2, 32, 5, 5)]
        calls: list[object] = []
        kernels.set_backend("reference")
        monkeypatch.setattr(kernels.binding, "conv", calls.append)
        reference = layer(x)
    assert calls == []  # the reference backend runs no kernel, bound or not
    torch.testing.assert_close(reference, out, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_gradients_never_take_the_binding() -> None:
    layer = _layer()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        layer(x)
    out = layer(x.requires_grad_())
    assert out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and layer.weight_values.grad is not None


@needs_kernels
def test_tracers_record_the_operator_after_eager_calls() -> None:
    layer = _layer()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad(), warnings.catch_warnings():
        layer(x)
        layer(x)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, x)
    assert "psconv::conv" in str(traced.inlined_graph)


@needs_kernels
def test_a_bound_layer_copies_and_pickles_without_its_binding() -> None:
    layer = _layer()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        want = layer(x)
        for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert torch.equal(other(x), want)
    assert ops.PreparedConv.__name__ not in pickle.dumps(layer).decode("latin-1")


@pytest.fixture
def on_onednn(monkeypatch) -> list[psconv.PSConv2d]:
    """The backend keeps every layer on oneDNN (as 'auto' does where the kernels lose); the list
    records each layer that took the ordinary path's decision."""
    decided: list[psconv.PSConv2d] = []

    def stays(layer: psconv.PSConv2d, x: torch.Tensor) -> bool:
        decided.append(layer)
        return False

    monkeypatch.setattr(kernels.dispatch, "uses_fast", stays)
    return decided


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_a_layer_on_onednn_binds_its_dense_call_bit_equal_to_the_reference(layout: str, on_onednn) -> None:
    layer = psconv.inference.FusedPSConv2d.from_layer(_layer(cin=32, cout=32, stride=1))
    layer.relu = True
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 32, 7, 7).contiguous(memory_format=fmt)
    residual = torch.randn(2, 32, 7, 7)
    with torch.no_grad():
        outs = [layer(x, residual) for _ in range(3)] + [layer(x)]
        decisions = len(on_onednn)
        with kernels.using_backend("reference"):
            want = [layer(x, residual), layer(x)]
    assert decisions == 2  # once per call kind, then bound
    assert all(torch.equal(o, want[0]) for o in outs[:3]) and torch.equal(outs[3], want[1])
    assert bound._bindings[layer].dense is not None


def test_a_layer_on_onednn_is_never_served_stale_weights(on_onednn) -> None:
    layer = _layer()
    x = torch.randn(1, 32, 7, 7)
    outs = []
    with torch.no_grad():
        for change in (lambda: None, lambda: layer.weight_values.mul_(-2.0), lambda: layer.bias.add_(1.0)):
            change()
            outs.append((layer(x), _expected(layer, x)))
    assert all(torch.equal(got, want) for got, want in outs)
    assert not torch.equal(outs[0][0], outs[1][0]) and not torch.equal(outs[1][0], outs[2][0])


def test_the_reference_backend_and_gradients_bind_nothing(on_onednn) -> None:
    layer = _layer()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad(), kernels.using_backend("reference"):
        layer(x)
    layer(x).sum().backward()
    assert layer not in bound._bindings and layer.weight_values.grad is not None
