"""Process allocator tuning for CPU training and benchmarks (glibc only).

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks above its mmap
threshold (at most 32 MiB, e.g. one 64-channel 32x32 activation at batch 128) with a fresh
``mmap`` and returns them with ``munmap`` on free, so every training step page-faults and
zeroes its large activations again: on a 2-core machine that is about a third of a sparse
ResNet18 step and a fifth of a dense one (measured). Keeping freed memory in the heap instead
(no mmap, no trimming) is what jemalloc or tcmalloc would give through ``LD_PRELOAD``; here it
is two ``mallopt`` calls. The cost: the process keeps its peak heap until it exits.

It changes the whole process, so the library never does it on import: the CLI commands that
compute (train, eval, bench, demo, predict) call :func:`tune_allocator`, and library users may
call it themselves. ``PSCONV_TUNE_MALLOC=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator", "allocator_state"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state = "default"


def tune_allocator() -> str:
    """Keep freed memory in the heap (glibc); returns what was done, as a short phrase."""
    global _state
    if _state == "tuned":
        return _state
    if os.environ.get("PSCONV_TUNE_MALLOC", "1") == "0":
        _state = "default (PSCONV_TUNE_MALLOC=0)"
        return _state
    if not sys.platform.startswith("linux"):
        _state = f"default (not glibc: {sys.platform})"
        return _state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _state = "default (no glibc mallopt)"
        return _state
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl and others lack it or refuse.
    if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1:
        _state = "tuned"
    else:
        _state = "default (mallopt refused)"
    return _state


def allocator_state() -> str:
    """'default', 'tuned', or 'default (why not tuned)'."""
    return _state
