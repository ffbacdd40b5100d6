"""Kernel calls with their reference results, for checking a build of ``csrc/`` on its own.

Each case is one call of ``psc_conv`` (forward or gradient w.r.t. the input), ``psc_gradw`` or
``psc_gradw2``: the argument block, the plan and pixel arrays, the inputs, and what the call
must produce, computed by PyTorch in float64 from the dense masked kernel (independent of the
compiled kernels). Plans come from the library's own builders, as the operators build them.

    python tests/native/kernel_cases.py write FILE LANES [FILE LANES ...]  # for replay.cpp
    python tests/native/kernel_cases.py check  # replay here with the loaded library

LANES is the part width of the build that will replay FILE (``psc_part_lanes()``: 4 for NEON,
16 for the generic build): the forward kernels' packed weights are laid out for it. Cases keep
them in the [entry][block][16] layout until then.

``check`` runs on whatever build ``PSCONV_KERNEL_ISA`` selects (tests/test_native.py runs it
once per instruction set this CPU has).
"""

from __future__ import annotations

import ctypes
import struct
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from psconv import kernels
from psconv.kernels import binding
from psconv.kernels.ops import _args, out_size
from psconv.kernels.plan_builder import GRP_STRIDE, part_major_order
from psconv.kernels.plans import PlanTensors, geometry, plans_for
from psconv.layers import PSConv2d

KINDS = {"conv": 0, "gradw": 1, "gradw2": 2}
INT_ARRAYS = ("groups", "segs", "ents", "classes", "pos", "outmap", "chunks", "inverse")
FLOAT_ARRAYS = ("x", "w", "bias", "res", "dy", "expected")
PATTERNS = ("PS4_P4", "PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9", "PS2_P6", "pSC4", "pSC1", "dense")
# (in channels, out channels, H, W, stride, padding, batch): odd channel counts, channel
# wrap-around, stride 2, no padding, a first layer, pixels that fill no tile, and rows long
# enough for every ISA's widest fixed-stride tiles (128-channel pixel stride).
SHAPES = (
    (17, 70, 9, 7, 1, 1, 2),
    (64, 64, 6, 6, 1, 1, 2),
    (32, 48, 7, 7, 2, 1, 2),
    (16, 16, 4, 5, 1, 0, 3),
    (3, 16, 8, 8, 1, 1, 1),
    (128, 64, 3, 30, 1, 1, 1),
)
# Small maps (128-256 channels, 1-2 images): the forward's small-map kernel
# (csrc/kernel_small.inc; builds that enable it), partial blocks (200 filters), and
# its pixel limit (8x8 at batch 1). Forward only, with the epilogue: the weights are large.
SMALL_MAP_PATTERNS = ("PSD4_P8", "PS4_P4", "PSD2_P8")
SMALL_MAP_SHAPES = (
    (256, 256, 4, 4, 1, 1, 1),
    (256, 200, 6, 6, 1, 1, 1),
    (256, 256, 2, 3, 1, 1, 2),
    (256, 256, 8, 8, 1, 1, 1),
    (128, 128, 7, 9, 1, 1, 1),
)
HEADER = b"PSCCASE2"


@dataclass
class Case:
    label: str
    kind: str
    ints: dict[str, int]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    out_len: int = 0


def _i32(t: torch.Tensor | None) -> np.ndarray:
    return np.zeros(0, np.int32) if t is None else t.detach().numpy().astype(np.int32).ravel()


def _f32(t: torch.Tensor | None) -> np.ndarray:
    return np.zeros(0, np.float32) if t is None else t.detach().float().contiguous().numpy().ravel()


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).contiguous()


def _packed_blocks(plan: PlanTensors, values: torch.Tensor) -> np.ndarray:
    """``values`` packed in the [entry][block][16] layout (this process's plans read its own)."""
    here = plan.packed(values, False).numpy()
    blocks = np.empty_like(here)
    blocks[part_major_order(plan.groups.numpy(), plan.total, plan.lanes)] = here
    return blocks


def for_lanes(c: Case, lanes: int) -> dict[str, np.ndarray]:
    """The case's arrays with its forward weights laid out for a build of ``lanes``-float parts."""
    if c.kind != "conv":
        return c.arrays
    w = c.arrays["w"]
    return {**c.arrays, "w": w[part_major_order(c.arrays["groups"].reshape(-1, GRP_STRIDE), w.size, lanes)]}


