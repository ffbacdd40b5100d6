"""Which path a ``PSConv2d`` call takes: the compiled operator or the reference convolution.

The decision depends only on static facts (backend, dtype, device, kernel size, the layer's
pattern and shape), so it is computed once per kind of call and, under ``torch.compile``,
treated as a constant: a compiled network contains the operator, never a graph break.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from . import binding, switches
from .ops import conv, conv_impl
from .plans import expected_speedup

if TYPE_CHECKING:
    from ..layers import PSConv2d

__all__ = ["fast_supported", "uses_fast", "fast_forward"]


def fast_supported(layer: PSConv2d, x: torch.Tensor) -> str | None:
    """None if the compiled kernels can run this call, else the reason they cannot."""
    if not binding.available():
        return f"compiled kernels unavailable: {binding.load_error}"
    if x.device.type != "cpu" or layer.weight_values.device.type != "cpu":
        return "not a CPU tensor"
    if x.dtype != torch.float32 or layer.weight_values.dtype != torch.float32:
        return f"dtype {x.dtype} (kernels are float32)"
    if layer.kernel_size != (3, 3):
        return f"kernel size {layer.kernel_size} (kernels are 3x3)"
    if x.dim() != 4 or x.shape[1] != layer.in_channels:
        return "input is not [B, C_in, H, W]"
    if layer.bias is not None and layer.bias.dtype != torch.float32:
        return "bias dtype"
    if x.numel() >= 2**31 or x.shape[0] * layer.out_channels * x.shape[2] * x.shape[3] >= 2**31:
        return "tensor too large for 32-bit pixel indices"
    return None


# The instruction sets the efficiency model was calibrated on. Elsewhere (the portable build,
# forced or on a CPU without AVX-512) 'auto' has no basis to expect a win, so it stays on
# oneDNN: the portable kernels emulate 16-lane vectors and measured slower than oneDNN there.
CALIBRATED_ISAS = ("avx512",)


@functools.lru_cache(maxsize=4096)
def _auto_wins(pattern: str, out_channels: int, in_channels: int, seed: int) -> bool:
    if binding.isa() not in CALIBRATED_ISAS:
        return False
    return expected_speedup(pattern, out_channels, in_channels, seed) >= switches.AUTO_MIN_RATIO


switches._on_packing_change.append(_auto_wins.cache_clear)


@torch.compiler.assume_constant_result
def _backend_wants(backend: str, pattern: str, out_channels: int, in_channels: int, seed: int) -> bool:
    if backend == "reference":
        return False
    return backend == "fast" or _auto_wins(pattern, out_channels, in_channels, seed)


def uses_fast(layer: PSConv2d, x: torch.Tensor) -> bool:
    """Whether the current backend would run this call on the compiled kernels."""
    backend = switches.get_backend()
    if backend == "reference" or fast_supported(layer, x) is not None:
        return False
    return _backend_wants(backend, layer.pattern.name, layer.out_channels, layer.in_channels, layer.seed)


def fast_forward(
    layer: PSConv2d, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The layer's output (``relu?(conv + bias + residual)``) from the compiled operator, or None
    (then the caller runs the reference path)."""
    if not uses_fast(layer, x):
        return None
    values, bias = layer.weight_values, layer.bias
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    )
    args = (x, values, bias, layer.pattern.name, layer.seed, layer.out_channels, list(layer.stride),
            list(layer.padding), relu, not needs_grad, residual)  # fmt: skip
    if not needs_grad and type(x) is torch.Tensor and not torch.compiler.is_compiling():
        return conv_impl(*args)  # no dispatcher, no autograd: what eager inference at batch 1 wants
    return conv(*args)
