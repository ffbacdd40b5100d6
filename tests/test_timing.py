"""psconv.timing: how many calls each candidate gets, and in which order (no timing asserted)."""

from __future__ import annotations

import pytest

from psconv import timing


def _recorder(log: list[str], name: str):
    return lambda: log.append(name)


def test_interleaved_runs_round_robin_blocks():
    log: list[str] = []
    fns = {"a": _recorder(log, "a"), "b": _recorder(log, "b")}
    result = timing.interleaved(fns, rounds=2, calls={"a": 2, "b": 1})
    assert log == ["a", "a", "b", "a", "a", "b"]
    assert set(result) == {"a", "b"} and all(v >= 0 for v in result.values())


def test_settle_adds_one_untimed_call_per_sample():
    log: list[str] = []
    fns = {"a": _recorder(log, "a"), "b": _recorder(log, "b")}
    timing.interleaved(fns, rounds=3, calls={"a": 2, "b": 2}, settle_s=0.001)
    assert log.count("a") == 3 * (2 + 1) and log.count("b") == 3 * (2 + 1)


@pytest.mark.parametrize("cap", [1, 7])
def test_calls_per_sample_is_capped_and_warms_up(cap):
    log: list[str] = []
    n = timing.calls_per_sample(_recorder(log, "x"), target_s=10.0, cap=cap)
    assert n == cap  # an instant call would need far more than cap calls to last 10 s
    assert log == ["x", "x"]  # warm-up, then the timed call


def test_calls_per_sample_at_least_one():
    assert timing.calls_per_sample(lambda: None, target_s=0.0) == 1
