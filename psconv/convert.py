"""Apply a kernel pattern to any PyTorch model, and turn it back into plain PyTorch."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
from torch import nn

from .layers import PSConv2d
from .patterns import Pattern, parse_pattern

__all__ = ["sparsify", "densify", "eligible_convs", "layer_seed", "sparse_layers"]

ConvFilter = Callable[[str, nn.Conv2d], bool]


def layer_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th converted layer: distinct per layer, equal on every machine."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _is_eligible(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def eligible_convs(model: nn.Module, skip_first: bool = True, include: ConvFilter | None = None) -> list[str]:
    """Names of the convs the paper's rule sparsifies: 3x3, groups 1, not the first conv.

    ``include(name, conv)`` overrides the rule when given (``skip_first`` still applies).
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if skip_first and convs:
        convs = convs[1:]
    rule = include if include is not None else (lambda _name, conv: True)
    return [name for name, conv in convs if _is_eligible(conv) and rule(name, conv)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def sparsify(
    model: nn.Module,
    pattern: str | Pattern,
    *,
    seed: int = 0,
    skip_first: bool = True,
    include: ConvFilter | None = None,
) -> nn.Module:
    """Replace every eligible ``nn.Conv2d`` of ``model`` by a :class:`PSConv2d` (in place).

    Eligible (the paper's rule): 3x3, groups 1, dilation 1, and not the model's first conv;
    1x1 convs and linear layers stay dense. ``include(name, conv) -> bool`` narrows or widens
    the choice; ``skip_first=False`` converts the first conv too. Kept weights are copied from
    the dense ones. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify: model must be a torch.nn.Module, got {type(model).__name__}")
    spec = parse_pattern(pattern)
    if spec.is_dense:
        return model
    names = eligible_convs(model, skip_first=skip_first, include=include)
    for index, name in enumerate(names):
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        _set_submodule(model, name, PSConv2d.from_conv(conv, spec, seed=layer_seed(seed, index)))
    return model


def sparse_layers(model: nn.Module) -> dict[str, dict[str, object]]:
    """``{name: {"pattern": spec, "seed": seed}}`` of every PSConv2d: enough to rebuild masks."""
    return {
        name: {"pattern": m.pattern.name, "seed": m.seed}
        for name, m in model.named_modules()
        if isinstance(m, PSConv2d)
    }


def apply_sparse_layers(model: nn.Module, layers: dict[str, dict[str, object]]) -> nn.Module:
    """Convert exactly the named convs of ``model`` with their recorded pattern and seed."""
    for name, spec in layers.items():
        try:
            conv = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"model has no layer {name!r} to make sparse") from exc
        if isinstance(conv, PSConv2d):
            continue
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"layer {name!r} is {type(conv).__name__}, not a Conv2d")
        layer = PSConv2d.from_conv(conv, str(spec["pattern"]), seed=int(spec["seed"]))  # type: ignore[call-overload]
        _set_submodule(model, name, layer)
    return model


def densify(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every PSConv2d replaced by an equivalent ``nn.Conv2d``."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, PSConv2d):
            _set_submodule(dense, name, module.to_conv())
    return dense
