"""Argument types shared by the commands: a count of zero or less is refused by argparse, with
the flag's name, before any work starts (``psconv bench --batch 0`` used to time empty batches)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1 (batch sizes, repeats, image sides)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (thread counts, where 0 means the default)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
