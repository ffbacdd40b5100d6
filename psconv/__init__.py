"""psconv: convolutional networks with pre-defined sparse kernels (Kundu et al., 2020)."""

from .allocator import tune_allocator
from .checkpoint import Checkpoint, CheckpointError, load, load_checkpoint, read_header, save
from .convert import densify, eligible_convs, skipped_convs, sparsify
from .inference import load_program, optimize_for_inference
from .kernels import get_backend, set_backend
from .layers import PSConv2d
from .models import create_model, list_models, register_model
from .patterns import PAPER_PATTERNS, Pattern, parse_pattern, pattern_mask
from .profile import format_profile, profile

__version__ = "0.1.0"

__all__ = [
    "PAPER_PATTERNS",
    "Checkpoint",
    "CheckpointError",
    "PSConv2d",
    "Pattern",
    "create_model",
    "densify",
    "eligible_convs",
    "format_profile",
    "get_backend",
    "list_models",
    "load",
    "load_checkpoint",
    "load_program",
    "optimize_for_inference",
    "parse_pattern",
    "pattern_mask",
    "profile",
    "read_header",
    "register_model",
    "save",
    "set_backend",
    "skipped_convs",
    "sparsify",
    "tune_allocator",
]
