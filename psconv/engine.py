"""Backend selection for PSConv2d: the fast compiled kernels where they win, else the reference.

``fast_forward(layer, x)`` returns the layer's output computed by a fast backend, or ``None``
when no fast backend applies (the layer then runs its reference path).

Backends (``set_backend`` or the environment variable ``PSCONV_BACKEND``):

- ``'reference'``: never the compiled kernels (scatter + ``F.conv2d``; the test oracle).
- ``'fast'``: the compiled kernels wherever they can run: CPU, float32, 3x3 kernels. Elsewhere
  (CUDA, other dtypes, other kernel sizes, library not built) the layer silently falls back to
  the reference path, so a model never breaks because of the backend switch; use
  :func:`fast_supported` to ask why a call would fall back.
- ``'auto'`` (default): like 'fast', but only for layers where a simple model predicts a clear
  win: dense MACs / MACs the packed kernel executes, times the kernel's measured efficiency
  relative to oneDNN (lower when few filter blocks share a tap set, as with period 9), must
  reach ``AUTO_MIN_RATIO``. Random ``pSC`` masks (tap unions cover nearly all 9 positions) and
  dense patterns therefore stay on oneDNN.

Weight packings (``set_packing`` or ``PSCONV_PACKING``): 'diagonal' (lane j of a 16-filter
block pairs filter f0+15-j with channel d+j: one vector load per entry) or, for masks periodic
in f + c with a period that does not divide 16 (PS1_P9), 'pair' (lanes read a channel pair with
one 8-byte broadcast, so blocks share entries); 'auto' (default) picks per plan by the
efficiency model.

The kernels work on NHWC (``torch.channels_last``) tensors: an NCHW input is converted once,
and the output is returned channels_last, so the following BN/ReLU/pool layers and the next
PSConv2d stay in that layout with no further conversion. Values and autograd are those of an
ordinary convolution with the layer's mask.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .layers import PSConv2d

__all__ = [
    "set_backend",
    "get_backend",
    "fast_forward",
    "fast_supported",
    "kernels_available",
    "kernel_info",
    "set_packing",
    "packing_of",
    "BACKENDS",
    "PACKINGS",
]

BACKENDS = ("auto", "reference", "fast")
_backend = os.environ.get("PSCONV_BACKEND", "auto")
if _backend not in BACKENDS:
    _backend = "auto"

# Weight packing of the convolution kernels: 'auto' picks per plan by the efficiency model,
# 'diagonal' or 'pair' force one (tests, benchmarks; pair only where the mask allows it).
PACKINGS = ("auto", "diagonal", "pair")
_packing = os.environ.get("PSCONV_PACKING", "auto")
if _packing not in PACKINGS:
    _packing = "auto"

# 'auto' uses the kernel when the expected speedup (dense MACs / executed lane-MACs, times the
# kernel's relative efficiency) is at least this; below it oneDNN is the safer choice.
AUTO_MIN_RATIO = 1.25


def set_backend(name: str) -> None:
    """Force a backend: 'auto' (fast where it wins), 'reference' or 'fast'."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


def _kern() -> Any:
    from . import _kernels

    return _kernels


def kernels_available() -> bool:
    """True when the compiled kernel library is loaded."""
    return bool(_kern().available())


def kernel_info() -> dict[str, Any]:
    """Library path, instruction set in use, and why it is unavailable (if it is)."""
    k = _kern()
    return {
        "available": k.available(),
        "isa": k.isa(),
        "path": k.library_path(),
        "error": k.load_error,
        "backend": _backend,
    }


@dataclass
class _PlanTensors:
    groups: torch.Tensor
    segs: torch.Tensor
    ents: torch.Tensor
    gather: torch.Tensor
    total: int
    ratio: float  # dense MACs / executed lane-MACs
    wrap: bool
    efficiency: float  # expected speed relative to dense per executed MAC (measured, per group width)
    bcast: int = 0  # 2: pair-broadcast packing, whose output lanes go back through outmap
    outmap: torch.Tensor | None = None
    nfb: int = 0
    source: Any = None  # the numpy plan (weight-gradient work lists are built from it)
    inverse: torch.Tensor | None = None  # value index -> packed position (weight gradient)
    chunks: torch.Tensor | None = None  # work list of the stride-1 weight-gradient kernel
    # ctypes argument blocks per (geometry, batch, channels, threads): rebuilt only on change,
    # since a fresh 19-field structure costs more than a small layer's kernel at batch 1.
    args_cache: dict[tuple[int, ...], Any] = field(default_factory=dict)


