"""The paper's networks, registered by name: ``create_model("resnet18", "PSD1_P16")``.

The registry lives in :mod:`.registry`; each network module registers itself on import, and
importing this package imports them all (they import only the registry: no cycle).
"""

from . import mobilenetv2, resnet, shufflenet, vgg  # noqa: F401  (registration)
from .registry import (
    DATASET_SHAPES,
    create_model,
    get_builder,
    init_paper,
    list_models,
    meta_skeleton,
    register_model,
)

__all__ = [
    "DATASET_SHAPES",
    "create_model",
    "get_builder",
    "init_paper",
    "list_models",
    "meta_skeleton",
    "register_model",
]
