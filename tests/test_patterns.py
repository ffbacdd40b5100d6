from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import psconv
from psconv.patterns import BUILTIN_SUPPORTS, PAPER_PATTERNS, parse_pattern, pattern_mask

SQUARES = [{0, 1, 3, 4}, {1, 2, 4, 5}, {3, 4, 6, 7}, {4, 5, 7, 8}]
PAIRS = [{0, 1}, {1, 2}, {3, 4}, {4, 5}, {6, 7}, {7, 8}]
SINGLES = [{p} for p in range(9)]
LISTS = {4: SQUARES, 2: PAIRS, 1: SINGLES}


def rule_support(family: str, n: int, m: int, f: int, c: int) -> set[int]:
    """The reference README's index rule, written out literally, one kernel at a time."""
    supports = LISTS[n]
    if family == "PSD":
        s = (f + c + 1) % m
        return set(range(9)) if s == 0 else supports[(s - 1) % len(supports)]
    return supports[((f + c) % m) % len(supports)]


PERIODIC = [p for p in PAPER_PATTERNS if p.startswith("PS")] + ["PSD4_P2", "PS2_P3", "PS4_P7"]
SHAPES = [(1, 1), (3, 5), (16, 16), (17, 33), (64, 3), (70, 129), (9, 8)]


@pytest.mark.parametrize("spec", PERIODIC)
@pytest.mark.parametrize("shape", SHAPES)
def test_periodic_mask_follows_reference_rule(spec: str, shape: tuple[int, int]) -> None:
    family, rest = ("PSD", spec[3:]) if spec.startswith("PSD") else ("PS", spec[2:])
    n, m = (int(v) for v in rest.split("_P"))
    out_c, in_c = shape
    mask = pattern_mask(spec, out_c, in_c)
    assert mask.shape == (out_c, in_c, 3, 3) and mask.dtype == torch.bool
    for f in range(out_c):
        for c in range(in_c):
            kept = set(mask[f, c].reshape(-1).nonzero().flatten().tolist())
            assert kept == rule_support(family, n, m, f, c), (spec, f, c)


@pytest.mark.parametrize("spec", PERIODIC)
def test_periodic_density_matches_formula(spec: str) -> None:
    pattern = parse_pattern(spec)
    m = pattern.period
    mask = pattern_mask(spec, 4 * m, 3 * m)
    assert mask.float().mean().item() == pytest.approx(pattern.density)


def test_psd4_p16_assignment_from_readme() -> None:
    # README: s in {1,5,9,13} -> first square, {2,6,10,14} second, {3,7,11,15} third, {4,8,12} fourth
    mask = pattern_mask("PSD4_P16", 1, 16)
    groups = {0: [1, 5, 9, 13], 1: [2, 6, 10, 14], 2: [3, 7, 11, 15], 3: [4, 8, 12]}
    for square, values in groups.items():
        for s in values:
            c = s - 1  # f = 0, so s = c + 1
            assert set(mask[0, c].reshape(-1).nonzero().flatten().tolist()) == SQUARES[square]
    assert mask[0, 15].all()


@pytest.mark.parametrize("n", [1, 2, 4])
def test_random_pattern_keeps_n_per_kernel_and_is_seeded(n: int) -> None:
    a = pattern_mask(f"pSC{n}", 40, 30, seed=7)
    b = pattern_mask(f"pSC{n}", 40, 30, seed=7)
    c = pattern_mask(f"pSC{n}", 40, 30, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a.reshape(40, 30, 9).sum(-1) == n).all()
    # every position is used somewhere: the draw is not stuck on a few taps
    assert a.reshape(-1, 9).any(0).all()


def test_dense_aliases() -> None:
    assert parse_pattern("pSC9").is_dense and parse_pattern("dense").is_dense
    assert pattern_mask("pSC9", 3, 4).all()


def test_custom_supports_in_spec_and_argument() -> None:
    mask = pattern_mask("PS2_P3[01,34,78]", 2, 3)
    assert set(mask[0, 2].reshape(-1).nonzero().flatten().tolist()) == {7, 8}
    same = pattern_mask("PS2_P3", 2, 3, supports=[(0, 1), (3, 4), (7, 8)])
    assert torch.equal(mask, same)
    assert parse_pattern("PS2_P3[01,34,78]").name == "PS2_P3[01,34,78]"


@pytest.mark.parametrize("spec", list(PAPER_PATTERNS) + ["dense", "PS2_P3[01,34,78]"])
def test_canonical_name_round_trips(spec: str) -> None:
    pattern = parse_pattern(spec)
    assert parse_pattern(pattern.name) == pattern


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("PSD4_P0", "period"),
        ("PS5_P4", "no built-in 5-position"),
        ("PSD10_P8", "n must be 1..8"),
        ("foo", "unknown pattern"),
        ("pSC0", "1 <= n <= 9"),
        ("PS4", "needs a period"),
        ("PSD4_P1", "period"),
        ("PS2_P3[01,3]", "2 distinct positions"),
        ("PS2_P3[09]", "digits 0..8"),
        ("", "unknown pattern"),
    ],
)
def test_bad_specs_raise_value_error_naming_spec(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_pattern(spec)
    assert repr(spec) in str(info.value) and fragment in str(info.value)


def test_sparse_pattern_needs_3x3() -> None:
    with pytest.raises(ValueError, match="3x3"):
        pattern_mask("PS4_P4", 4, 4, kernel_size=5)


def test_builtin_supports_are_the_readme_lists() -> None:
    assert [set(s) for s in BUILTIN_SUPPORTS[4]] == SQUARES
    assert [set(s) for s in BUILTIN_SUPPORTS[2]] == PAIRS


FUZZ = settings(max_examples=60, deadline=None)

# Fuzzing: every input parses or raises ValueError naming it, nothing else.


def _check_spec(text: Any) -> None:
    try:
        pattern = psconv.parse_pattern(text)
    except ValueError:
        return
    assert isinstance(pattern, psconv.Pattern)
    assert psconv.parse_pattern(pattern.name) == pattern  # the canonical name round-trips
    mask = psconv.pattern_mask(pattern, 3, 5, 3, seed=1)
    kept = mask.reshape(15, 9).sum(1)
    allowed = {9, pattern.n}
    assert set(kept.tolist()) <= allowed


_GRAMMAR = st.from_regex(
    r"\A\s?(pSC|PS|PSD|psc|ps|Dense|dense|pSC9)?[0-9\u0663\u00b2]{0,3}(_P[0-9]{0,3})?"
    r"(\[[0-9, \]]{0,14}\]?)?\s?\Z"
)


@FUZZ
@given(st.one_of(st.text(max_size=30), _GRAMMAR))
@example("PS2_P3[01,34,78]")
@example("PSD4_P16")
@example("PS1_P" + "9" * 5000)
@example("pSC" + "9" * 5000)
@example("PS2_P3[01,34,78")
@example("PSD1_P1")
@example("PS0_P0")
@example("PS3_P2[]")
@example("PS1_P2[\u00b2]")
def test_spec_parser_parses_or_raises_value_error(text: str) -> None:
    _check_spec(text)


@pytest.mark.parametrize("value", [None, 5, 2.5, b"PS4_P4", ["PS4_P4"], {"n": 1}, object()])
def test_spec_parser_non_strings(value: object) -> None:
    with pytest.raises(ValueError):
        psconv.parse_pattern(value)  # type: ignore[arg-type]