class _Plans:
    """Kernel plans of one mask; shared by every layer with the same (pattern, shape, seed)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.co, self.ci = mask.shape[0], mask.shape[1]
        self._np = mask.detach().cpu().reshape(self.co, self.ci, 9).numpy().astype(bool)
        self.nnz = int(self._np.sum())
        self._fwd: _PlanTensors | None = None
        self._diag: _PlanTensors | None = None
        self._bwd: _PlanTensors | None = None

    def _vidx(self) -> np.ndarray:
        flat = self._np.reshape(-1)
        vidx = np.full(flat.shape, -1, dtype=np.int64)
        vidx[flat] = np.arange(self.nnz)
        return vidx.reshape(self._np.shape)

    @property
    def fwd(self) -> _PlanTensors:
        if self._fwd is None:
            self._fwd = _best_plan(self._np, self._vidx(), self.co * self.ci * 9)
        return self._fwd

    def gw(self, stride1: bool) -> _PlanTensors:
        """Plan of the weight-gradient kernels, whose packed layout the gradient is computed in
        (its ``inverse`` maps it back to value order): the forward plan, except a pair plan of
        narrow groups at stride 1, where the diagonal plan's input-pixel kernel is faster
        (measured: PS1_P9 at 64 and 128 channels; at stride 2 the pair plan is faster)."""
        plan = self.fwd
        if stride1 and plan.bcast and plan.efficiency < _GW_PAIR_MIN_EFFICIENCY:
            if self._diag is None:
                from ._kernel_plan import build_weight_plan

                self._diag = _to_plan_tensors(
                    build_weight_plan(self._np, self._vidx()), self.co * self.ci * 9
                )
            plan = self._diag
        if plan.inverse is None:
            gather = plan.gather.numpy()
            inverse = np.full(self.nnz, -1, dtype=np.int64)
            sel = gather < self.nnz
            inverse[gather[sel]] = np.nonzero(sel)[0]
            if (inverse < 0).any():  # pragma: no cover - the plan covers every kept weight
                raise AssertionError("packed plan misses kept weights")
            plan.inverse = torch.from_numpy(inverse.astype(np.int32))
        return plan

    @property
    def bwd(self) -> _PlanTensors:
        # Built on the first backward only: inference never needs the transposed plan.
        if self._bwd is None:
            mt = np.ascontiguousarray(self._np.transpose(1, 0, 2))
            vt = np.ascontiguousarray(self._vidx().transpose(1, 0, 2))
            self._bwd = _best_plan(mt, vt, self.co * self.ci * 9)
        return self._bwd


def _chunks(plan: _PlanTensors) -> torch.Tensor:
    """Work list of the stride-1 weight-gradient kernel (built on the first backward)."""
    if plan.chunks is None:
        from ._kernel_plan import build_gradw_chunks

        plan.chunks = torch.from_numpy(build_gradw_chunks(plan.source))
    return plan.chunks


class _LayerState:
    """Per-layer view: shared plans plus this layer's packed-weight cache."""

    def __init__(self, plans: _Plans) -> None:
        self.plans = plans
        self.mask_ref: torch.Tensor | None = None  # the layer's mask buffer when this was made
        self.decisions: dict[tuple[Any, ...], bool] = {}
        self.cache: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}

    @property
    def fwd(self) -> _PlanTensors:
        return self.plans.fwd

    @property
    def bwd(self) -> _PlanTensors:
        return self.plans.bwd

    def gw(self, stride1: bool) -> _PlanTensors:
        return self.plans.gw(stride1)

    def packed(self, which: str, values: torch.Tensor, cache: bool = True) -> torch.Tensor:
        # Packing is a gather of nnz floats; cached per (storage, version) for inference. In
        # training the values change every step, so a cached copy would only hold memory.
        key = (values.data_ptr(), values._version)
        hit = self.cache.get(which)
        if hit is not None and hit[0] == key:
            return hit[1]
        plan = self.fwd if which == "fwd" else self.bwd
        ext = torch.cat([values.detach().reshape(-1), values.new_zeros(1)])
        packed = ext.index_select(0, plan.gather)
        if cache:
            self.cache[which] = (key, packed)
        else:
            self.cache.pop(which, None)
        return packed


