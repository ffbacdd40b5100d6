"""Eager inference calls of a sparse layer with everything but the activations prepared.

At batch 1 a layer's kernel runs for 0.1-0.4 ms, and the Python around it (the dispatch
decision, plan, geometry and packed-weight lookups, the ctypes argument block) took about
12 us of each call: 0.2 ms of a 5 ms ResNet18 forward. The first fast call of a
layer with gradients off binds it (:func:`bind`); later calls (:func:`call`) with the same
input shape and dtype, epilogue, switches and thread count, and the same weight tensors,
unchanged in place, only allocate the output, set the activation pointers and run the kernel.
Any other call takes the ordinary path, which binds the layer again.

A layer that the backend keeps on oneDNN for that call binds too (:func:`bind_dense`): its
later calls are one ``F.conv2d`` on the kept dense kernel plus the epilogue. The decision, the
reference path's checks and the epilogue's Python took 20-30 us of each call, as much as a
small layer's convolution (a 32-channel 8x8 layer on a Zen 3: 81-100 us against 61-70 us as
``nn.Conv2d`` and ReLU).

Bindings live beside the layers (a weak map), not in them: copying, pickling and
``state_dict`` never see them.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import autotune, switches
from .ops import PreparedConv, conv_impl, prepare_conv, run_prepared

if TYPE_CHECKING:
    from ..layers import PSConv2d

__all__ = ["bind", "bind_dense", "call"]

_CL = torch.channels_last


class _Binding:
    """A prepared kernel call (``prepared``), or a oneDNN call on the kept dense kernel
    (``dense``, with the layer's stride and padding)."""

    __slots__ = ("key", "values", "bias", "state", "prepared", "dense", "geometry")

    def __init__(self, key: tuple[object, ...], values: torch.Tensor, bias: torch.Tensor | None,
                 prepared: PreparedConv | None, dense: torch.Tensor | None = None,
                 geometry: tuple[tuple[int, ...], tuple[int, ...]] = ((1, 1), (1, 1))) -> None:  # fmt: skip
        self.key = key
        self.values, self.bias = values, bias
        self.state = _tensor_state(values, bias)
        self.prepared, self.dense, self.geometry = prepared, dense, geometry


_bindings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensor_state(values: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, ...]:
    # In-place updates bump _version; `.to()` / `.data =` swap the storage under the same object.
    if bias is None:
        return values._version, values.data_ptr()
    return values._version, values.data_ptr(), bias._version, bias.data_ptr()


def _key(x: torch.Tensor, relu: bool, residual: torch.Tensor | None) -> tuple[object, ...]:
    return (
        x.shape,
        x.stride(),  # the dense kernel is kept in the input's layout
        x.dtype,
        x.device,
        relu,
        None if residual is None else (residual.shape, residual.dtype),
        torch.get_num_threads(),
        switches.get_backend(),
        switches.get_packing(),
        autotune.get_autotune(),
        autotune.generation(),
    )


def _params(layer: PSConv2d) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    params = layer._parameters  # a dict lookup: nn.Module.__getattr__ costs 1 us a name
    return params.get("weight_values"), params.get("bias")


def _registered(layer: PSConv2d, values: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the layer's weights are its registered parameters (what :func:`call` checks)."""
    pv, pb = _params(layer)
    return pv is values and pb is bias


def call(layer: PSConv2d, x: torch.Tensor, relu: bool, residual: torch.Tensor | None) -> torch.Tensor | None:
    """The layer's output from its binding, or None when the call does not match it."""
    if torch.is_grad_enabled() or type(x) is not torch.Tensor:
        return None
    bound = _bindings.get(layer)
    if bound is None:
        return None
    values, bias = _params(layer)
    if values is not bound.values or bias is not bound.bias or _tensor_state(values, bias) != bound.state:
        return None
    if _key(x, relu, residual) != bound.key:
        return None
    if bound.prepared is not None:
        return run_prepared(bound.prepared, x.contiguous(memory_format=_CL), residual, shared=True)
    return _dense_call(bound, x, relu, residual)


def _dense_call(bound: _Binding, x: torch.Tensor, relu: bool, residual: torch.Tensor | None) -> torch.Tensor:
    out = F.conv2d(x, bound.dense, bound.bias, *bound.geometry)
    if residual is not None:
        out += residual  # out is new: in place is safe, and one pass less
    return out.relu_() if relu else out


def bind(layer: PSConv2d, x: torch.Tensor, relu: bool, residual: torch.Tensor | None) -> torch.Tensor:
    """Run the layer's forward on the kernels (the caller has decided it takes them, with no
    gradient needed) and, when gradients are off, keep the call for the next ones."""
    values, bias = layer.weight_values, layer.bias
    args = (layer.pattern.name, layer.seed, layer.out_channels, list(layer.stride), list(layer.padding), relu)
    key = _key(x, relu, residual)  # of the caller's input, as call() sees it
    x = x.contiguous(memory_format=_CL)
    prepared = prepare_conv(tuple(x.shape), values, bias, *args, True)
    if prepared is None:  # an empty output
        return conv_impl(x, values, bias, *args, True, residual)
    out = run_prepared(prepared, x, residual, shared=True)
    keep = (
        not torch.is_grad_enabled()
        and _registered(layer, values, bias)
        and not values.is_inference()  # no version counter to see in-place changes by
        and (bias is None or not bias.is_inference())
    )
    if keep:
        _bindings[layer] = _Binding(key, values, bias, prepared)
    return out


def bind_dense(
    layer: PSConv2d, x: torch.Tensor, relu: bool, residual: torch.Tensor | None
) -> torch.Tensor | None:
    """For a call the backend keeps on oneDNN, with gradients off: its output, and the call
    kept for the next ones; None where the layer keeps no dense kernel (the caller then runs the
    reference path as before)."""
    values, bias = _params(layer)
    weight = layer._inference_weight(x)  # None for inference-mode values, among others
    if weight is None or values is None or (bias is not None and bias.is_inference()):
        return None
    geometry = (tuple(layer.stride), tuple(layer.padding))
    bound = _bindings[layer] = _Binding(_key(x, relu, residual), values, bias, None, weight, geometry)
    return _dense_call(bound, x, relu, residual)
