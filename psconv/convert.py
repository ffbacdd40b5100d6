"""Apply a kernel pattern to any PyTorch model, and turn it back into plain PyTorch."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
from torch import nn
from torch.nn.utils import parametrize

from .layers import PSConv2d
from .patterns import Pattern, parse_pattern

__all__ = ["sparsify", "densify", "eligible_convs", "skipped_convs", "layer_seed", "sparse_layers"]

ConvFilter = Callable[[str, nn.Conv2d], bool]


def layer_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th converted layer: distinct per layer, equal on every machine."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _shape_reason(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` is not the paper's kind of layer (a 3x3, ungrouped, undilated, zero-padded
    conv), or None."""
    if conv.kernel_size != (3, 3):
        return f"kernel {conv.kernel_size[0]}x{conv.kernel_size[1]}"
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if conv.dilation != (1, 1):
        return f"dilation {conv.dilation}"
    if conv.padding_mode != "zeros":
        return f"padding mode {conv.padding_mode!r}"
    if isinstance(conv.padding, str):
        return f"padding {conv.padding!r}"
    return None


def _behaviour_reason(conv: nn.Conv2d) -> str | None:
    """Why a PSConv2d in place of ``conv`` would compute something else, or None.

    A PSConv2d computes ``nn.Conv2d.forward`` on its masked weight. Subclasses that compute more
    (timm's ``Conv2dSame`` pads by the input size, ``StdConv2d`` standardises its weight),
    parametrized weights (``weight_norm``) and hooks would be dropped without a word.
    """
    if parametrize.is_parametrized(conv):
        return "its weight is parametrized (weight_norm, spectral_norm, ...)"
    cls = type(conv)
    if cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward:
        return f"{cls.__name__} computes its own forward"
    if conv._forward_pre_hooks or conv._forward_hooks:
        return "it has forward hooks"
    return None


def _conv_reasons(
    model: nn.Module, skip_first: bool, include: ConvFilter | None
) -> list[tuple[str, nn.Conv2d, str | None]]:
    """Every ``nn.Conv2d`` of ``model`` (PSConv2d are not), with why it stays dense, or None."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    out: list[tuple[str, nn.Conv2d, str | None]] = []
    for i, (name, conv) in enumerate(convs):
        reason = _shape_reason(conv)
        if reason is None and i == 0 and skip_first:
            reason = "the model's first conv (the paper's rule; skip_first=False converts it)"
        if reason is None and include is not None and not include(name, conv):
            reason = "left out by include"
        if reason is None:
            reason = _behaviour_reason(conv)
        out.append((name, conv, reason))
    return out


def eligible_convs(model: nn.Module, skip_first: bool = True, include: ConvFilter | None = None) -> list[str]:
    """Names of the convs :func:`sparsify` converts: 3x3, groups 1, not the first conv (the
    paper's rule), and computing no more than ``nn.Conv2d`` does (:func:`skipped_convs`).

    ``include(name, conv) -> bool``, when given, narrows the choice.
    """
    return [name for name, _, reason in _conv_reasons(model, skip_first, include) if reason is None]


def skipped_convs(
    model: nn.Module, skip_first: bool = True, include: ConvFilter | None = None
) -> dict[str, str]:
    """``{name: why}`` for every ``nn.Conv2d`` that :func:`sparsify` leaves dense."""
    return {name: reason for name, _, reason in _conv_reasons(model, skip_first, include) if reason}


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered: a module shared under several names (tied
    weights) stays one module, and so stays tied."""
    names = [name for name, m in model.named_modules(remove_duplicate=False) if m is old]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)


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
    1x1 convs and linear layers stay dense. ``include(name, conv) -> bool`` narrows the
    choice; ``skip_first=False`` converts the first conv too. A conv whose module computes more
    than ``nn.Conv2d`` does (a subclass with its own forward, a parametrized weight, hooks)
    stays dense, with a warning: :func:`skipped_convs` says why each conv stayed dense. Kept
    weights are copied from the dense ones. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify: model must be a torch.nn.Module, got {type(model).__name__}")
    spec = parse_pattern(pattern)
    if spec.is_dense:
        return model
    reasons = _conv_reasons(model, skip_first, include)
    chosen = [conv for _, conv, reason in reasons if reason is None]
    for index, conv in enumerate(chosen):
        _replace(model, conv, PSConv2d.from_conv(conv, spec, seed=layer_seed(seed, index)))
    _warn_left_dense(reasons)
    return model


def _warn_left_dense(reasons: list[tuple[str, nn.Conv2d, str | None]]) -> None:
    """Convs of the paper's shape left dense because they compute more than a conv: the user
    asked for them to be sparse and should hear that they are not (one warning per reason)."""
    odd: dict[str, list[str]] = {}
    for name, conv, reason in reasons:
        if reason is not None and reason == _behaviour_reason(conv):
            odd.setdefault(reason, []).append(repr(name))
    for reason, names in odd.items():
        listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        warnings.warn(
            f"sparsify: {len(names)} 3x3 conv(s) left dense, since a PSConv2d would compute something "
            f"else ({reason}): {listed}. psconv.skipped_convs(model) lists every conv left dense and why",
            stacklevel=3,
        )


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
        reason = _behaviour_reason(conv)
        if reason is not None:
            raise ValueError(f"layer {name!r} cannot be made sparse: {reason}")
        layer = PSConv2d.from_conv(conv, str(spec["pattern"]), seed=int(spec["seed"]))  # type: ignore[call-overload]
        _replace(model, conv, layer)
    return model


def densify(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every PSConv2d replaced by an equivalent ``nn.Conv2d``."""
    dense = copy.deepcopy(model)
    for module in list(dense.modules()):
        if isinstance(module, PSConv2d):
            _replace(dense, module, module.to_conv())
    return dense
