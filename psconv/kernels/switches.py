"""The public switches of the fast path: which backend runs ``PSConv2d`` and which weight packing
new plans use. Each has an environment variable (read once, at import) and a setter.

- Backend (``PSCONV_BACKEND``, :func:`set_backend`): ``'reference'`` never runs the compiled
  kernels (scatter + ``F.conv2d``; the test oracle); ``'fast'`` runs them wherever they can (CPU,
  float32, 3x3), else falls back silently; ``'auto'`` (default) runs them only for layers where
  they beat oneDNN: predicted by the efficiency model (:mod:`.plans`) on AVX-512, where it was
  calibrated, measured once per layer shape elsewhere (:mod:`.autotune`, ``PSCONV_AUTOTUNE``).
- Packing (``PSCONV_PACKING``, :func:`set_packing`): ``'diagonal'``, ``'pair'`` or ``'auto'``
  (default: per plan, by the efficiency model); see :mod:`.plan_builder`.
- Instruction set (``PSCONV_KERNEL_ISA=avx512|avx2|neon|generic``, read by the compiled library
  itself): forces a build this CPU can run; :func:`psconv.kernels.kernel_info` says which runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = [
    "BACKENDS",
    "PACKINGS",
    "AUTO_MIN_RATIO",
    "set_backend",
    "get_backend",
    "using_backend",
    "set_packing",
    "get_packing",
]

BACKENDS = ("auto", "reference", "fast")
PACKINGS = ("auto", "diagonal", "pair")
# 'auto' uses the kernel when the expected speedup (dense MACs / executed lane-MACs, times the
# kernel's relative efficiency) is at least this; below it oneDNN is the safer choice.
AUTO_MIN_RATIO = 1.25

_state = {
    "backend": os.environ.get("PSCONV_BACKEND", "auto"),
    "packing": os.environ.get("PSCONV_PACKING", "auto"),
}
if _state["backend"] not in BACKENDS:
    _state["backend"] = "auto"
if _state["packing"] not in PACKINGS:
    _state["packing"] = "auto"
_on_packing_change: list = []  # callbacks that drop plans built under the old packing


def set_backend(name: str) -> None:
    """Force a backend: 'auto' (fast where it wins), 'reference' or 'fast'."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _state["backend"] = name


def get_backend() -> str:
    return _state["backend"]


@contextlib.contextmanager
def using_backend(name: str) -> Iterator[None]:
    """:func:`set_backend` for the length of a ``with`` block (restored after it, errors too)."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def set_packing(name: str) -> None:
    """Force the weight packing of new plans: 'auto', 'diagonal' or 'pair' (tests, benchmarks)."""
    if name not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {name!r}")
    _state["packing"] = name
    for callback in _on_packing_change:
        callback()


def get_packing() -> str:
    return _state["packing"]
