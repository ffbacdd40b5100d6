"""CPU identification recorded beside every run and benchmark."""

from __future__ import annotations

import platform

import pytest
import torch

from psconv.run_files import environment
from psconv.runtime import cpu_id, cpu_name

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9005
stepping\t: 0
"""

NEOVERSE = """processor\t: 0
BogoMIPS\t: 243.75
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd0c
CPU revision\t: 1
"""


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (ZEN3, "AuthenticAMD family 25 model 1 stepping 1"),
        (NEOVERSE, "implementer 0x41 part 0xd0c variant 0x1"),
        ("", platform.machine()),
    ],
    ids=["x86-first-core", "arm", "no-cpuinfo"],
)
def test_cpu_id_reads_the_first_core(cpuinfo: str, expected: str) -> None:
    assert cpu_id(cpuinfo) == expected


def test_cpu_id_tells_apart_cpus_with_one_marketing_name() -> None:
    zen4 = ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n", 1)
    assert cpu_name(ZEN3) == cpu_name(zen4) == "AMD EPYC"
    assert cpu_id(ZEN3) != cpu_id(zen4)


def test_cpu_name_without_model_name_is_the_machine_type() -> None:
    assert cpu_name(NEOVERSE) == (platform.processor() or platform.machine())


def test_run_environment_records_which_cpu_ran() -> None:
    env = environment(num_threads=3)
    assert (env["cpu"], env["cpu_id"], env["threads"]) == (cpu_name(), cpu_id(), 3)
    assert env["torch"] == torch.__version__
