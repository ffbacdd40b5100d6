"""``auto`` by measurement: the first time a layer shape is seen, time the kernel against oneDNN.

The efficiency model (:mod:`.plans`) was calibrated on AVX-512 machines; on any other
instruction set (AVX2, NEON, the portable build) nothing says the kernel beats oneDNN for a
given layer, and losing to dense is the one thing ``auto`` must never do. There, as cuDNN's
benchmark mode does, ``auto`` runs both on the layer's shape (interleaved, median of a few
rounds, a few milliseconds to a second per shape) and keeps the kernel only where it is clearly
faster. Decisions are kept for the process and on disk, keyed by everything that changes the
answer: instruction sets (ours and oneDNN's cap), the kernels' ABI version, threads, torch
version, pattern, channels, stride, padding, image size, batch (1, or up to 16), packing, and
whether gradients are computed.

A decision picks the code that computes a layer, and so the last bits of its result: a run
that must repeat bit for bit records the decisions it took (:func:`used_decisions`) and a
repeat pins them (:func:`pin_decisions`) ahead of the cache and of any measurement.

Switch (``PSCONV_AUTOTUNE``, :func:`set_autotune`): ``'auto'`` (default: measure where the model
is not calibrated), ``'on'`` (measure everywhere), ``'off'`` (never: the model where it is
calibrated, oneDNN elsewhere). Cache: ``$PSCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/psconv``,
else ``~/.cache/psconv``; a damaged cache file is ignored (and rewritten), never trusted.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import timing
from ..fileio import atomic_write
from ..patterns import mask_array
from . import binding
from .switches import get_packing

__all__ = [
    "AUTOTUNE_MODES",
    "MIN_SPEEDUP",
    "set_autotune",
    "get_autotune",
    "measures",
    "wins",
    "cache_key",
    "cache_path",
    "pin_decisions",
    "pinned_decisions",
    "used_decisions",
    "reset_used",
    "generation",
]

AUTOTUNE_MODES = ("auto", "on", "off")
# Keep the kernel only when it is at least this much faster: timing noise must not flip a
# layer onto the slower path.
MIN_SPEEDUP = 1.1
CACHE_VERSION = 3  # 2: the dense side runs a channels-last kernel; 3: small-map forward kernel
_state: dict[str, Any] = {
    "mode": os.environ.get("PSCONV_AUTOTUNE", "auto").lower(),
    "decisions": None,  # the disk cache, read once
    "pinned": {},  # decisions a run repeats: ahead of the cache and of measuring
    "used": {},  # decisions taken since reset_used()
    "generation": 0,  # bumped by pins and resets: per-layer memos of decisions drop theirs
}
if _state["mode"] not in AUTOTUNE_MODES:
    _state["mode"] = {"1": "on", "0": "off"}.get(_state["mode"], "auto")


def set_autotune(mode: str) -> None:
    """'auto' (measure where the efficiency model is not calibrated), 'on' or 'off'."""
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"autotune must be one of {AUTOTUNE_MODES}, got {mode!r}")
    _state["mode"] = mode


def get_autotune() -> str:
    return _state["mode"]


def measures(calibrated: bool) -> bool:
    """Whether 'auto' decides by measurement on this instruction set."""
    mode = _state["mode"]
    return mode == "on" or (mode == "auto" and not calibrated)


def cache_path() -> Path:
    base = os.environ.get("PSCONV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "psconv"
    )
    return Path(base) / f"autotune-v{CACHE_VERSION}.json"


def _machine_key() -> str:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    # The ABI version changes with the kernels' layout: decisions about older kernels are stale.
    kernels = f"{binding.isa()}:abi{binding.ABI_VERSION}"
    small_maps = os.environ.get("PSCONV_SMALL_MAPS", "")  # which forward runs small maps
    if small_maps:
        kernels += f":small-maps-{small_maps}"
    return f"{kernels}|onednn:{cap}|threads:{torch.get_num_threads()}|torch:{torch.__version__}"


def _decisions() -> dict[str, Any]:
    if _state["decisions"] is None:
        found: dict[str, Any] = {}
        path = cache_path()
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                found = {
                    k: v for k, v in data.get("layers", {}).items() if isinstance(v, dict) and "fast" in v
                }
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path}: unreadable autotune cache ignored ({exc})", stacklevel=3)
        _state["decisions"] = found
    return _state["decisions"]


def _save() -> None:
    try:
        text = json.dumps({"version": CACHE_VERSION, "layers": _decisions()}, indent=1, sort_keys=True)
        atomic_write(cache_path(), text + "\n")
    except OSError:
        pass  # a read-only home: decisions still hold for this process


def pin_decisions(decisions: dict[str, Any]) -> None:
    """Take these decisions (cache key -> ``{"fast": bool, ...}``, as :func:`used_decisions`
    gives them) ahead of the cache and of any measurement, in this process; replaces earlier
    pins. Keys name the machine, so decisions of another CPU kind never apply."""
    pinned = {}
    for key, value in decisions.items():
        if not isinstance(key, str) or not isinstance(value, dict) or not isinstance(value.get("fast"), bool):
            raise ValueError(
                f"kernel choice {key!r}: expected an object with a true/false 'fast', got {value!r}"
            )
        pinned[key] = dict(value)
    _state["pinned"] = pinned
    _state["memo"] = {}
    _state["generation"] += 1


def pinned_decisions() -> dict[str, Any]:
    """The decisions :func:`pin_decisions` set, whether or not a layer has asked for them."""
    return {key: dict(value) for key, value in _state["pinned"].items()}


def used_decisions() -> dict[str, Any]:
    """Every decision a layer call has taken since :func:`reset_used`: cache key -> decision."""
    return {key: dict(value) for key, value in _state["used"].items()}


def reset_used() -> None:
    _state["used"] = {}
    _state["memo"] = {}  # every layer asks by key again, so that its decision is recorded
    _state["generation"] += 1


def generation() -> int:
    """Changes whenever decisions may have changed (pins, resets): part of every memo's key."""
    return _state["generation"]