def _plan_ints(plan, geo, B: int, cin: int, cout: int) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    args = _args(plan, geo, B, cin, cout)
    ints = {k: int(getattr(args, k)) for k in ("B", "cin", "cout", "in_pix", "out_pix", "ng", "nc",
                                              "wrap", "bcast", "nout", "nfb")}  # fmt: skip
    ints.update(pmax0=args.pmax[0], pmax1=args.pmax[1], pmax2=args.pmax[2])
    arrays = {"groups": _i32(plan.groups), "segs": _i32(plan.segs), "ents": _i32(plan.ents),
              "classes": _i32(geo[1]), "pos": _i32(geo[2]), "outmap": _i32(plan.outmap)}  # fmt: skip
    return ints, arrays


def _layer_cases(
    pattern: str, shape: tuple[int, ...], epilogue: bool, forward_only: bool = False
) -> list[Case]:
    ci, co, H, W, s, p, B = shape
    torch.manual_seed(hash((pattern, shape)) % 2**31)
    layer = PSConv2d(ci, co, 3, s, p, bias=True, pattern=pattern, seed=1)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(B, ci, H, W, dtype=torch.float64, requires_grad=True)
    v = layer.weight_values.detach().double().requires_grad_(True)
    dense = torch.zeros(layer.mask.numel(), dtype=torch.float64).index_put((layer.flat_index,), v)
    conv = F.conv2d(x, dense.view(layer.weight_shape), None, s, p)
    Ho, Wo = out_size(H, s, p), out_size(W, s, p)
    dy = torch.randn(B, co, Ho, Wo, dtype=torch.float64)
    gx, gv = torch.autograd.grad(conv, (x, v), dy)
    res = torch.randn(B, co, Ho, Wo, dtype=torch.float64) if epilogue else None
    y = conv.detach() + layer.bias.double().view(1, -1, 1, 1)
    if epilogue:
        y = (y + res).relu()
    plans = plans_for(pattern, co, ci, 1)
    name = f"{pattern} {ci}->{co} {H}x{W} s{s} p{p} b{B} {kernels.get_packing()}"
    cases = []

    ints, arrays = _plan_ints(plans.fwd, geometry(0, H, W, (s, s), (p, p)), B, ci, co)
    ints.update(relu=int(epilogue))
    arrays.update(x=_f32(_nhwc(x.detach())), w=_packed_blocks(plans.fwd, layer.weight_values),
                  bias=_f32(layer.bias), res=_f32(_nhwc(res)) if epilogue else _f32(None),
                  expected=_f32(_nhwc(y)))  # fmt: skip
    cases.append(Case(f"forward {name}", "conv", ints, arrays, B * Ho * Wo * co))
    if forward_only:
        return cases

    ints, arrays = _plan_ints(plans.bwd, geometry(1, H, W, (s, s), (p, p)), B, co, ci)
    arrays.update(x=_f32(_nhwc(dy)), w=_packed_blocks(plans.bwd, layer.weight_values),
                  expected=_f32(_nhwc(gx)))  # fmt: skip
    cases.append(Case(f"grad-input {name}", "conv", ints, arrays, B * H * W * ci))

    stride1 = s == 1 and p <= 2
    plan = plans.gw(stride1)
    kinds = ["gradw", "gradw2"] if stride1 else ["gradw"]
    for kind in kinds:
        ints, arrays = _plan_ints(plan, geometry(0, H, W, (s, s), (p, p)), B, ci, co)
        ints.update(H=H, W=W, Ho=Ho, Wo=Wo, ph=p, pw=p)
        chunks = plan.work_chunks() if kind == "gradw2" else None
        arrays.update(x=_f32(_nhwc(x.detach())), dy=_f32(_nhwc(dy)), chunks=_i32(chunks),
                      inverse=_i32(plan.inverse), expected=_f32(gv))  # fmt: skip
        cases.append(Case(f"{kind} {name}", kind, ints, arrays, plan.total))
    return cases


def build_cases() -> list[Case]:
    cases = []
    torch.set_num_threads(2)
    for packing in ("diagonal", "pair"):
        kernels.set_packing(packing)
        try:
            for pattern in PATTERNS:
                for i, shape in enumerate(SHAPES):
                    cases += _layer_cases(pattern, shape, epilogue=i == 0)
            if packing == "diagonal":
                for pattern in SMALL_MAP_PATTERNS:
                    for shape in SMALL_MAP_SHAPES:
                        cases += _layer_cases(pattern, shape, epilogue=True, forward_only=True)
        finally:
            kernels.set_packing("auto")
    return cases


