"""Progress of long work, drawn by tqdm: a live bar on a terminal, nothing on a pipe or a log
file (there the caller prints one line per finished unit, e.g. per epoch), and nothing on any
process but rank 0 of a distributed run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["bar", "iterate", "on_terminal"]

T = TypeVar("T")


def on_terminal() -> bool:
    """True when a bar is worth drawing: stderr is a terminal and this is rank 0."""
    if os.environ.get("RANK", "0") != "0":
        return False
    return sys.stderr.isatty()


def bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True) -> Any:
    """A tqdm bar over ``total`` units, silent off a terminal (``update``/``close`` still work)."""
    return tqdm(
        total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
        disable=not (enabled and on_terminal()),
    )  # fmt: skip


def iterate(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` with a bar on a terminal."""
    with bar(total if total is not None else len(items), desc, unit=unit) as b:  # type: ignore[arg-type]
        for item in items:
            yield item
            b.update(1)