_states: weakref.WeakKeyDictionary[Any, _LayerState] = weakref.WeakKeyDictionary()
_plans: dict[tuple[Any, ...], _Plans] = {}
_geometries: dict[
    tuple[int, int, int, tuple[int, int], tuple[int, int]], tuple[Any, torch.Tensor, torch.Tensor]
] = {}


def _to_plan_tensors(plan: Any, dense_macs: int) -> _PlanTensors:
    """Tensors of a plan; its int64 gather is dropped (kept as int32 in the tensors only)."""
    outmap = torch.from_numpy(plan.outmap) if plan.outmap is not None else None
    gather = torch.from_numpy(plan.gather.astype(np.int32 if plan.gather.size < 2**31 else np.int64))
    plan.gather = np.zeros(0, dtype=np.int64)
    return _PlanTensors(
        groups=torch.from_numpy(plan.groups),
        segs=torch.from_numpy(plan.segs),
        ents=torch.from_numpy(plan.ents),
        # int32 indices: half the memory of int64, and index_select accepts them.
        gather=gather,
        total=plan.total,
        ratio=dense_macs / max(plan.executed_macs_per_pixel, 1),
        wrap=plan.wrap,
        efficiency=_efficiency(plan.groups, plan.bcast),
        bcast=plan.bcast,
        outmap=outmap,
        nfb=int(plan.groups[:, 1:5].max()) + 1 if plan.bcast and len(plan.groups) else 0,
        source=plan,
    )


def _best_plan(mask: np.ndarray, vidx: np.ndarray, dense_macs: int) -> _PlanTensors:
    """The diagonal or, for periods that do not divide 16, the pair-broadcast plan: whichever
    the efficiency model expects to run faster."""
    from ._kernel_plan import additive_period, build_weight_plan

    diag = _to_plan_tensors(build_weight_plan(mask, vidx), dense_macs)
    if _packing == "diagonal":
        return diag
    period = additive_period(mask)
    # Periods dividing 16 already share every tap set across blocks in the diagonal packing.
    if period is None or (16 % period == 0 and _packing != "pair"):
        return diag
    pair = _to_plan_tensors(build_weight_plan(mask, vidx, bcast=2), dense_macs)
    if _packing == "pair" or pair.ratio * pair.efficiency > diag.ratio * diag.efficiency:
        return pair
    return diag


def packing_of(layer: PSConv2d) -> str:
    """The weight packing of the layer's forward plan: 'diagonal' or 'pair' (built if needed)."""
    return "pair" if _state(layer).fwd.bcast else "diagonal"


def set_packing(name: str) -> None:
    """Force the weight packing of new plans: 'auto', 'diagonal' or 'pair' (tests, benchmarks)."""
    global _packing
    if name not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {name!r}")
    _packing = name
    _plans.clear()
    _states.clear()


# Kernel speed per executed MAC relative to oneDNN dense, by filter blocks per tile (F): one
# input load feeds F FMAs, and with F = 1 the kernel is load-bound (measured on Zen 5, 64-512
# channels).
_F_EFFICIENCY = {1: 0.35, 2: 0.65, 4: 0.9}
# The pair-broadcast loads are 8 bytes and never straddle cache lines: F = 1 runs far better.
_F_EFFICIENCY_BCAST = {1: 0.45, 2: 0.7, 4: 1.0}


def _efficiency(groups: np.ndarray, bcast: int = 0) -> float:
    if len(groups) == 0:
        return 1.0
    table = _F_EFFICIENCY_BCAST if bcast else _F_EFFICIENCY
    f = groups[:, 0].astype(np.float64)
    work = (groups[:, 8] - groups[:, 7]).astype(np.float64) * f
    eff = np.array([table.get(int(v), 0.35) for v in f])
    return float((work * eff).sum() / max(work.sum(), 1.0))


