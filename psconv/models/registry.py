"""The model registry: ``create_model(name, pattern, ...)`` builds a paper network, sparsified.

Each builder returns the dense network; ``create_model`` applies the authors' initialisation
and then the pattern (paper rule: every 3x3 conv but the first). The model remembers its build
arguments in ``model.psconv_config`` so a checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..convert import sparsify
from ..patterns import parse_pattern

__all__ = [
    "DATASET_SHAPES",
    "register_model",
    "create_model",
    "list_models",
    "get_builder",
    "meta_skeleton",
    "init_paper",
]

ModelBuilder = Callable[[int, int], nn.Module]
# (image_size, num_classes) of the data sets the paper uses: the build arguments they imply.
DATASET_SHAPES: dict[str, tuple[int, int]] = {"cifar10": (32, 10), "tinyimagenet": (64, 200)}
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``fn(num_classes, image_size) -> dense nn.Module`` under ``name``."""

    def wrap(fn: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_builder(name: str) -> ModelBuilder:
    """The bare builder ``fn(num_classes, image_size) -> dense nn.Module`` (no init, no pattern)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def meta_skeleton(name: str, num_classes: int, image_size: int, stored_weights: int) -> nn.Module:
    """The dense network ``name`` laid out on PyTorch's meta device (no memory, no init), after
    checking that a file storing ``stored_weights`` numbers can describe it.

    A file's header could name ``num_classes``/``image_size`` far larger than its tensors: building
    that network for real would allocate gigabytes (or be killed) before any size check. A real
    file keeps at least 1 of 9 weights of every layer, so its dense network has at most 9x them
    (the allowance covers BatchNorm statistics and small heads).
    """
    builder = get_builder(name)
    _check_build_args(num_classes, image_size)
    with torch.device("meta"):
        skeleton = builder(num_classes, image_size)
    needed = sum(p.numel() for p in skeleton.parameters())
    if needed > 9 * stored_weights + 1_000_000:
        raise ValueError(
            f"its header describes a {name} of {needed:,} weights, the file stores {stored_weights:,}"
        )
    return skeleton


def _check_build_args(num_classes: object, image_size: object) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (32 or 64), got {image_size!r}")


def init_paper(model: nn.Module) -> None:
    """Authors' init: conv xavier-uniform gain 0.5 (bias 0), BN weight 0.5, Linear N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight, gain=0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def create_model(
    name: str,
    pattern: str = "dense",
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> nn.Module:
    """Build registered model ``name`` with kernel ``pattern`` (e.g. ``"PSD1_P16"``).

    ``image_size`` 32 is CIFAR-10, 64 Tiny ImageNet (the classifier widens to match).
    """
    builder = get_builder(name)
    spec = parse_pattern(pattern)
    _check_build_args(num_classes, image_size)
    model = builder(num_classes, image_size)
    init_paper(model)
    sparsify(model, spec, seed=seed)
    model.psconv_config = {  # type: ignore[assignment]
        "name": name,
        "pattern": spec.name,
        "num_classes": num_classes,
        "image_size": image_size,
        "seed": seed,
    }
    return model
