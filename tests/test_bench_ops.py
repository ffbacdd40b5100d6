"""benchmarks/bench_ops.py compares like with like: each pair computes one tensor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from psconv.layers import PSConv2d

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ops.py"
_spec = importlib.util.spec_from_file_location("bench_ops", _PATH)
assert _spec is not None and _spec.loader is not None
bench_ops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_ops)


@pytest.mark.parametrize("pattern", ["PSD4_P8", "PS1_P9"])
@pytest.mark.parametrize("op", bench_ops.OPS)
def test_each_pair_computes_the_same_tensor(pattern: str, op: str) -> None:
    torch.manual_seed(0)
    pairs = bench_ops.op_pairs(PSConv2d(32, 32, pattern=pattern), batch=2, size=6)
    ours, dense = pairs[f"psconv {op}"](), pairs[f"dense {op}"]()
    assert ours.shape == dense.shape
    torch.testing.assert_close(ours, dense, rtol=1e-4, atol=1e-4)