def _median_ms(
    fns: dict[str, Callable[[], Any]], rounds: int = 5, target_s: float = 0.004
) -> dict[str, float]:
    calls = {k: timing.calls_per_sample(fn, target_s, cap=50) for k, fn in fns.items()}
    return {k: v * 1e3 for k, v in timing.interleaved(fns, rounds, calls).items()}


def _measure(pattern: str, cout: int, cin: int, seed: int, shape: tuple[int, ...]) -> dict[str, Any]:
    # Ordinary tensors even when the model runs under torch.inference_mode: the timed operator
    # caches by version counter, which inference tensors lack.
    with torch.inference_mode(False):
        return _measure_shape(pattern, cout, cin, seed, shape)


def _measure_shape(pattern: str, cout: int, cin: int, seed: int, shape: tuple[int, ...]) -> dict[str, Any]:
    from .ops import conv

    s0, s1, p0, p1, H, W, batch, grads = shape
    train = bool(grads)
    mask = mask_array(pattern, cout, cin, 3, seed)
    values = torch.randn(int(mask.sum()), requires_grad=train)
    # The dense alternative as a channels-last network runs it: kernel in the input's layout.
    weight = torch.randn(cout, cin, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(train)
    x = torch.randn(batch, cin, H, W).contiguous(memory_format=torch.channels_last).requires_grad_(train)
    st, pd = [s0, s1], [p0, p1]

    def fast() -> None:
        y = conv(x, values, None, pattern, seed, cout, st, pd, False, not train)
        if train:
            y.sum().backward()

    def dense() -> None:
        y = F.conv2d(x, weight, None, (s0, s1), (p0, p1))
        if train:
            y.sum().backward()

    with torch.set_grad_enabled(train):
        ms = _median_ms({"fast": fast, "dense": dense})
    return {"fast_ms": round(ms["fast"], 4), "dense_ms": round(ms["dense"], 4),
            "fast": ms["dense"] >= MIN_SPEEDUP * ms["fast"]}  # fmt: skip


def cache_key(pattern: str, cout: int, cin: int, seed: int, shape: tuple[int, ...]) -> str:
    """The decision's name in the cache. ``shape``: (stride h, stride w, padding h, padding w,
    H, W, batch, computes gradients)."""
    return f"{_machine_key()}|{get_packing()}|{pattern}|{cout}|{cin}|{seed}|" + ",".join(
        str(int(v)) for v in shape
    )


def wins(pattern: str, cout: int, cin: int, seed: int, shape: tuple[int, ...]) -> bool:
    """Whether the kernel beats oneDNN on this layer shape (measured once, then remembered)."""
    decisions = _decisions()
    # Every call of every layer asks: a tuple lookup first, the cache's string key on a miss.
    memo = _state.setdefault("memo", {})
    if memo.get("of") is not decisions:
        memo.clear()
        memo["of"] = decisions
    fast_key = (pattern, cout, cin, seed, shape, torch.get_num_threads(), get_packing())
    found = memo.get(fast_key)
    if found is not None:
        return found
    key = cache_key(pattern, cout, cin, seed, shape)
    hit = _state["pinned"].get(key) or decisions.get(key)
    if hit is None:
        from .plans import _real_tensors

        with _real_tensors():
            hit = decisions[key] = _measure(pattern, cout, cin, seed, shape)
        _save()
    _state["used"][key] = hit
    memo[fast_key] = bool(hit["fast"])
    return memo[fast_key]
