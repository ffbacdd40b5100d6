import pytest
import torch
from torch import nn

import psconv
from psconv import PSConv2d, densify, sparsify


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 3),
    )


def test_paper_rule_skips_first_1x1_grouped_and_linear():
    net = sparsify(small_net(), "PS4_P4")
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "ReLU", "PSConv2d", "Conv2d", "Conv2d", "PSConv2d", "Flatten", "Linear"]


def test_rule_is_overridable():
    net = sparsify(small_net(), "PS4_P4", skip_first=False, include=lambda name, conv: name != "5")
    assert isinstance(net[0], PSConv2d) and isinstance(net[2], PSConv2d)
    assert isinstance(net[5], nn.Conv2d) and not isinstance(net[5], PSConv2d)


def test_sparsify_keeps_kept_weights_and_densify_matches():
    torch.manual_seed(0)
    dense = small_net()
    before = dense[2].weight.detach().clone()
    net = sparsify(dense, "PSD1_P8")
    torch.testing.assert_close(net[2].weight, before * net[2].mask)
    plain = densify(net)
    assert not any(isinstance(m, PSConv2d) for m in plain.modules())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(plain(x), net(x))
    assert any(isinstance(m, PSConv2d) for m in net.modules()), "densify must not modify its input"


def test_random_patterns_differ_per_layer_but_are_reproducible():
    a = sparsify(small_net(), "pSC2", seed=5)
    b = sparsify(small_net(), "pSC2", seed=5)
    assert torch.equal(a[2].mask, b[2].mask)
    assert not torch.equal(a[2].mask.reshape(-1)[:64], a[5].mask.reshape(-1)[:64])


def test_dense_spec_is_a_no_op():
    net = small_net()
    assert sparsify(net, "dense") is net
    assert not any(isinstance(m, PSConv2d) for m in net.modules())


def test_bad_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown pattern 'bogus'"):
        psconv.sparsify(small_net(), "bogus")


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        psconv.sparsify("resnet18", "PSD1_P16")
