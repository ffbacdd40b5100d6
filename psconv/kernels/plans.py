"""Kernel plans as tensors, cached per mask, and the efficiency model that ``auto`` trusts.

A mask is a pure function of ``(pattern, out_channels, in_channels, seed)``, so plans are keyed
by that tuple (:func:`plans_for`) and shared by every layer, copy of a model and exported
program with the same layer: no layer object or tensor data is needed to find them, which is
what lets the custom operators run under ``torch.compile`` and ``torch.export``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..patterns import mask_array
from . import binding, switches
from .plan_builder import (
    GeometryPlan,
    additive_period,
    build_geometry,
    build_gradw_chunks,
    build_weight_plan,
    part_major_order,
)

__all__ = ["PlanTensors", "Plans", "plans_for", "geometry", "expected_speedup"]

# Columns of a plan's ``groups`` rows (csrc/psconv_kernels.h): filter blocks per tile, the
# blocks, then the group's segment and entry ranges.
G_F, G_FB0, G_FB_END, G_ENT_BEGIN, G_ENT_END = 0, 1, 5, 7, 8

# Kernel speed per executed MAC relative to oneDNN dense, by filter blocks per tile (F): one
# input load feeds F FMAs, and with F = 1 the kernel is load-bound (measured on Zen 5, 64-512
# channels). Pair-broadcast loads are 8 bytes and never straddle cache lines: F = 1 runs better.
_F_EFFICIENCY = {1: 0.35, 2: 0.65, 4: 0.9}
_F_EFFICIENCY_BCAST = {1: 0.45, 2: 0.7, 4: 1.0}
# At stride 1, pair plans compute the weight gradient only when their groups are wide (four
# blocks from 256 channels at period 9); below, the diagonal plan's input-pixel kernel is faster.
GW_PAIR_MIN_EFFICIENCY = 0.9


@dataclass
class PlanTensors:
    """One weight plan (see :mod:`.plan_builder`) as int32 tensors the kernels read."""

    groups: torch.Tensor
    segs: torch.Tensor
    ents: torch.Tensor
    gather: torch.Tensor  # packed position (as the forward kernels read it) -> value index (nnz: a zero)
    total: int  # packed floats
    ratio: float  # dense MACs / executed lane-MACs
    wrap: bool
    efficiency: float  # expected speed relative to dense per executed MAC
    bcast: int = 0  # 2: pair-broadcast packing, whose output lanes go back through outmap
    outmap: torch.Tensor | None = None
    nfb: int = 0
    source: Any = None  # the numpy plan (weight-gradient work lists are built from it)
    inverse: torch.Tensor | None = None  # value index -> position in the weight gradient's layout
    lanes: int = 16  # part width of the forward kernels' layout (binding.part_lanes())
    chunks: torch.Tensor | None = None  # work list of the stride-1 weight-gradient kernel
    # ctypes argument blocks per (geometry, batch, threads): a fresh 24-field structure costs
    # more than a small layer's kernel at batch 1.
    args_cache: dict[tuple[int, ...], Any] = field(default_factory=dict)
    # Packed weights per values tensor, for inference: id -> (weakref, version, data_ptr, packed).
    packed_cache: dict[int, tuple[Any, int, int, torch.Tensor]] = field(default_factory=dict)

    def packed(self, values: torch.Tensor, cache: bool) -> torch.Tensor:
        """``values`` in this plan's packed order. Cached per live tensor, version and storage
        (``.data =`` swaps it without a new version) when ``cache`` (inference); in training
        the values change every step, so never kept.
        Tensors made under ``torch.inference_mode`` carry no version counter to tell an
        in-place change by: they are packed on every call."""
        if values.is_inference():
            cache = False
        key = id(values)
        hit = self.packed_cache.get(key)
        if hit is not None and hit[0]() is values and hit[1:3] == (values._version, values.data_ptr()):
            return hit[3]
        ext = torch.cat([values.detach().reshape(-1), values.new_zeros(1)])
        packed = ext.index_select(0, self.gather)
        if cache:
            self.packed_cache[key] = (weakref.ref(values), values._version, values.data_ptr(), packed)
        else:
            self.packed_cache.pop(key, None)
        return packed

    def work_chunks(self) -> torch.Tensor:
        """Work list of the stride-1 weight-gradient kernel (built on the first backward)."""
        if self.chunks is None:
            self.chunks = torch.from_numpy(build_gradw_chunks(self.source))
        return self.chunks

    def expected_speedup(self) -> float:
        return self.ratio * self.efficiency


def _efficiency(groups: np.ndarray, bcast: int = 0) -> float:
    if len(groups) == 0:
        return 1.0
    table = _F_EFFICIENCY_BCAST if bcast else _F_EFFICIENCY
    f = groups[:, G_F].astype(np.float64)
    work = (groups[:, G_ENT_END] - groups[:, G_ENT_BEGIN]).astype(np.float64) * f
    eff = np.array([table.get(int(v), 0.35) for v in f])
    return float((work * eff).sum() / max(work.sum(), 1.0))


def _to_tensors(plan: Any, dense_macs: int) -> PlanTensors:
    outmap = torch.from_numpy(plan.outmap) if plan.outmap is not None else None
    # int32 indices: half the memory of int64, and index_select accepts them.
    # Built in the [entry][block][16] layout; the running build may read it in narrower parts.
    lanes = binding.part_lanes()
    gather = plan.gather[part_major_order(plan.groups, plan.total, lanes)] if lanes != 16 else plan.gather
    gather = torch.from_numpy(gather.astype(np.int32 if gather.size < 2**31 else np.int64))
    plan.gather = np.zeros(0, dtype=np.int64)
    nfb = int(plan.groups[:, G_FB0:G_FB_END].max()) + 1 if plan.bcast and len(plan.groups) else 0
    return PlanTensors(
        groups=torch.from_numpy(plan.groups),
        segs=torch.from_numpy(plan.segs),
        ents=torch.from_numpy(plan.ents),
        gather=gather,
        total=plan.total,
        ratio=dense_macs / max(plan.executed_macs_per_pixel, 1),
        wrap=plan.wrap,
        efficiency=_efficiency(plan.groups, plan.bcast),
        bcast=plan.bcast,
        outmap=outmap,
        nfb=nfb,
        source=plan,
        lanes=lanes,
    )


def _best_plan(mask: np.ndarray, vidx: np.ndarray, dense_macs: int) -> PlanTensors:
    """The diagonal or, for periods that do not divide 16, the pair-broadcast plan: whichever
    the efficiency model expects to run faster (or the packing the switch forces)."""
    packing = switches.get_packing()
    diag = _to_tensors(build_weight_plan(mask, vidx), dense_macs)
    if packing == "diagonal":
        return diag
    period = additive_period(mask)
    # Periods dividing 16 already share every tap set across blocks in the diagonal packing.
    if period is None or (16 % period == 0 and packing != "pair"):
        return diag
    pair = _to_tensors(build_weight_plan(mask, vidx, bcast=2), dense_macs)
    if packing == "pair" or pair.expected_speedup() > diag.expected_speedup():
        return pair
    return diag


class Plans:
    """The plans of one mask: forward, transposed (grad-input) and weight-gradient."""

    def __init__(self, mask: np.ndarray) -> None:
        self.co, self.ci = mask.shape[0], mask.shape[1]
        self._np = mask.reshape(self.co, self.ci, 9).astype(bool)
        self.nnz = int(self._np.sum())
        self.dense_macs = self.co * self.ci * 9
        self._fwd: PlanTensors | None = None
        self._diag: PlanTensors | None = None
        self._bwd: PlanTensors | None = None

    def _vidx(self) -> np.ndarray:
        flat = self._np.reshape(-1)
        vidx = np.full(flat.shape, -1, dtype=np.int64)
        vidx[flat] = np.arange(self.nnz)
        return vidx.reshape(self._np.shape)

    @property
    def fwd(self) -> PlanTensors:
        if self._fwd is None:
            with _real_tensors():
                self._fwd = _best_plan(self._np, self._vidx(), self.dense_macs)
        return self._fwd

    @property
    def bwd(self) -> PlanTensors:
        # Built on the first backward only: inference never needs the transposed plan.
        if self._bwd is None:
            mt = np.ascontiguousarray(self._np.transpose(1, 0, 2))
            vt = np.ascontiguousarray(self._vidx().transpose(1, 0, 2))
            with _real_tensors():
                self._bwd = _best_plan(mt, vt, self.dense_macs)
        return self._bwd

    def gw(self, stride1: bool) -> PlanTensors:
        """Plan of the weight-gradient kernels, whose packed layout the gradient is computed in
        (its ``inverse`` maps it back to value order): the forward plan, except a pair plan of
        narrow groups at stride 1, where the diagonal plan's input-pixel kernel is faster."""
        plan = self.fwd
        if stride1 and plan.bcast and plan.efficiency < GW_PAIR_MIN_EFFICIENCY:
            if self._diag is None:
                self._diag = _to_tensors(build_weight_plan(self._np, self._vidx()), self.dense_macs)
            plan = self._diag
        if plan.inverse is None:
            gather = plan.gather.numpy()
            inverse = np.full(self.nnz, -1, dtype=np.int64)
            sel = gather < self.nnz
            inverse[gather[sel]] = np.nonzero(sel)[0]
            if (inverse < 0).any():  # pragma: no cover - the plan covers every kept weight
                raise AssertionError("packed plan misses kept weights")
            # The weight-gradient kernels write the [entry][block][16] layout on every build.
            inverse = part_major_order(plan.groups.numpy(), plan.total, plan.lanes)[inverse]
            plan.inverse = torch.from_numpy(inverse.astype(np.int32))
        return plan


