"""The compiled kernel library (built by ``setup.py`` from ``csrc/``), loaded through ctypes.

The library has no Python or torch headers in it: it takes raw pointers, so it builds in pip's
isolated environment. Loading never raises: when the library is missing or broken,
``available()`` is False and every layer stays on the reference path.

One typed wrapper per C function (:func:`conv`, :func:`gradw`, :func:`gradw2`); ``PscArgs``
mirrors ``psc_args`` of ``csrc/psconv_kernels.h`` field for field, and :data:`ABI_VERSION` must
equal the library's ``psc_abi_version()`` (a test checks both against the header).
"""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path
from typing import Any

import torch  # noqa: F401  (loads torch's libgomp first, so the library shares its thread pool)

__all__ = [
    "ABI_VERSION",
    "available",
    "isa",
    "part_lanes",
    "lib",
    "load_error",
    "PscArgs",
    "library_path",
    "conv",
    "gradw",
    "gradw2",
]

_PKG = Path(__file__).resolve().parent
ABI_VERSION = 6


class PscArgs(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("w", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("B", ctypes.c_int),
        ("cin", ctypes.c_int),
        ("cout", ctypes.c_int),
        ("in_pix", ctypes.c_int),
        ("out_pix", ctypes.c_int),
        ("groups", ctypes.c_void_p),
        ("ng", ctypes.c_int),
        ("segs", ctypes.c_void_p),
        ("ents", ctypes.c_void_p),
        ("classes", ctypes.c_void_p),
        ("nc", ctypes.c_int),
        ("pos", ctypes.c_void_p),
        ("nthreads", ctypes.c_int),
        ("wrap", ctypes.c_int),
        ("pmax", ctypes.c_int * 3),
        ("stream_out", ctypes.c_int),
        ("bcast", ctypes.c_int),
        ("outmap", ctypes.c_void_p),
        ("nout", ctypes.c_int),
        ("nfb", ctypes.c_int),
        ("res", ctypes.c_void_p),
        ("relu", ctypes.c_int),
    ]


def library_path() -> str | None:
    """Path of the compiled library: $PSCONV_KERNEL_LIB, else the one next to this file."""
    env = os.environ.get("PSCONV_KERNEL_LIB")
    if env:
        return env if os.path.exists(env) else None
    hits = sorted(
        glob.glob(str(_PKG / "_psconv_kernels*.so")) + glob.glob(str(_PKG / "_psconv_kernels*.pyd"))
    )
    return hits[0] if hits else None


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("PSCONV_DISABLE_KERNELS", "") not in ("", "0"):
        return None, "disabled by PSCONV_DISABLE_KERNELS"
    path = library_path()
    if path is None:
        return (
            None,
            "compiled library not found (the build was skipped or failed); reinstall with a C++ compiler",
        )
    try:
        handle = ctypes.CDLL(path)
        if handle.psc_abi_version() != ABI_VERSION:
            return (
                None,
                f"{path}: ABI version {handle.psc_abi_version()}, expected {ABI_VERSION}; reinstall psconv",
            )
        for name in ("psc_conv",):
            fn = getattr(handle, name)
            fn.argtypes = [ctypes.POINTER(PscArgs)]
            fn.restype = ctypes.c_int
        handle.psc_gradw.argtypes = [ctypes.POINTER(PscArgs), ctypes.c_void_p]
        handle.psc_gradw.restype = ctypes.c_int
        handle.psc_gradw2.argtypes = [ctypes.POINTER(PscArgs), ctypes.c_void_p, ctypes.c_void_p] + [
            ctypes.c_int
        ] * 7
        handle.psc_gradw2.restype = ctypes.c_int
        handle.psc_isa.restype = ctypes.c_int
        handle.psc_part_lanes.restype = ctypes.c_int
    except (OSError, AttributeError) as exc:
        return None, f"{path}: {exc}"
    return handle, None


lib, load_error = _load()


def available() -> bool:
    return lib is not None


# psc_isa()'s codes (csrc/dispatch.cpp).
ISA_NAMES = {0: "generic", 1: "avx512", 2: "avx2", 3: "neon"}


def _isa_of(handle: Any) -> str:
    return "none" if handle is None else ISA_NAMES.get(handle.psc_isa(), "generic")


# Read once at load, as plain values: torch.compile reads them without tracing a ctypes call
# (which would break the graph at every layer).
_ISA = _isa_of(lib)
_PART_LANES = 16 if lib is None else int(lib.psc_part_lanes())


def isa() -> str:
    """The kernels' instruction set: 'avx512', 'avx2', 'neon', 'generic', or 'none' (not loaded).
    The library picks it once, when loaded (csrc/dispatch.cpp)."""
    return _ISA


def part_lanes() -> int:
    """Lanes one register of the running build holds (16 on AVX-512, 8 on AVX2, 4 on NEON): the
    part width of the packed weights the forward kernels read (``csrc/psconv_kernels.h``).
    16 when the library is not loaded (nothing reads packed weights then)."""
    return _PART_LANES


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise MemoryError(f"psconv kernel {name} failed (code {rc}): out of memory for its work buffers")


def conv(args: PscArgs) -> None:
    """``y = conv(x, w) + bias`` over the plan in ``args`` (forward, or grad-input with a
    transposed plan)."""
    assert lib is not None
    _check(lib.psc_conv(ctypes.byref(args)), "conv")


def gradw(args: PscArgs, dy: int) -> None:
    """Weight gradient, output-pixel tiles: ``y`` (packed layout) from ``x`` and ``dy``."""
    assert lib is not None
    _check(lib.psc_gradw(ctypes.byref(args), ctypes.c_void_p(dy)), "gradw")


def gradw2(
    args: PscArgs, dy: int, chunks: int, nchunks: int, H: int, W: int, Ho: int, Wo: int, ph: int, pw: int
) -> None:
    """Weight gradient, input-pixel kernel over a zero-haloed ``dy`` (plans of one-block groups)."""
    assert lib is not None
    _check(lib.psc_gradw2(ctypes.byref(args), dy, chunks, nchunks, H, W, Ho, Wo, ph, pw), "gradw2")
