"""The compiled kernels as PyTorch operators: ``torch.ops.psconv.conv`` and its two gradients.

Registered with ``torch.library.custom_op`` (with fake implementations for shape propagation
and an autograd formula), so ``torch.compile`` captures a sparse network whole and
``torch.export`` writes programs that call them. An operator finds its plans from its
arguments alone (pattern spec, shape, seed; see :mod:`.plans`), never from a layer object.

Layout: inputs of any layout are made channels-last once; outputs are channels-last, so the
BN/ReLU/pool layers after a sparse conv and the next sparse conv need no conversion. Values and
gradients are those of an ordinary convolution with the layer's mask (then ``relu`` if asked).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import torch

from . import binding
from .plans import PlanTensors, geometry, plans_for

__all__ = [
    "conv",
    "conv_direct",
    "conv_impl",
    "conv_grad_input",
    "conv_grad_weight",
    "out_size",
    "PreparedConv",
    "prepare_conv",
    "run_prepared",
]

_CL = torch.channels_last
# Plans whose expected efficiency is below this (mostly one-block groups) use the input-pixel
# weight-gradient kernel; it is slower for well-grouped plans (measured).
_GRADW2_BELOW = 0.6


def out_size(n: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - 3) // stride + 1


def _args(plan: PlanTensors, geo: Any, B: int, cin: int, cout: int) -> binding.PscArgs:
    """The ctypes argument block of a plan and geometry, the caller's own copy (its pointers
    are set per call, and two threads may run the same layer at once); the template is cached."""
    g, classes, pos = geo
    nthreads = max(torch.get_num_threads(), 1)
    key = (id(classes), B, cin, cout, nthreads)
    args = plan.args_cache.get(key)
    if args is None:
        outmap = plan.outmap
        args = binding.PscArgs(
            0, 0, None, None, B, cin, cout, g.in_pix, g.out_pix,
            plan.groups.data_ptr(), plan.groups.shape[0], plan.segs.data_ptr(), plan.ents.data_ptr(),
            classes.data_ptr(), classes.shape[0], pos.data_ptr(), nthreads, int(plan.wrap),
            (ctypes.c_int * 3)(0, 0, 0), 0, plan.bcast,
            outmap.data_ptr() if outmap is not None else None, outmap.shape[0] if outmap is not None else 0,
            plan.nfb,
        )  # fmt: skip
        plan.args_cache[key] = args
    return binding.PscArgs.from_buffer_copy(args)  # 0.3 us; building one costs 10x that


def _set_pointers(
    args: binding.PscArgs,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    w: Any,
    bias: Any,
    res: Any = None,
    relu: bool = False,
) -> None:
    args.x = x.data_ptr() if x is not None else None
    args.y = y.data_ptr() if y is not None else None
    args.w = w.data_ptr() if w is not None else None
    args.bias = bias.data_ptr() if bias is not None else None
    args.res = res.data_ptr() if res is not None else None
    args.relu = int(relu)


def _cl_float(t: torch.Tensor) -> torch.Tensor:
    return (
        t.float().contiguous(memory_format=_CL)
        if t.dtype != torch.float32
        else t.contiguous(memory_format=_CL)
    )


@dataclass
class PreparedConv:
    """A forward call with everything but the activations set: the argument block (weights,
    bias, epilogue; ``x``, ``y`` and ``res`` are set per call), the output shape, and the
    tensors whose pointers the block holds (kept alive with it)."""

    args: binding.PscArgs
    out_shape: tuple[int, int, int, int]
    packed: torch.Tensor
    bias: torch.Tensor | None
    out_strides: tuple[int, int, int, int] = (0, 0, 0, 0)  # channels-last, set from out_shape

    def __post_init__(self) -> None:
        B, C, H, W = self.out_shape
        self.out_strides = (H * W * C, 1, W * C, C)  # once, not on every bound call


def prepare_conv(
    in_shape: tuple[int, ...],
    values: torch.Tensor,
    bias: torch.Tensor | None,
    pattern: str,
    seed: int,
    out_channels: int,
    stride: list[int],
    padding: list[int],
    relu: bool,
    cache_packed: bool,
) -> PreparedConv | None:
    """The forward call on inputs of ``in_shape``; None when its output is empty."""
    B, Ci, H, W = in_shape
    Ho, Wo = out_size(H, stride[0], padding[0]), out_size(W, stride[1], padding[1])
    if B == 0 or Ho <= 0 or Wo <= 0:
        return None
    plan = plans_for(pattern, out_channels, Ci, seed).fwd
    geo = geometry(0, H, W, (stride[0], stride[1]), (padding[0], padding[1]))
    args = _args(plan, geo, B, Ci, out_channels)
    packed = plan.packed(values, cache_packed)
    b = bias.detach().contiguous() if bias is not None else None
    _set_pointers(args, None, None, packed, b, None, relu)
    return PreparedConv(args, (B, out_channels, Ho, Wo), packed, b)


def run_prepared(
    call: PreparedConv, x: torch.Tensor, residual: torch.Tensor | None, shared: bool
) -> torch.Tensor:
    """The prepared call on ``x`` (channels-last, of the prepared shape). ``shared``: the call
    is kept for reuse, so this run sets the pointers of its own copy of the argument block
    (two threads may run the same layer at once)."""
    # empty_strided: half the cost of empty(memory_format=...), which counts at batch 1
    out = torch.empty_strided(call.out_shape, call.out_strides, dtype=torch.float32)
    res = _cl_float(residual) if residual is not None else None
    if res is not None and res.shape != out.shape:
        raise ValueError(f"residual of shape {tuple(res.shape)} does not match the output {tuple(out.shape)}")
    args = binding.PscArgs.from_buffer_copy(call.args) if shared else call.args
    args.x, args.y = x.data_ptr(), out.data_ptr()
    args.res = res.data_ptr() if res is not None else None
    binding.conv(args)
    return out


def conv_impl(
    x: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    pattern: str,
    seed: int,
    out_channels: int,
    stride: list[int],
    padding: list[int],
    relu: bool,
    cache_packed: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu?(conv2d(x, W) + bias + residual)`` where ``W`` is the mask of ``pattern`` filled
    with ``values``; the bias, residual and ReLU are applied as the kernel stores its output."""
    x = x.contiguous(memory_format=_CL)
    call = prepare_conv(
        tuple(x.shape), values, bias, pattern, seed, out_channels, stride, padding, relu, cache_packed
    )
    if call is None:
        B, _, H, W = x.shape
        Ho, Wo = out_size(H, stride[0], padding[0]), out_size(W, stride[1], padding[1])
        return torch.empty((B, out_channels, Ho, Wo), dtype=torch.float32, memory_format=_CL)
    return run_prepared(call, x, residual, shared=False)


