import warnings

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


class PaddedSame(nn.Conv2d):
    """Like timm's Conv2dSame: pads by the input size in its own forward (padding=0 here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.pad(x, (0, 2, 0, 2)))


class Tagged(nn.Conv2d):
    """A subclass that only marks the layer: it computes what nn.Conv2d does."""


def odd_convs_net() -> nn.Sequential:
    hooked = nn.Conv2d(8, 8, 3, padding=1)
    hooked.register_forward_hook(lambda module, inputs, out: out * 2)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        PaddedSame(8, 8, 3, padding=0),
        torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1)),
        hooked,
        Tagged(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 8, 1),
    )


def test_convs_that_compute_more_than_a_conv_stay_dense_and_the_model_is_unchanged():
    torch.manual_seed(0)
    net = odd_convs_net()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    with pytest.warns(UserWarning) as caught:
        sparsify(net, "PSD2_P8")
    assert [type(m).__name__ for m in net] == [
        "Conv2d", "PaddedSame", "ParametrizedConv2d", "Conv2d", "PSConv2d", "Conv2d", "Conv2d"
    ]  # fmt: skip
    # One warning per reason, naming the layers.
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert (
        "1 3x3 conv(s) left dense" in messages[0]
        and "(PaddedSame computes its own forward): '1'" in messages[0]
    )
    assert "(it has forward hooks): '3'" in messages[1]
    assert "(its weight is parametrized" in messages[2] and "'2'" in messages[2]
    # The converted layer's masked weight is the only change: the others compute as before.
    torch.manual_seed(0)
    ref = odd_convs_net()
    with torch.no_grad():
        ref[4].weight.mul_(net[4].mask)
        torch.testing.assert_close(net(x), ref(x))
        assert not torch.allclose(net(x), want), "the Tagged conv was made sparse"


def test_skipped_convs_says_why_each_conv_stays_dense():
    assert psconv.skipped_convs(odd_convs_net()) == {
        "0": "the model's first conv (the paper's rule; skip_first=False converts it)",
        "1": "PaddedSame computes its own forward",
        "2": "its weight is parametrized (weight_norm, spectral_norm, ...)",
        "3": "it has forward hooks",
        "5": "dilation (2, 2)",
        "6": "kernel 1x1",
    }
    assert psconv.skipped_convs(small_net(), include=lambda name, conv: name != "2") == {
        "0": "the model's first conv (the paper's rule; skip_first=False converts it)",
        "2": "left out by include",
        "3": "kernel 1x1",
        "4": "groups=2",
    }


def test_plain_models_and_convs_left_out_by_include_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(small_net(), "PSD2_P8")
        sparsify(odd_convs_net(), "PSD2_P8", include=lambda name, conv: name in ("4",))


def test_a_checkpoint_layer_on_a_conv_with_its_own_forward_is_refused():
    from psconv.convert import apply_sparse_layers

    net = odd_convs_net()
    with pytest.raises(
        ValueError, match="layer '1' cannot be made sparse: PaddedSame computes its own forward"
    ):
        apply_sparse_layers(net, {"1": {"pattern": "PSD2_P8", "seed": 0}})


class TiedConvs(nn.Module):
    """One 3x3 conv registered under two names and applied twice (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(self.stem(x))))


def test_a_conv_shared_under_two_names_stays_one_module(tmp_path):
    net = sparsify(TiedConvs(), "PSD2_P8")
    assert isinstance(net.a, PSConv2d) and net.b is net.a
    plain = densify(net)
    assert plain.a is plain.b and not isinstance(plain.a, PSConv2d)
    path = psconv.save(net, tmp_path / "tied.safetensors")
    back = psconv.load(path, model=TiedConvs())
    assert back.b is back.a and isinstance(back.a, PSConv2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))
        torch.testing.assert_close(plain(x), net(x))
