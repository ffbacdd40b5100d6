"""Every x86 build of the kernels against PyTorch's reference, case by case (the cases that
``make test-aarch64`` replays under qemu for the ARM builds). Each instruction set runs in its own
process: the library picks its build once, at load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_kernels

CASES = Path(__file__).parent / "native" / "kernel_cases.py"


@needs_kernels
@pytest.mark.parametrize(
    ("isa", "small_maps"),
    # The small-map forward (csrc/kernel_small.inc) is on by default where it was timed (AVX2);
    # each build also runs with its other setting, so both forward paths stay correct everywhere.
    [("avx512", ""), ("avx512", "on"), ("avx2", ""), ("avx2", "off"), ("generic", ""), ("generic", "on")],
)
def test_build_matches_reference_on_every_case(isa: str, small_maps: str) -> None:
    env = dict(os.environ, PSCONV_KERNEL_ISA=isa, PSCONV_SMALL_MAPS=small_maps)
    out = subprocess.run(
        [sys.executable, str(CASES), "check"], capture_output=True, text=True, env=env, timeout=600
    )
    ran = out.stdout.split(":")[0]
    if out.returncode == 0 and ran != isa:
        pytest.skip(f"this CPU cannot run the {isa} build (the {ran} build ran)")
    assert out.returncode == 0, out.stdout + out.stderr
