"""Every registered model builds with every paper pattern and trains a step; light baselines."""

from __future__ import annotations

import pytest
import torch

import psconv
from psconv.patterns import PAPER_PATTERNS


@pytest.mark.parametrize("name", psconv.list_models())
def test_every_model_every_pattern_forward_backward(name: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    for pattern in PAPER_PATTERNS:
        model = psconv.create_model(name, pattern)
        out = model(x)
        assert out.shape == (2, 10)
        out.logsumexp(1).sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (name, pattern)


@pytest.mark.parametrize("name", ["mobilenetv2", "shufflenet"])
def test_light_baselines_tiny_imagenet_shape(name: str) -> None:
    model = psconv.create_model(name, "PSD1_P16", num_classes=200, image_size=64).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_light_baseline_complexity() -> None:
    # MobileNetV2 matches the paper's 0.090 GMACs; ShuffleNetG2 is the common CIFAR config.
    mnv2 = psconv.profile(psconv.create_model("mobilenetv2"), (1, 3, 32, 32), file_size=False)
    assert round(mnv2["macs"] / 1e9, 3) == 0.091 and round(mnv2["params"] / 1e6, 2) == 2.30
    shuf = psconv.profile(psconv.create_model("shufflenet"), (1, 3, 32, 32), file_size=False)
    assert round(shuf["params"] / 1e6, 2) == 0.89
    # Depthwise convs are not eligible: the light nets stay dense under any pattern.
    sparse = psconv.profile(psconv.create_model("mobilenetv2", "PSD1_P16"), (1, 3, 32, 32), file_size=False)
    assert sparse["params"] == mnv2["params"]
