"""The pattern-sparse convolution layer.

``PSConv2d`` stores only its free (kept) weights, as one 1-D parameter ``weight_values`` in
the row-major order of the mask's kept positions (``dense[mask] = weight_values``). Nothing
can make a fixed zero non-zero: it has no storage. The reference forward scatters the values
into a dense kernel and calls ``F.conv2d``; it is the oracle for the fast engine.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .patterns import Pattern, parse_pattern, pattern_mask

__all__ = ["PSConv2d", "sparse_layer_inputs"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


_PLAIN = (torch.Tensor, nn.Parameter)


def _channels_last(x: torch.Tensor) -> bool:
    """Channels-last data, or a view of it such as a channel slice (Res2Net's splits): oneDNN
    and PyTorch's fallback conv then want the kernel channels-last too, and reorder an NCHW one
    on every call (a slice of 56 channels at 4x4: 46 against 22 us a call, Zen 3)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1 and not x.is_contiguous()


class PSConv2d(nn.Module):
    """Drop-in replacement for ``nn.Conv2d`` whose kernels keep a pre-defined sparse support.

    ``pattern`` is a spec string (see :mod:`psconv.patterns`); ``seed`` draws the supports of
    ``pSC<n>`` patterns. ``weight`` (read-only) is the dense kernel with the zeros written in.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        bias: bool = True,
        pattern: str | Pattern = "dense",
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PSConv2d: {label} must be a positive integer, got {value!r}")
        kh, kw = _pair(kernel_size, "kernel_size")
        if kh != kw:
            raise ValueError(f"PSConv2d: kernel_size must be square, got {(kh, kw)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = (1, 1)
        self.groups = 1
        self.pattern = parse_pattern(pattern)
        self.seed = int(seed)
        mask = pattern_mask(self.pattern, out_channels, in_channels, kh, seed=self.seed)
        # Derived from (spec, shape, seed), so never saved: checkpoints stay index-free.
        self.register_buffer("mask", mask.to(device), persistent=False)
        # numpy: torch's bool nonzero/sum take tens of ms on large layers
        flat_index = torch.from_numpy(np.flatnonzero(mask.numpy()))
        self.register_buffer("flat_index", flat_index.to(device), persistent=False)
        factory = {"device": device, "dtype": dtype}
        self.weight_values = nn.Parameter(torch.empty(flat_index.numel(), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def nnz(self) -> int:
        return self.weight_values.numel()

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def reset_parameters(self, gain: float = 0.5) -> None:
        """Authors' init: xavier-uniform (gain 0.5) on the dense kernel, then masked; bias 0."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        fan_out = self.out_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            self.weight_values.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def dense_weight(self) -> torch.Tensor:
        """The dense kernel ``[out, in, k, k]`` with the fixed zeros written in (differentiable)."""
        flat = self.weight_values.new_zeros(self.mask.numel())
        flat = flat.index_put((self.flat_index,), self.weight_values)
        return flat.view(self.weight_shape)

    @property
    def weight(self) -> torch.Tensor:
        return self.dense_weight()

    @torch.no_grad()
    def load_dense_weight(self, weight: torch.Tensor) -> None:
        """Take the kept positions of a dense kernel (the others are dropped)."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"dense weight must have shape {self.weight_shape}, got {tuple(weight.shape)}")
        self.weight_values.copy_(weight.reshape(-1)[self.flat_index.to(weight.device)])

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._inference_weight(x)
        if weight is None:
            weight = self.dense_weight()
            if _channels_last(x):
                # oneDNN reorders an NCHW kernel for a channels-last input on every call (and
                # its gradient back): 2x slower training steps of 512-channel 4x4 layers.
                weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)

    def _inference_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """For calls without gradients: the dense kernel, kept while the values are unchanged and
        in the input's memory format, so that a layer on oneDNN costs what a plain conv costs
        (re-scattering it, and oneDNN reordering it, on every call took 10-15% of a batch-128
        forward). None where the differentiable kernel is needed, or under a tracer."""
        values = self.weight_values
        if torch.is_grad_enabled() and (values.requires_grad or x.requires_grad):
            return None
        if torch.compiler.is_compiling() or type(values) not in _PLAIN or type(x) not in _PLAIN:
            return None  # a tracer's tensors (fake, functional) have no version to key on
        if torch.jit.is_tracing():
            return None  # a cached kernel would be baked into the trace as a constant
        if values.is_inference():
            return None  # nor do tensors made under torch.inference_mode
        cl = _channels_last(x)
        key = (values._version, values.data_ptr(), values.device, values.dtype, cl)
        cached = self.__dict__.get("_dense_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                weight = self.dense_weight()
                weight = weight.contiguous(memory_format=torch.channels_last) if cl else weight
            cached = self.__dict__["_dense_cache"] = (key, weight)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = kernels.fast_forward(self, x)
        return self.reference_forward(x) if out is None else out

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, pattern: str | Pattern, seed: int = 0) -> PSConv2d:
        """A PSConv2d with the same geometry as ``conv`` and its weights at the kept positions."""
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError(
                "PSConv2d.from_conv: only groups=1, dilation=1, zero padding convs can be converted"
            )
        if isinstance(conv.padding, str):
            raise ValueError("PSConv2d.from_conv: string padding is not supported; give ints")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            bias=conv.bias is not None,
            pattern=pattern,
            seed=seed,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer.load_dense_weight(conv.weight.detach())
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias)  # type: ignore[union-attr]
        return layer

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the zeros written in: identical outputs, any tool can use it."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            bias=self.bias is not None,
            device=self.weight_values.device,
            dtype=self.weight_values.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"pattern={self.pattern.name!r}, nnz={self.nnz}"
        )


def sparse_layer_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, PSConv2d, tuple[int, ...]]]:
    """Every sparse layer of ``model`` (its name, itself, its input's shape), in the order a
    forward pass on ``x`` calls them. The pass runs without gradients on the reference path, so
    the probe makes no kernel decision (which, where 'auto' measures, would time layers)."""
    names = {module: name for name, module in model.named_modules()}
    found: list[tuple[str, PSConv2d, tuple[int, ...]]] = []

    def record(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        found.append((names[layer], layer, tuple(args[0].shape)))  # type: ignore[arg-type]

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, PSConv2d)]
    try:
        with torch.no_grad(), kernels.using_backend("reference"):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found
