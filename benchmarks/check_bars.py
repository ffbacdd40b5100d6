"""The speed bars of issues 11 and 12, checked against `psconv bench` JSON reports.

    .venv/bin/python benchmarks/check_bars.py --models OUT/bench_models.json --deploy OUT/deploy.json

Model table (issue 11), by the kernel build the report ran: with a SIMD build (avx512, avx2,
neon) every sparse cell (forward at batch 1 and at the bench's batch, training step) at least
1.3x faster than its dense twin, and PSD1_P16 and PS1_P9 training at least 2x; with the
portable build (``generic``) every cell at least 0.95x (``auto`` never loses, noise allowed).
Deployment table (issue 12): every cell at least 1.3x faster than ONNX Runtime's dense model.
One verdict line per bar, each failing cell under it; the exit status is 1 when a bar
fails. ``benchmarks/cpu_checks.sh`` runs it last, so a run on another CPU ends with the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_bench import cells, load  # noqa: E402  (a sibling script, not a package)

SIMD_BAR = 1.3
TRAIN_BAR = 2.0  # the sparsest two families' training step
TRAIN_BAR_PATTERNS = ("PSD1_P16", "PS1_P9")
PORTABLE_BAR = 0.95
DEPLOY_BAR = 1.3

Bar = tuple[str, list[str]]  # (what was required, the cells that missed it)


def model_bar(report: dict[str, Any]) -> Bar:
    """Issue 11's bar for a model table, chosen by the kernel build it ran."""
    kernels = report["machine"].get("kernels")
    table = cells(report)
    if not table:
        raise SystemExit("check_bars: the model report has no timed sparse cell")
    portable = kernels == "generic"

    def floor(pattern: str, case: str) -> float:
        if portable:
            return PORTABLE_BAR
        return TRAIN_BAR if case == "train" and pattern in TRAIN_BAR_PATTERNS else SIMD_BAR

    name = (
        f"portable build: every cell >= {PORTABLE_BAR}x dense"
        if portable
        else f"{kernels} kernels: every cell >= {SIMD_BAR}x dense, {'/'.join(TRAIN_BAR_PATTERNS)} train >= {TRAIN_BAR}x"
    )
    missed = [
        f"{model} {pattern} {case}: {speedup:.2f}x (bar {floor(pattern, case)}x)"
        for (model, pattern, case), (speedup, _) in table.items()
        if speedup < floor(pattern, case)
    ]
    return name, missed


def load_deploy(path: str) -> list[dict[str, Any]]:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"check_bars: cannot read {path}: {exc}") from None
    rows = report.get("deploy") if isinstance(report, dict) else None
    if not rows:
        raise SystemExit(f"check_bars: {path} is not a `psconv bench --deploy` report (no 'deploy' rows)")
    return rows


def deploy_bar(rows: list[dict[str, Any]]) -> Bar:
    """Issue 12's bar: every (model, pattern, batch) cell at least DEPLOY_BAR over ORT dense."""
    missed = []
    for r in rows:
        cell = f"{r['model']} {r['pattern']} batch {r['batch']}"
        if "speedup_vs_ort" not in r:  # onnxruntime was not installed
            missed.append(f"{cell}: no ONNX Runtime time")
        elif r["speedup_vs_ort"] < DEPLOY_BAR:
            missed.append(
                f"{cell}: {r['speedup_vs_ort']:.2f}x over ORT ({r['ours_ms']:.2f} vs {r['ort_dense_ms']:.2f} ms)"
            )
    return f"deployment: every cell >= {DEPLOY_BAR}x ONNX Runtime dense", missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", action="append", default=[], help="a `psconv bench --json` model report")
    parser.add_argument("--deploy", action="append", default=[], help="a `psconv bench --deploy` report")
    args = parser.parse_args(argv)
    if not args.models and not args.deploy:
        parser.error("give at least one --models or --deploy report")
    bars = [model_bar(load(path)) for path in args.models]
    bars += [deploy_bar(load_deploy(path)) for path in args.deploy]
    for name, missed in bars:
        print(f"FAIL  {name}: {len(missed)} cell(s) below" if missed else f"PASS  {name}")
        for cell in missed:
            print(f"      {cell}")
    return 1 if any(missed for _, missed in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
