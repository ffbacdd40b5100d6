"""benchmarks/check_bars.py: the issues' speed bars, PASS or FAIL with the cells below them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def check_bars(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import check_bars

    return check_bars


def _models(kernels: str, speedups: dict[tuple[str, str], float]) -> dict[str, Any]:
    """A `psconv bench --json` report: (pattern, case) -> speedup, one model."""
    patterns: dict[str, dict[str, Any]] = {}
    for (pattern, case), s in speedups.items():
        patterns.setdefault(pattern, {})[case] = {"ms": 10.0 / s, "speedup": s}
    return {
        "machine": {"kernels": kernels, "threads": 2},
        "models": [{"model": "resnet18", "patterns": patterns}],
    }


def _deploy(*speedups: float | None) -> dict[str, Any]:
    rows = []
    for batch, s in zip((1, 32, 128), speedups):
        row: dict[str, Any] = {"model": "vgg16", "pattern": "PSD4_P8", "batch": batch, "ours_ms": 2.0}
        if s is not None:
            row |= {"ort_dense_ms": 2.0 * s, "speedup_vs_ort": s}
        rows.append(row)
    return {"machine": {"kernels": "avx2"}, "deploy": rows}


def _write(tmp_path: Path, name: str, report: dict[str, Any]) -> str:
    (tmp_path / name).write_text(json.dumps(report))
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("kernels", "speedups", "below"),
    [
        ("avx2", {("PSD4_P8", "fwd1"): 1.31, ("PSD4_P8", "train"): 1.5}, []),
        (
            "avx2",
            {("PSD4_P8", "fwd1"): 1.29, ("PSD4_P8", "train"): 1.5},
            ["resnet18 PSD4_P8 fwd1: 1.29x (bar 1.3x)"],
        ),
        # The sparsest families must train twice as fast; 1.9x passes the general bar only.
        (
            "avx512",
            {("PS1_P9", "train"): 1.9, ("PSD4_P8", "train"): 1.9},
            ["resnet18 PS1_P9 train: 1.90x (bar 2.0x)"],
        ),
        # The portable build only has to keep level with dense.
        (
            "generic",
            {("PS1_P9", "train"): 0.96, ("PSD4_P8", "fwd1"): 0.94},
            ["resnet18 PSD4_P8 fwd1: 0.94x (bar 0.95x)"],
        ),
    ],
)
def test_model_bars_by_kernel_build(check_bars, kernels, speedups, below) -> None:
    name, missed = check_bars.model_bar(_models(kernels, speedups))
    assert name.startswith(f"{'portable build' if kernels == 'generic' else kernels + ' kernels'}:")
    assert missed == below


def test_deploy_bar_names_each_cell_below_and_a_missing_ort_time(check_bars) -> None:
    _, missed = check_bars.deploy_bar(_deploy(1.3, 1.29, None)["deploy"])
    assert missed == [
        "vgg16 PSD4_P8 batch 32: 1.29x over ORT (2.00 vs 2.58 ms)",
        "vgg16 PSD4_P8 batch 128: no ONNX Runtime time",
    ]


def test_cli_verdicts_and_exit_status(tmp_path: Path) -> None:
    """Run as cpu_checks.sh runs it: a separate process, the sibling import resolved by path."""
    good = _write(tmp_path, "models.json", _models("avx2", {("PSD1_P16", "train"): 2.5}))
    bad = _write(tmp_path, "deploy.json", _deploy(1.5, 1.1))
    script = str(BENCHMARKS / "check_bars.py")
    proc = subprocess.run(
        [sys.executable, script, "--models", good, "--deploy", bad],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "PASS  avx2 kernels: every cell >= 1.3x dense, PSD1_P16/PS1_P9 train >= 2.0x",
        "FAIL  deployment: every cell >= 1.3x ONNX Runtime dense: 1 cell(s) below",
        "      vgg16 PSD4_P8 batch 32: 1.10x over ORT (2.00 vs 2.20 ms)",
    ]
    proc = subprocess.run([sys.executable, script, "--models", good], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"machine": {}, "deploy": []}, "is not a `psconv bench --deploy` report (no 'deploy' rows)"),
        ("not json", "cannot read"),
    ],
)
def test_a_wrong_deploy_file_is_refused_in_one_line(check_bars, tmp_path: Path, report, message) -> None:
    path = tmp_path / "deploy.json"
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    with pytest.raises(SystemExit) as exc:
        check_bars.main(["--deploy", str(path)])
    assert message in str(exc.value) and "\n" not in str(exc.value)
