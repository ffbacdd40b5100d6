"""The MAC counts behind benchmarks/bench_peak.py (README cites its GMAC/s figures)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from psconv.layers import PSConv2d

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_peak.py"
_spec = importlib.util.spec_from_file_location("bench_peak", _PATH)
assert _spec is not None and _spec.loader is not None
bench_peak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_peak)


@pytest.mark.parametrize("pattern", ["PSD4_P8", "PSD1_P16", "PS1_P9"])
@pytest.mark.parametrize("size", [4, 9])
def test_mac_counts_match_a_convolution_of_ones(pattern: str, size: int) -> None:
    layer = PSConv2d(32, 32, 3, padding=1, pattern=pattern, bias=False)
    dense, kept, executed = bench_peak.mac_counts(layer, 2, size)
    ones = torch.ones(2, 32, size, size)
    # Summing a convolution of ones counts exactly the MACs whose tap lies inside the image.
    assert dense == int(F.conv2d(ones, torch.ones(32, 32, 3, 3), padding=1).sum())
    assert kept == int(F.conv2d(ones, layer.mask.float(), padding=1).sum())
    assert executed >= kept


def test_diagonal_plans_execute_no_padding_lanes() -> None:
    layer = PSConv2d(64, 64, 3, padding=1, pattern="PSD4_P8", bias=False)
    _, kept, executed = bench_peak.mac_counts(layer, 1, 8)
    assert executed == kept
