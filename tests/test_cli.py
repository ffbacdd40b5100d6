import json
import subprocess
import sys

import pytest

from psconv.cli import main


def test_profile_table(capsys) -> None:
    assert main(["profile", "--model", "vgg16", "--pattern", "PSD1_P16"]) == 0
    out = capsys.readouterr().out
    assert "PSD1_P16" in out and "5.83x fewer" in out


def test_profile_json_tinyimagenet(capsys) -> None:
    assert (
        main(["profile", "--model", "resnet18", "--pattern", "PS1_P9", "--dataset", "tinyimagenet", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["input_size"] == [1, 3, 64, 64]
    assert result["layers"][-1]["output_shape"] == [1, 200]


def test_profile_all_rows(capsys) -> None:
    assert main(["profile", "--all", "--model", "vgg16", "--json"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["PSD1_P16"]["params_M"] == 2.471 and rows["pSC9"]["macs_G"] == 0.3132


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["profile", "--pattern", "PS5_P4"], "pattern 'PS5_P4'"),
        (["profile", "--model", "nope"], "unknown model 'nope'"),
        (["profile", "--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_bad_arguments_one_line_exit_2(argv: list[str], fragment: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "psconv.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
