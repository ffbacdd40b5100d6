"""Interleaved wall-clock timing: the one way psconv compares two implementations' speed.

Used by ``psconv bench``, its deployment rows and ``auto``'s on-machine measurements. Every
round runs each candidate once (a block of calls), so slow drifts of the machine (frequency,
other tenants) hit all candidates alike, and the median of the rounds is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["calls_per_sample", "interleaved"]


def calls_per_sample(fn: Callable[[], Any], target_s: float, cap: int = 200) -> int:
    """Calls per sample so that one sample lasts about ``target_s`` (single short calls are
    noisy). ``fn`` runs twice: a warm-up (plans, packed weights, primitives), then timed."""
    fn()
    t = time.perf_counter()
    fn()
    return max(1, min(cap, int(target_s / max(time.perf_counter() - t, 1e-6))))


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, calls: dict[str, int], settle_s: float = 0.0
) -> dict[str, float]:
    """Median seconds per call of each function over ``rounds`` round-robin samples of
    ``calls[k]`` calls each.

    ``settle_s`` > 0 pauses that long and makes one untimed call before each sample. Runtimes
    with their own thread pools (ONNX Runtime) keep spinning for tens of milliseconds after a
    call; on a machine with few cores that steals the next candidate's cores (a sparse ResNet18
    at batch 1 ran 1.3x slower right after ONNX Runtime than 50 ms later:
    ``benchmarks/bench_settle.py``). A deployed process runs one runtime, so each is timed after
    the other's threads have parked.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            if settle_s > 0:
                time.sleep(settle_s)
                fn()
            n = calls[k]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[k].append((time.perf_counter() - t) / n)
    return {k: statistics.median(v) for k, v in samples.items()}