def _state(layer: PSConv2d) -> _LayerState:
    st = _states.get(layer)
    if st is not None and st.mask_ref is layer.mask:
        return st
    # The mask is a function of (pattern, shape, seed): copies of a model share plans.
    key = (layer.pattern.name, layer.out_channels, layer.in_channels, layer.seed)
    plans = _plans.get(key)
    mask = layer.mask.detach().cpu()
    if plans is None or not torch.equal(plans.mask.cpu(), mask):
        plans = _Plans(mask.clone())
        _plans[key] = plans
    st = _LayerState(plans)
    st.mask_ref = layer.mask
    _states[layer] = st
    return st


def _geometry(
    mode: int, H: int, W: int, stride: tuple[int, int], pad: tuple[int, int]
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    key = (mode, H, W, stride, pad)
    hit = _geometries.get(key)
    if hit is None:
        from ._kernel_plan import build_geometry

        geo = build_geometry(mode, H, W, stride, pad)
        hit = (geo, torch.from_numpy(geo.classes), torch.from_numpy(geo.pos))
        _geometries[key] = hit
    return hit


def _call(
    fn_name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    bias: torch.Tensor | None,
    B: int,
    cin: int,
    cout: int,
    plan: _PlanTensors,
    geo: tuple[Any, torch.Tensor, torch.Tensor],
    dy: torch.Tensor | None = None,
    extra: tuple[Any, ...] | None = None,
) -> None:
    k = _kern()
    g, classes, pos = geo
    nthreads = max(torch.get_num_threads(), 1)
    key = (id(classes), B, cin, cout, nthreads)
    args = plan.args_cache.get(key)
    if args is None:
        args = k.PscArgs(
            0,
            0,
            None,
            None,
            B,
            cin,
            cout,
            g.in_pix,
            g.out_pix,
            plan.groups.data_ptr(),
            plan.groups.shape[0],
            plan.segs.data_ptr(),
            plan.ents.data_ptr(),
            classes.data_ptr(),
            classes.shape[0],
            pos.data_ptr(),
            nthreads,
            int(plan.wrap),
            (ctypes.c_int * 3)(*_PMAX),
            0,
            plan.bcast,
            plan.outmap.data_ptr() if plan.outmap is not None else None,
            plan.outmap.shape[0] if plan.outmap is not None else 0,
            plan.nfb,
        )
        plan.args_cache[key] = args
    args.x = x.data_ptr()
    args.y = y.data_ptr()
    args.w = w.data_ptr() if w is not None else None
    args.bias = bias.data_ptr() if bias is not None else None
    if fn_name == "conv":
        rc = k.lib.psc_conv(ctypes.byref(args))
    elif fn_name == "gradw2":
        assert dy is not None and extra is not None
        chunks, H, W, Ho, Wo, ph, pw = extra
        rc = k.lib.psc_gradw2(
            ctypes.byref(args), dy.data_ptr(), chunks.data_ptr(), chunks.shape[0], H, W, Ho, Wo, ph, pw
        )
    else:
        assert dy is not None
        rc = k.lib.psc_gradw(ctypes.byref(args), ctypes.c_void_p(dy.data_ptr()))
    if rc != 0:
        raise MemoryError(f"psconv kernel {fn_name} failed (code {rc})")


_CL = torch.channels_last
# At stride 1, pair plans compute the weight gradient only when their groups are wide (four
# blocks from 256 channels at period 9: 2x the diagonal plan); below, the diagonal plan's
# input-pixel kernel is faster.
_GW_PAIR_MIN_EFFICIENCY = 0.9
# Plans whose expected efficiency is below this (mostly one-block groups) use the
# input-pixel weight-gradient kernel; it is slower for well-grouped plans (measured).
_GRADW2_BELOW = 0.6
# Largest pixel tile for 1, 2, 4 filter blocks per tile (0 = the kernel's own maximum).
_PMAX = tuple(int(v) for v in os.environ.get("PSCONV_PMAX", "0,0,0").split(","))


def _out_size(n: int, s: int, p: int) -> int:
    return (n + 2 * p - 3) // s + 1


def _forward_impl(
    layer: PSConv2d,
    st: _LayerState,
    x_cl: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    training: bool = False,
) -> torch.Tensor:
    B, Ci, H, W = x_cl.shape
    Co = layer.out_channels
    Ho, Wo = _out_size(H, layer.stride[0], layer.padding[0]), _out_size(W, layer.stride[1], layer.padding[1])
    out = torch.empty((B, Co, Ho, Wo), dtype=torch.float32, memory_format=_CL)
    if B == 0 or Ho <= 0 or Wo <= 0:
        return out
    geo = _geometry(0, H, W, layer.stride, layer.padding)
    packed = st.packed("fwd", values, cache=not training)
    b = bias.detach().contiguous() if bias is not None else None
    _call("conv", x_cl, out, packed, b, B, Ci, Co, st.fwd, geo)
    return out


class _PSConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        layer: Any,
        st: _LayerState,
    ) -> torch.Tensor:  # type: ignore[override]
        x_cl = x.contiguous(memory_format=_CL)
        out = _forward_impl(layer, st, x_cl, values, bias, training=values.requires_grad)
        ctx.save_for_backward(x_cl, values)
        ctx.st = st
        ctx.geom = (layer.out_channels, layer.stride, layer.padding)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels have no double backward
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x_cl, values = ctx.saved_tensors
        st: _LayerState = ctx.st
        Co, stride, padding = ctx.geom
        B, Ci, H, W = x_cl.shape
        g = gout.contiguous(memory_format=_CL)
        if g.dtype != torch.float32:
            g = g.float()
        Ho, Wo = g.shape[2], g.shape[3]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty((B, Ci, H, W), dtype=torch.float32, memory_format=_CL)
            geo = _geometry(1, H, W, stride, padding)
            packed = st.packed("bwd", values, cache=not ctx.needs_input_grad[1])
            _call("conv", g, gx, packed, None, B, Co, Ci, st.bwd, geo)
        if ctx.needs_input_grad[1]:
            stride1 = stride == (1, 1) and max(padding) <= 2
            plan = st.gw(stride1)
            dwp = torch.empty(plan.total, dtype=torch.float32)
            geo = _geometry(0, H, W, stride, padding)
            if stride1 and plan.efficiency < _GRADW2_BELOW:
                # Mostly one-block groups (e.g. period 9): this kernel loops over input pixels
                # with a zero-haloed dy, so blocks with different tap sets share input loads.
                extra = (_chunks(plan), H, W, Ho, Wo, padding[0], padding[1])
                _call("gradw2", x_cl, dwp, None, None, B, Ci, Co, plan, geo, dy=g, extra=extra)
            else:
                _call("gradw", x_cl, dwp, None, None, B, Ci, Co, plan, geo, dy=g)
            assert plan.inverse is not None
            gw = dwp.index_select(0, plan.inverse)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


