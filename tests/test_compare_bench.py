"""benchmarks/compare_bench.py: which cells of a `psconv bench --json` report got slower."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_bench.py"
_spec = importlib.util.spec_from_file_location("compare_bench", _PATH)
assert _spec is not None and _spec.loader is not None
compare_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_bench)


def _report(speedups: dict[str, float], kernels: str = "avx512") -> dict[str, Any]:
    """A report in the shape `psconv bench --json` writes, one model, one pattern."""
    cases = {case: {"ms": 10.0 / s, "speedup": s} for case, s in speedups.items()}
    return {
        "machine": {"kernels": kernels, "threads": 2},
        "models": [{"model": "vgg16", "dense": {}, "patterns": {"PSD1_P16": cases}}],
    }


def _write(tmp_path: Path, name: str, report: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return str(path)


def test_a_fall_beyond_tolerance_is_flagged_and_fails(tmp_path: Path, capsys) -> None:
    old = _write(tmp_path, "old.json", _report({"fwd1": 4.0, "fwd": 3.0, "train": 2.0}))
    new = _write(tmp_path, "new.json", _report({"fwd1": 3.5, "fwd": 2.9, "train": 2.2}))
    assert compare_bench.main([old, new]) == 1
    out = capsys.readouterr().out
    flagged = [line.split()[2] for line in out.splitlines() if line.endswith("SLOWER")]
    assert flagged == ["fwd1"]  # 4.0 -> 3.5 is -12.5%; fwd's -3.3% is noise
    assert "1 cell(s) slower by more than 10%" in out


def test_no_fall_passes(tmp_path: Path, capsys) -> None:
    old = _write(tmp_path, "old.json", _report({"fwd1": 4.0, "train": 2.0}))
    assert compare_bench.main([old, old]) == 0
    assert "no cell slower beyond noise" in capsys.readouterr().out


def test_reports_of_different_kernel_isas_are_refused(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.json", _report({"fwd1": 4.0}, kernels="avx512"))
    new = _write(tmp_path, "new.json", _report({"fwd1": 4.0}, kernels="avx2"))
    with pytest.raises(SystemExit, match="differ in kernels .avx512 vs avx2."):
        compare_bench.main([old, new])


def test_a_file_that_is_not_a_bench_report_is_refused(tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.json", {"rows": []})
    good = _write(tmp_path, "good.json", _report({"fwd1": 4.0}))
    with pytest.raises(SystemExit, match="bad.json is not a `psconv bench --json` report"):
        compare_bench.main([bad, good])


def test_the_committed_reference_compares_with_itself() -> None:
    path = Path(__file__).resolve().parent.parent / "results" / "bench" / "bench_models.json"
    report = json.loads(path.read_text())
    lines, slower = compare_bench.compare(report, copy.deepcopy(report), 0.1)
    assert slower == 0
    assert len(lines) == 1 + 2 * 5 * 3  # header, then VGG16 and ResNet18 x 5 patterns x 3 cases