# The operator, and its Python body kept callable: eager inference calls the body directly,
# skipping the dispatcher (a few microseconds a layer, which count at batch 1).
conv = torch.library.custom_op("psconv::conv", conv_impl, mutates_args=())


def conv_direct(*args: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`conv`'s call, for a loaded program (:func:`psconv.load_program`): inference calls
    run the kernels without PyTorch's operator dispatch, which costs 50-90 us a call (two
    crossings into Python kernels, autograd's and ours, with eleven arguments boxed each time).
    Calls that need gradients, and traced calls, take the operator."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return conv(*args, **kwargs)
    return conv_impl(*args, **kwargs)


@conv.register_fake
def _conv_fake(
    x, values, bias, pattern, seed, out_channels, stride, padding, relu, cache_packed, residual=None
):  # type: ignore[no-untyped-def]
    B, _, H, W = x.shape
    Ho, Wo = out_size(H, stride[0], padding[0]), out_size(W, stride[1], padding[1])
    return x.new_empty((B, out_channels, Ho, Wo), dtype=torch.float32).contiguous(memory_format=_CL)


@torch.library.custom_op("psconv::conv_grad_input", mutates_args=())
def conv_grad_input(
    grad: torch.Tensor,
    values: torch.Tensor,
    pattern: str,
    seed: int,
    in_channels: int,
    in_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """The gradient of :func:`conv` with respect to its input (a transposed sparse convolution)."""
    g = _cl_float(grad)
    B, Co = g.shape[0], g.shape[1]
    H, W = in_size
    gx = torch.empty((B, in_channels, H, W), dtype=torch.float32, memory_format=_CL)
    if B == 0:
        return gx
    plan = plans_for(pattern, Co, in_channels, seed).bwd
    geo = geometry(1, H, W, (stride[0], stride[1]), (padding[0], padding[1]))
    args = _args(plan, geo, B, Co, in_channels)
    packed = plan.packed(values, False)
    _set_pointers(args, g, gx, packed, None)
    binding.conv(args)
    return gx


@conv_grad_input.register_fake
def _grad_input_fake(grad, values, pattern, seed, in_channels, in_size, stride, padding):  # type: ignore[no-untyped-def]
    return grad.new_empty((grad.shape[0], in_channels, in_size[0], in_size[1])).contiguous(memory_format=_CL)


@torch.library.custom_op("psconv::conv_grad_weight", mutates_args=())
def conv_grad_weight(
    x: torch.Tensor,
    grad: torch.Tensor,
    pattern: str,
    seed: int,
    nnz: int,
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """The gradient of :func:`conv` with respect to its free weights (value order)."""
    x, g = _cl_float(x), _cl_float(grad)
    B, Ci, H, W = x.shape
    Co, Ho, Wo = g.shape[1], g.shape[2], g.shape[3]
    stride1 = tuple(stride) == (1, 1) and max(padding) <= 2
    plan = plans_for(pattern, Co, Ci, seed).gw(stride1)
    if B == 0:
        return torch.zeros(nnz, dtype=torch.float32)
    dwp = torch.empty(plan.total, dtype=torch.float32)
    geo = geometry(0, H, W, (stride[0], stride[1]), (padding[0], padding[1]))
    args = _args(plan, geo, B, Ci, Co)
    _set_pointers(args, x, dwp, None, None)
    if stride1 and plan.efficiency < _GRADW2_BELOW:
        # Mostly one-block groups (e.g. period 9): this kernel loops over input pixels with a
        # zero-haloed dy, so blocks with different tap sets share input loads.
        chunks = plan.work_chunks()
        binding.gradw2(
            args, g.data_ptr(), chunks.data_ptr(), chunks.shape[0], H, W, Ho, Wo, padding[0], padding[1]
        )
    else:
        binding.gradw(args, g.data_ptr())
    assert plan.inverse is not None
    return dwp.index_select(0, plan.inverse)


@conv_grad_weight.register_fake
def _grad_weight_fake(x, grad, pattern, seed, nnz, stride, padding):  # type: ignore[no-untyped-def]
    return x.new_empty((nnz,), dtype=torch.float32)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, values, bias, pattern, seed, out_channels, stride, padding, relu, _, residual = inputs
    ctx.save_for_backward(x, values, output if relu else None)
    ctx.conf = (pattern, seed, stride, padding, relu, bias is not None, residual is not None)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    x, values, output = ctx.saved_tensors
    pattern, seed, stride, padding, relu, has_bias, has_residual = ctx.conf
    if relu:
        grad = grad * (output > 0)
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        size = [x.shape[2], x.shape[3]]
        gx = conv_grad_input(grad, values, pattern, seed, x.shape[1], size, stride, padding)
    if ctx.needs_input_grad[1]:
        gw = conv_grad_weight(x, grad, pattern, seed, values.shape[0], stride, padding)
    if has_bias and ctx.needs_input_grad[2]:
        gb = grad.sum(dim=(0, 2, 3))
    gres = grad if has_residual and ctx.needs_input_grad[10] else None
    return gx, gw, gb, None, None, None, None, None, None, None, gres


conv.register_autograd(_backward, setup_context=_setup_context)


# The two gradients are linear in each argument, and their own gradients are the three
# operators again: a second derivative (gradient penalties, Hessian-vector products) runs on
# the kernels too.
def _grad_input_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    grad, values, pattern, seed, _, _, stride, padding = inputs
    ctx.save_for_backward(grad, values)
    ctx.conf = (pattern, seed, stride, padding)


def _grad_input_backward(ctx: Any, ggx: torch.Tensor) -> tuple[Any, ...]:
    grad, values = ctx.saved_tensors
    pattern, seed, stride, padding = ctx.conf
    d_grad = d_values = None
    if ctx.needs_input_grad[0]:
        d_grad = conv(ggx, values, None, pattern, seed, grad.shape[1], stride, padding, False, False)
    if ctx.needs_input_grad[1]:
        d_values = conv_grad_weight(ggx, grad, pattern, seed, values.shape[0], stride, padding)
    return d_grad, d_values, None, None, None, None, None, None


conv_grad_input.register_autograd(_grad_input_backward, setup_context=_grad_input_setup)


def _grad_weight_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, grad, pattern, seed, _, stride, padding = inputs
    ctx.save_for_backward(x, grad)
    ctx.conf = (pattern, seed, stride, padding)


def _grad_weight_backward(ctx: Any, ggw: torch.Tensor) -> tuple[Any, ...]:
    x, grad = ctx.saved_tensors
    pattern, seed, stride, padding = ctx.conf
    d_x = d_grad = None
    if ctx.needs_input_grad[0]:
        size = [x.shape[2], x.shape[3]]
        d_x = conv_grad_input(grad, ggw, pattern, seed, x.shape[1], size, stride, padding)
    if ctx.needs_input_grad[1]:
        d_grad = conv(x, ggw, None, pattern, seed, grad.shape[1], stride, padding, False, False)
    return d_x, d_grad, None, None, None, None, None


conv_grad_weight.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup)