# ----------------------------------------------------------------------------- file
INT_FIELDS = ("B", "cin", "cout", "in_pix", "out_pix", "ng", "nc", "wrap", "pmax0", "pmax1", "pmax2",
              "bcast", "nout", "nfb", "relu", "H", "W", "Ho", "Wo", "ph", "pw")  # fmt: skip


def write(path: str, cases: list[Case], lanes: int) -> None:
    """Little-endian: header, the part width, count; per case its kind, the INT_FIELDS, then each
    array as a count and its values (INT_ARRAYS int32, FLOAT_ARRAYS float32), the output length,
    the label."""
    with open(path, "wb") as fh:
        fh.write(HEADER + struct.pack("<ii", lanes, len(cases)))
        for c in cases:
            fh.write(struct.pack("<i", KINDS[c.kind]))
            fh.write(struct.pack(f"<{len(INT_FIELDS)}i", *(c.ints.get(k, 0) for k in INT_FIELDS)))
            arrays = for_lanes(c, lanes)
            for name in INT_ARRAYS + FLOAT_ARRAYS:
                a = arrays.get(name, np.zeros(0, np.int32 if name in INT_ARRAYS else np.float32))
                a = a.astype("<i4" if name in INT_ARRAYS else "<f4")
                fh.write(struct.pack("<q", a.size) + a.tobytes())
            label = c.label.encode()
            fh.write(struct.pack("<qi", c.out_len, len(label)) + label)


# ----------------------------------------------------------------------------- replay here
def _ptr(a: np.ndarray) -> int | None:
    return a.ctypes.data if a.size else None


def replay(c: Case) -> np.ndarray:
    """The call run by the loaded library; gradw kinds return the gradient in value order."""
    a = for_lanes(c, binding.part_lanes())
    get = {k: a.get(k, np.zeros(0, np.float32)) for k in INT_ARRAYS + FLOAT_ARRAYS}
    out = np.zeros(c.out_len + 16, np.float32)
    y = out[(-out.ctypes.data // 4) % 16 :][: c.out_len]  # 64-byte aligned, like torch's buffers
    i = c.ints
    args = binding.PscArgs(
        _ptr(get["x"]), y.ctypes.data, _ptr(get["w"]), _ptr(get["bias"]), i["B"], i["cin"], i["cout"],
        i["in_pix"], i["out_pix"], _ptr(get["groups"]), i["ng"], _ptr(get["segs"]), _ptr(get["ents"]),
        _ptr(get["classes"]), i["nc"], _ptr(get["pos"]), 2, i["wrap"],
        (ctypes.c_int * 3)(i["pmax0"], i["pmax1"], i["pmax2"]), 0, i["bcast"], _ptr(get["outmap"]),
        i["nout"], i["nfb"], _ptr(get["res"]), i.get("relu", 0),
    )  # fmt: skip
    if c.kind == "conv":
        binding.conv(args)
        return y.copy()
    dy = get["dy"].ctypes.data
    if c.kind == "gradw":
        binding.gradw(args, dy)
    else:
        ch = get["chunks"]
        binding.gradw2(
            args, dy, ch.ctypes.data, ch.size // 70, i["H"], i["W"], i["Ho"], i["Wo"], i["ph"], i["pw"]
        )
    return y[get["inverse"]]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / (np.abs(want).max() + 1e-30))


def check(cases: list[Case], tol: float = 1e-4) -> list[str]:
    """Labels (with their error) of the cases this library gets wrong."""
    bad = []
    for c in cases:
        err = rel_error(replay(c), c.arrays["expected"])
        if not err < tol:
            bad.append(f"{c.label}: relative error {err:.2e}")
    return bad


def main(argv: list[str]) -> int:
    targets = list(zip(argv[1::2], argv[2::2]))
    if (
        argv[:1] == ["write"]
        and len(argv) % 2 == 1
        and targets
        and all(n in ("4", "8", "16") for _, n in targets)
    ):
        cases = build_cases()
        for path, lanes in targets:
            write(path, cases, int(lanes))
            print(f"{len(cases)} kernel cases for {lanes}-lane builds written to {path}")
        return 0
    if argv == ["check"]:
        cases = build_cases()
        bad = check(cases)
        print(f"{binding.isa()}: {len(cases) - len(bad)} of {len(cases)} kernel cases match the reference")
        for line in bad:
            print("  FAIL", line)
        return 1 if bad else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
