"""The command line: the profile command's output, and bad arguments for every subcommand."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import snapshot as _snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psconv.cli import build_parser, main
from psconv.commands.arg_types import non_negative_int, positive_int

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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
    ("parse", "text", "value"),
    [
        (positive_int, "1", 1),
        (positive_int, " 128", 128),
        (non_negative_int, "0", 0),
        (non_negative_int, "+7", 7),
    ],
)
def test_count_types_accept(parse: Any, text: str, value: int) -> None:
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "fragment"),
    [
        (positive_int, "0", "at least 1, got '0'"),
        (positive_int, "-5", "at least 1, got '-5'"),
        (non_negative_int, "-1", "at least 0, got '-1'"),
        (positive_int, "2.5", "an integer, got '2.5'"),
        (non_negative_int, "", "an integer, got ''"),
    ],
)
def test_count_types_refuse_with_the_value(parse: Any, text: str, fragment: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(fragment)):
        parse(text)


def test_bench_batch_zero_names_the_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--batch", "0"])
    assert exc.value.code == 2
    assert "argument --batch: expected an integer of at least 1, got '0'" in capsys.readouterr().err


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


# --------------------------------------------------------------------------------------------
# Every subcommand, every kind of wrong argument: one line on stderr, exit code 2, no traceback;
# no command overwrites a file the user did not name as its output.


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "psconv.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=120,
    )


def _subcommands() -> dict[str, Any]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(sub.choices)


def _required(subparser: Any) -> list[Any]:
    return [a for a in subparser._actions if a.required or (not a.option_strings and a.dest != "help")]


def _bad_invocations(tmp: Path) -> list[list[str]]:
    """For every subcommand that exists: an unknown option, each required argument left out,
    and garbage where a file, number or choice is expected."""
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    cases: list[list[str]] = [[], ["--no-such-flag"], ["nosuchcommand"]]
    for name, sp in _subcommands().items():
        cases.append([name, "--no-such-option-xyz"])
        required = _required(sp)
        filled: dict[str, list[str]] = {}
        for action in required:
            value = {"format": "onnx", "runs": str(tmp), "out": str(tmp / "new-output")}.get(
                action.dest, str(garbage)
            )
            filled[action.dest] = [*action.option_strings[:1], value] if action.option_strings else [value]
        for action in required:  # each required argument left out in turn
            cases.append([name, *[v for d, vs in filled.items() if d != action.dest for v in vs]])
        for action in sp._actions:
            if action.type in (int, float, positive_int, non_negative_int) and action.option_strings:
                cases.append(
                    [name, *[v for vs in filled.values() for v in vs], action.option_strings[0], "abc"]
                )
            too_small = {positive_int: "0", non_negative_int: "-1"}.get(action.type)
            if too_small and action.option_strings:  # refused before any work starts
                cases.append(
                    [name, *[v for vs in filled.values() for v in vs], action.option_strings[0], too_small]
                )
            if action.choices and action.option_strings and action.dest != "help":
                cases.append(
                    [name, *[v for vs in filled.values() for v in vs], action.option_strings[0], "zzz"]
                )
        if "checkpoint" in filled:
            for bad in (garbage, tmp, tmp / "missing.ckpt"):
                filled["checkpoint"][-1] = str(bad)
                cases.append([name, *[v for vs in filled.values() for v in vs]])
    for name, sp in _subcommands().items():  # an existing file (not a folder) where one is written
        filled = {a.dest: a for a in _required(sp)}
        # Only where --out is required: a command that runs without arguments does real work.
        if "out" in filled:
            argv = [name]
            for dest, action in filled.items():
                value = {"format": "torchscript", "runs": str(tmp), "out": str(garbage)}.get(
                    dest, str(garbage)
                )
                argv += [*action.option_strings[:1], value]
            cases.append(argv)
    not_tar = tmp / "cifar10.tar.gz"  # tarfile's error lists one reason per method, a line each
    not_tar.write_bytes(b"not an archive")
    cases += [
        ["train", "--data-dir", str(not_tar), "--epochs", "1"],
        ["predict", "--checkpoint", str(garbage), str(tmp), "--top-k", "0"],
        ["predict", "--checkpoint", str(garbage), str(tmp), "--top-k", "-3"],
        ["profile", "--pattern", "PS5_P4"],
        ["profile", "--model", "nope"],
        ["export", "--checkpoint", str(garbage), "--format", "onnx", "--out", str(tmp)],
    ]
    return cases


def test_every_subcommand_bad_arguments_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """All cases through ``main`` (an exception escaping it would be a traceback)."""
    decoys = _decoys(tmp_path)
    cases = _bad_invocations(tmp_path)
    before = _snapshot(tmp_path)
    assert {c[0] for c in cases if c} >= {"profile", "inspect", "predict", "export"}
    old = os.getcwd()
    os.chdir(tmp_path)  # relative default outputs would land among the decoys
    try:
        for argv in cases:
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
            err = capsys.readouterr().err
            assert code == 2, (argv, err)
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and "error" in lines[0], (argv, err)
    finally:
        os.chdir(old)
    assert _snapshot(tmp_path) == before, "a failed command changed files it was not asked to write"
    assert decoys


def test_every_subcommand_bad_arguments_as_process(tmp_path: Path) -> None:
    """One bad invocation per subcommand through ``python -m psconv.cli`` (run concurrently):
    one line on stderr, exit code 2, no traceback."""
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"junk")
    procs = []
    for name, sp in _subcommands().items():
        # Missing required arguments where there are any; else an unknown option (a command
        # without required arguments would start real work).
        argv = [name] if _required(sp) else [name, "--no-such-option-xyz"]
        procs.append((argv, _popen(argv, tmp_path)))
    procs.append((["inspect", str(garbage)], _popen(["inspect", str(garbage)], tmp_path)))
    for argv, proc in procs:
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (argv, err)
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)


def _popen(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "psconv.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def _decoys(folder: Path) -> list[Path]:
    """Files a careless command might clobber: outputs by common default names."""
    names = [
        "model.onnx",
        "model.pt",
        "out.onnx",
        "checkpoint.ckpt",
        "best.safetensors",
        "last.safetensors",
        "report.md",
    ]
    files = []
    for name in names:
        path = folder / name
        path.write_bytes(f"decoy {name}".encode())
        files.append(path)
    return files


@FUZZ
@given(
    st.sampled_from(["inspect", "predict", "export"]),
    st.lists(
        st.sampled_from(
            [
                "--checkpoint",
                "--format",
                "--out",
                "--top-k",
                "--json",
                "--force",
                "onnx",
                "torchscript",
                "GARBAGE",
                "DIR",
                "MISSING",
                "-1",
                "0",
                "abc",
                "--",
                "-",
                "",
                "\x00",
                "é",
            ]
        ),
        max_size=7,
    ),
)
def test_fuzzed_argv_never_crashes(tmp_path: Path, command: str, tokens: list[str]) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"junk")
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"keep")
    mapping = {"GARBAGE": str(garbage), "DIR": str(tmp_path), "MISSING": str(tmp_path / "nope")}
    argv = [command, *[mapping.get(t, t) for t in tokens]]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, 2)
    assert decoy.read_bytes() == b"keep"
