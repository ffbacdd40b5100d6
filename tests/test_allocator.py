"""The allocator tuning runs in a child process: it changes the whole process's malloc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import psconv, psconv.allocator as a; print(a.allocator_state()); print(psconv.tune_allocator())"


def _probe(**env: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return out.stdout.split("\n")[:2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tune_allocator_on_glibc_keeps_freed_memory() -> None:
    before, after = _probe(PSCONV_TUNE_MALLOC="1")
    assert before == "default"  # importing the library changes nothing
    assert after == "tuned"


def test_tune_allocator_can_be_turned_off() -> None:
    assert _probe(PSCONV_TUNE_MALLOC="0")[1] == "default (PSCONV_TUNE_MALLOC=0)"


def test_compute_commands_tune_the_allocator() -> None:
    from psconv.cli import COMPUTE_COMMANDS, build_parser

    registered = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert COMPUTE_COMMANDS <= registered
