"""Which path a ``PSConv2d`` call takes: the compiled operator or the reference convolution.

The decision depends only on static facts (backend, dtype, device, kernel size, the layer's
pattern and shape), so it is computed once per kind of call and, under ``torch.compile``,
treated as a constant: a compiled network contains the operator, never a graph break.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING

import torch

from . import autotune, binding, bound, switches
from .ops import conv
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


# The instruction sets the efficiency model was calibrated on. Elsewhere (AVX2, NEON, the
# portable build) 'auto' measures each layer shape (:mod:`.autotune`), or, with autotuning
# off, has no basis to expect a win and stays on oneDNN.
CALIBRATED_ISAS = ("avx512",)


@functools.lru_cache(maxsize=4096)
def _model_wins(pattern: str, out_channels: int, in_channels: int, seed: int) -> bool:
    return expected_speedup(pattern, out_channels, in_channels, seed) >= switches.AUTO_MIN_RATIO


switches._on_packing_change.append(_model_wins.cache_clear)


def _backend_wants(
    backend: str, pattern: str, out_channels: int, in_channels: int, seed: int, shape: tuple[int, ...] | None
) -> bool:
    if backend == "reference":
        return False
    if backend == "fast":
        return True
    if shape is not None:
        return autotune.wins(pattern, out_channels, in_channels, seed, shape)
    return binding.isa() in CALIBRATED_ISAS and _model_wins(pattern, out_channels, in_channels, seed)


# torch.compile takes the answer as a constant (no graph break, no tracing into autotune's
# files): the mark torch.compiler.assume_constant_result sets, set by hand because that
# decorator imports torch._dynamo, which doubled `import psconv` (and every CLI call) from 2 s
# to 4 s. tests/test_dispatch.py checks the mark is still the decorator's.
_backend_wants._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _batch_classes(b: int | torch.SymInt) -> tuple[int, ...]:
    """The batch classes a decision must hold for: the call's own (1, 2 .. 15, or 16 for 16 and
    more), or both ends, 1 and 16, when the batch is free: traced with a dynamic batch
    (``torch.export`` with a batch ``Dim``, ``torch.compile`` after a second batch size), where
    one graph serves every batch. A free batch is never compared with a number: that would add
    a guard, which specialises the program or, for a batch declared dynamic, fails the trace."""
    if type(b) is int and not torch.compiler.is_compiling():  # eager: the batch is a number
        return (1 if b == 1 else min(b, 16),)
    # Imported here, by traced calls only: it loads sympy (0.5 s).
    from torch.fx.experimental.symbolic_shapes import statically_known_true as known

    if known(b == 1):
        return (1,)
    if known(b >= 16):
        return (16,)
    fixed = [n for n in range(2, 16) if known(b == n)]
    return (fixed[0],) if fixed else (1, 16)


def _shape_keys(layer: PSConv2d, x: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    """What a measured decision depends on besides the mask, once per batch class (see
    :func:`_batch_classes`): geometry, batch (1, or up to 16: larger batches time like 16 per
    image), and whether the call computes gradients."""
    train = torch.is_grad_enabled() and (x.requires_grad or layer.weight_values.requires_grad)
    geometry = (*layer.stride, *layer.padding, int(x.shape[2]), int(x.shape[3]))
    return tuple((*geometry, batch, int(train)) for batch in _batch_classes(x.shape[0]))


# Eager calls repeat a few kinds of call per layer: the decision is remembered per layer under
# everything it depends on. Recomputing it costs about 10 us a call, which is 3% of a batch-1
# ResNet18 (16 sparse layers). Under torch.compile the checks are traced instead (guards).
_decided: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _call_kind(layer: PSConv2d, x: torch.Tensor) -> tuple[object, ...]:
    values, bias = layer.weight_values, layer.bias
    return (
        binding.isa(),
        switches.get_backend(),
        switches.get_packing(),
        autotune.get_autotune(),
        autotune.generation(),
        torch.get_num_threads(),
        torch.is_grad_enabled(),
        x.shape,
        x.dtype,
        x.device,
        x.requires_grad,
        values.dtype,
        values.device,
        values.requires_grad,
        None if bias is None else bias.dtype,
    )


def uses_fast(layer: PSConv2d, x: torch.Tensor) -> bool:
    """Whether the current backend would run this call on the compiled kernels."""
    if torch.compiler.is_compiling():
        return _decide(layer, x)
    kinds = _decided.get(layer)
    if kinds is None:
        kinds = _decided[layer] = {}
    kind = _call_kind(layer, x)
    found = kinds.get(kind)
    if found is None:
        found = kinds[kind] = _decide(layer, x)
    return found


def _decide(layer: PSConv2d, x: torch.Tensor) -> bool:
    backend = switches.get_backend()
    if backend == "reference" or fast_supported(layer, x) is not None:
        return False
    measured = backend == "auto" and autotune.measures(binding.isa() in CALIBRATED_ISAS)
    shapes = _shape_keys(layer, x) if measured else (None,)
    spec = (layer.pattern.name, layer.out_channels, layer.in_channels, layer.seed)
    return all(_backend_wants(backend, *spec, shape) for shape in shapes)


def fast_forward(
    layer: PSConv2d, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The layer's output (``relu?(conv + bias + residual)``) from the compiled operator, or None
    (then the caller runs the reference path)."""
    # Tracers must record the operator: the bound call is invisible to them.
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if not tracing:
        out = bound.call(layer, x, relu, residual)  # a repeated eager inference call
        if out is not None:
            return out
    values, bias = layer.weight_values, layer.bias
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not uses_fast(layer, x):
        if (
            torch.is_grad_enabled()
            or type(x) is not torch.Tensor
            or tracing
            or switches.get_backend() == "reference"
        ):
            return None
        return bound.bind_dense(layer, x, relu, residual)  # oneDNN, kept for the next call
    args = (x, values, bias, layer.pattern.name, layer.seed, layer.out_channels, list(layer.stride),
            list(layer.padding), relu, not needs_grad, residual)  # fmt: skip
    if not needs_grad and type(x) is torch.Tensor and not tracing:
        return bound.bind(layer, x, relu, residual)  # no dispatcher, no autograd; kept for the next call
    return conv(*args)