def fast_supported(layer: PSConv2d, x: torch.Tensor) -> str | None:
    """None if the compiled kernels can run this call, else the reason they cannot."""
    if not kernels_available():
        return f"compiled kernels unavailable: {_kern().load_error}"
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


def uses_fast(layer: PSConv2d, x: torch.Tensor) -> bool:
    """Whether the current backend would run this call on the compiled kernels."""
    if _backend == "reference" or fast_supported(layer, x) is not None:
        return False
    if _backend == "fast":
        return True
    fwd = _state(layer).fwd
    return fwd.ratio * fwd.efficiency >= AUTO_MIN_RATIO


def fast_forward(layer: PSConv2d, x: torch.Tensor) -> torch.Tensor | None:
    if _backend == "reference":
        return None
    values, bias = layer.weight_values, layer.bias
    st = _states.get(layer)
    # The per-call checks are cached per layer and input kind: this runs once per layer call.
    key = (
        _backend,
        x.dtype,
        x.device,
        x.dim(),
        x.shape[1] if x.dim() > 1 else -1,
        values.dtype,
        values.device,
        None if bias is None else bias.dtype,
    )
    if st is None or st.mask_ref is not layer.mask or key not in st.decisions:
        if not uses_fast(layer, x):
            if st is not None and st.mask_ref is layer.mask:
                st.decisions[key] = False
            return None
        st = _state(layer)
        st.decisions[key] = True
    elif (
        not st.decisions[key]
        or x.shape[0] * max(layer.out_channels, x.shape[1]) * x.shape[2] * x.shape[3] >= 2**31
    ):
        return None
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not needs_grad:
        return _forward_impl(layer, st, x.contiguous(memory_format=_CL), values, bias)
    return _PSConvFunction.apply(x, values, bias, layer, st)