_plans: dict[tuple[str, int, int, int], Plans] = {}
_geometries: dict[
    tuple[int, int, int, tuple[int, int], tuple[int, int]], tuple[GeometryPlan, torch.Tensor, torch.Tensor]
] = {}
switches._on_packing_change.append(_plans.clear)


def plans_for(pattern: str, out_channels: int, in_channels: int, seed: int) -> Plans:
    """The (cached) plans of the 3x3 mask ``pattern`` draws for this layer shape and seed."""
    key = (pattern, out_channels, in_channels, seed)
    plans = _plans.get(key)
    if plans is None:
        plans = _plans[key] = Plans(mask_array(pattern, out_channels, in_channels, 3, seed=seed))
    return plans


def _real_tensors() -> Any:
    """Plans are real tensors, even when first asked for while a network is traced (export,
    compile): the tracer's modes would make them fake, and fakes have no data for the kernels."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def expected_speedup(pattern: str, out_channels: int, in_channels: int, seed: int) -> float:
    """What the efficiency model expects of the forward kernel over oneDNN for this layer."""
    return plans_for(pattern, out_channels, in_channels, seed).fwd.expected_speedup()


def geometry(
    mode: int, H: int, W: int, stride: tuple[int, int], pad: tuple[int, int]
) -> tuple[GeometryPlan, torch.Tensor, torch.Tensor]:
    """Pixel classes of an image size (mode 0: convolution, 1: its transpose), cached."""
    key = (mode, H, W, tuple(stride), tuple(pad))
    hit = _geometries.get(key)
    if hit is None:
        geo = build_geometry(mode, H, W, tuple(stride), tuple(pad))  # type: ignore[arg-type]
        with _real_tensors():
            hit = _geometries[key] = (geo, torch.from_numpy(geo.classes), torch.from_numpy(geo.pos))
    return hit
