"""Kernel patterns: parse a spec string and build the boolean mask of a layer.

Pure functions only (no nn.Module). The mask is a function of (spec, shape, seed), so a
checkpoint never needs to store an index (Kundu et al. 2020; the project README has the rules).

Spec grammar (3x3 kernels, positions 0..8 row-major):

- ``dense`` or ``pSC9``: every position kept.
- ``pSC<n>``: each kernel keeps ``n`` positions drawn at random (seeded) once.
- ``PS<n>_P<m>``: periodic sparse, support ``((f + c) mod m) mod K``.
- ``PSD<n>_P<m>``: periodic with one dense kernel per period, ``s = (f + c + 1) mod m``;
  ``s == 0`` is dense, else support ``(s - 1) mod K``.

A custom support list may follow a periodic spec in brackets, each support written as its
positions' digits: ``PS2_P3[01,34,78]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Pattern", "parse_pattern", "pattern_mask", "BUILTIN_SUPPORTS", "PAPER_PATTERNS"]

# The reference README's support lists, in its order (the order is part of the index rule).
BUILTIN_SUPPORTS: dict[int, tuple[tuple[int, ...], ...]] = {
    4: ((0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8)),
    2: ((0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8)),
    1: tuple((p,) for p in range(9)),
}

PAPER_PATTERNS: tuple[str, ...] = (
    "pSC9",
    "pSC4",
    "pSC2",
    "pSC1",
    "PS4_P4",
    "PS2_P6",
    "PS1_P9",
    "PSD4_P8",
    "PSD4_P16",
    "PSD2_P8",
    "PSD2_P16",
    "PSD1_P8",
    "PSD1_P16",
)

_ALLOWED = (
    "allowed: 'dense' (= 'pSC9'), 'pSC<n>' with n in 1..9, 'PS<n>_P<m>' or 'PSD<n>_P<m>' "
    "with n in {1, 2, 4} (or any n with a custom support list such as 'PS2_P3[01,34,78]') "
    "and period m >= 1 (PS) or m >= 2 (PSD)"
)
_SPEC_RE = re.compile(r"^(?P<fam>pSC|PSD|PS)(?P<n>\d+)(?:_P(?P<m>\d+))?(?:\[(?P<sup>[^\]]*)\])?$")


@dataclass(frozen=True)
class Pattern:
    """A parsed kernel pattern. ``family`` is 'dense', 'random', 'periodic' or 'periodic_dense'."""

    family: str
    n: int = 9
    period: int = 1
    supports: tuple[tuple[int, ...], ...] = ()
    custom: bool = False

    @property
    def name(self) -> str:
        """Canonical spec string (parses back to an equal Pattern)."""
        if self.family == "dense":
            return "dense"
        if self.family == "random":
            return f"pSC{self.n}"
        head = f"{'PSD' if self.family == 'periodic_dense' else 'PS'}{self.n}_P{self.period}"
        if self.custom:
            head += "[" + ",".join("".join(str(p) for p in s) for s in self.supports) + "]"
        return head

    @property
    def is_dense(self) -> bool:
        return self.family == "dense"

    @property
    def is_periodic(self) -> bool:
        return self.family in ("periodic", "periodic_dense")

    @property
    def density(self) -> float:
        """Expected fraction of kept weights (exact for periodic patterns over whole periods)."""
        if self.family == "periodic_dense":
            return ((self.period - 1) * self.n + 9) / (9 * self.period)
        return self.n / 9

    def __str__(self) -> str:
        return self.name


def _parse_supports(spec: str, text: str, n: int) -> tuple[tuple[int, ...], ...]:
    supports = []
    for item in text.split(","):
        item = item.strip()
        if not item or not item.isdigit() or any(int(d) > 8 for d in item):
            raise ValueError(f"pattern {spec!r}: support {item!r} must be digits 0..8 (3x3 positions)")
        positions = tuple(int(d) for d in item)
        if len(set(positions)) != len(positions) or len(positions) != n:
            raise ValueError(f"pattern {spec!r}: support {item!r} must list {n} distinct positions")
        supports.append(tuple(sorted(positions)))
    return tuple(supports)


def parse_pattern(spec: str | Pattern, supports: object = None) -> Pattern:
    """Parse a spec string into a :class:`Pattern`; raise ``ValueError`` naming the spec.

    ``supports`` optionally replaces the built-in support list of a periodic spec: a sequence
    of position tuples, each of length ``n``.
    """
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"pattern must be a string, got {type(spec).__name__}; {_ALLOWED}")
    text = spec.strip()
    if text.lower() == "dense":
        return Pattern("dense")
    match = _SPEC_RE.match(text)
    if match is None:
        raise ValueError(f"unknown pattern {spec!r}; {_ALLOWED}")
    fam, n, m, sup = match["fam"], int(match["n"]), match["m"], match["sup"]
    if fam == "pSC":
        if m is not None or sup is not None:
            raise ValueError(f"pattern {spec!r}: pSC<n> takes no period or supports; {_ALLOWED}")
        if not 1 <= n <= 9:
            raise ValueError(f"pattern {spec!r}: pSC needs 1 <= n <= 9; {_ALLOWED}")
        return Pattern("dense") if n == 9 else Pattern("random", n=n)
    if m is None:
        raise ValueError(f"pattern {spec!r}: {fam} needs a period, as in {fam}{n}_P8; {_ALLOWED}")
    period = int(m)
    family = "periodic_dense" if fam == "PSD" else "periodic"
    min_period = 2 if family == "periodic_dense" else 1
    if period < min_period:
        raise ValueError(f"pattern {spec!r}: period must be >= {min_period}; {_ALLOWED}")
    if not 1 <= n <= 8:
        raise ValueError(f"pattern {spec!r}: n must be 1..8 kept positions of 9; {_ALLOWED}")
    custom = sup is not None or supports is not None
    if supports is not None:
        if sup is not None:
            raise ValueError(f"pattern {spec!r}: give supports in the spec or the argument, not both")
        try:
            sup = ",".join("".join(str(int(p)) for p in s) for s in supports)  # type: ignore[attr-defined]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pattern {spec!r}: supports must be sequences of positions 0..8") from exc
    if sup is not None:
        support_list = _parse_supports(spec, sup, n)
        if not support_list:
            raise ValueError(f"pattern {spec!r}: the support list is empty")
    elif n in BUILTIN_SUPPORTS:
        support_list = BUILTIN_SUPPORTS[n]
    else:
        raise ValueError(
            f"pattern {spec!r}: no built-in {n}-position supports (built-in n: 1, 2, 4); "
            f"give a custom list such as '{fam}{n}_P{period}[...]'; {_ALLOWED}"
        )
    return Pattern(family, n=n, period=period, supports=support_list, custom=custom)


def _kernel_seed(seed: int) -> np.random.Generator:
    # PCG64 from a SeedSequence gives the same stream on every platform and every DDP rank.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))


def pattern_mask(
    spec: str | Pattern,
    out_channels: int,
    in_channels: int,
    kernel_size: int = 3,
    seed: int = 0,
    supports: object = None,
) -> torch.Tensor:
    """Boolean mask ``[out_channels, in_channels, k, k]`` of the kept weights of a layer."""
    flat = mask_array(spec, out_channels, in_channels, kernel_size, seed, supports)
    return torch.from_numpy(flat).reshape(out_channels, in_channels, kernel_size, kernel_size)


def mask_array(
    spec: str | Pattern,
    out_channels: int,
    in_channels: int,
    kernel_size: int = 3,
    seed: int = 0,
    supports: object = None,
) -> np.ndarray:
    """:func:`pattern_mask` as a numpy bool array ``[out_channels, in_channels, k * k]`` (no
    torch: safe to call while a network is being traced or exported)."""
    pattern = parse_pattern(spec, supports)
    for label, value in (("out_channels", out_channels), ("in_channels", in_channels)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if pattern.is_dense:
        return np.ones((out_channels, in_channels, kernel_size * kernel_size), dtype=bool)
    if kernel_size != 3:
        raise ValueError(
            f"pattern {pattern.name!r} is defined for 3x3 kernels only, got kernel_size={kernel_size}"
        )
    if pattern.family == "random":
        keys = _kernel_seed(seed).random((out_channels, in_channels, 9))
        chosen = np.argsort(keys, axis=-1, kind="stable")[..., : pattern.n]
        flat = np.zeros((out_channels, in_channels, 9), dtype=bool)
        np.put_along_axis(flat, chosen, True, axis=-1)
        return flat
    table = np.zeros((len(pattern.supports), 9), dtype=bool)
    for k, support in enumerate(pattern.supports):
        table[k, list(support)] = True
    f = np.arange(out_channels)[:, None]
    c = np.arange(in_channels)[None, :]
    k_count = len(pattern.supports)
    if pattern.family == "periodic":
        return np.ascontiguousarray(table[((f + c) % pattern.period) % k_count])
    s = (f + c + 1) % pattern.period
    flat = table[(s - 1) % k_count]
    flat[s == 0] = True
    return np.ascontiguousarray(flat)
