"""Errors a user can cause with a file, shared by the modules that read files."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, foreign or of an unknown version."""
