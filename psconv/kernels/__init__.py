"""The fast path of ``PSConv2d``: compiled CPU kernels for pattern-sparse 3x3 convolutions.

Read top-down:

- :mod:`.switches`: the public switches (backend, weight packing; the ISA is the library's);
- :mod:`.plan_builder`: how weights and pixels are laid out for the kernels (numpy, pure);
- :mod:`.plans`: plans as tensors, cached per mask, and the efficiency model ``auto`` uses;
- :mod:`.binding`: the compiled library (``csrc/``) through ctypes, one wrapper per function;
- :mod:`.ops`: the kernels as PyTorch operators (``torch.ops.psconv.*``) with autograd;
- :mod:`.autotune`: ``auto`` by measurement, where the efficiency model is not calibrated;
- :mod:`.dispatch`: which path a layer call takes;
- :mod:`.bound`: repeated eager inference calls of a layer, prepared once.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from . import binding
from .autotune import get_autotune, set_autotune
from .dispatch import fast_forward, fast_supported, uses_fast
from .plans import plans_for
from .switches import (
    AUTO_MIN_RATIO,
    BACKENDS,
    PACKINGS,
    get_backend,
    get_packing,
    set_backend,
    set_packing,
    using_backend,
)

if TYPE_CHECKING:
    from ..layers import PSConv2d

__all__ = [
    "AUTO_MIN_RATIO",
    "BACKENDS",
    "PACKINGS",
    "fast_forward",
    "fast_supported",
    "get_autotune",
    "get_backend",
    "get_packing",
    "kernel_info",
    "kernels_available",
    "layer_plans",
    "onednn_isa",
    "packing_of",
    "set_autotune",
    "set_backend",
    "set_packing",
    "uses_fast",
    "using_backend",
]


def kernels_available() -> bool:
    """True when the compiled kernel library is loaded."""
    return binding.available()


def kernel_info() -> dict[str, Any]:
    """Library path, instruction set in use, why it is unavailable (if it is), and the backend."""
    return {
        "available": binding.available(),
        "isa": binding.isa(),
        "path": binding.library_path(),
        "error": binding.load_error,
        "backend": get_backend(),
        "autotune": get_autotune(),
    }


@functools.lru_cache(maxsize=1)
def onednn_isa() -> str:
    """The instruction set oneDNN (PyTorch's dense convolutions) runs here, from its verbose log
    in a short subprocess (it honours ``ONEDNN_MAX_CPU_ISA``); 'unknown' if it says nothing."""
    code = "import torch; torch.nn.functional.conv2d(torch.randn(2, 16, 8, 8), torch.randn(16, 16, 3, 3))"
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.stdout.splitlines():
        if ",isa:" in line:
            return line.split(",isa:", 1)[1].strip()
    return "unknown"


def layer_plans(layer: PSConv2d) -> Any:
    """The (shared, cached) kernel plans of a layer's mask."""
    return plans_for(layer.pattern.name, layer.out_channels, layer.in_channels, layer.seed)


def packing_of(layer: PSConv2d) -> str:
    """The weight packing of the layer's forward plan: 'diagonal' or 'pair' (built if needed)."""
    return "pair" if layer_plans(layer).fwd.bcast else "diagonal"
