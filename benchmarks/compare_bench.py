"""Two `psconv bench --json` files side by side: did a change make any model cell slower?

    .venv/bin/python benchmarks/compare_bench.py results/bench/bench_models.json new.json

Compares each (model, pattern, case) speedup over the dense model *of the same run*, so a
machine that is faster or slower overall on the day cancels out; the absolute psconv times
are printed too. A cell whose speedup fell by more than ``--tolerance`` (default 10%, about
the run-to-run spread of batch-1 cells) is marked ``SLOWER``, and the exit status is 1 when
any is. Files from different kernel ISAs or thread counts are refused: their speedups do not
compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from psconv.bench import CASES


def load(path: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"compare_bench: cannot read {path}: {exc}") from None
    if not isinstance(report, dict) or "models" not in report or "machine" not in report:
        raise SystemExit(
            f"compare_bench: {path} is not a `psconv bench --json` report (no 'models'/'machine')"
        )
    return report


def cells(report: dict[str, Any]) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(model, pattern, case) -> (speedup over dense, psconv ms) for every timed cell."""
    out = {}
    for entry in report["models"]:
        for pattern, results in entry["patterns"].items():
            for case in CASES:
                if case in results and "speedup" in results[case]:
                    out[(entry["model"], pattern, case)] = (results[case]["speedup"], results[case]["ms"])
    return out


def compare(old: dict[str, Any], new: dict[str, Any], tolerance: float) -> tuple[list[str], int]:
    """Table lines and the number of cells slower than ``old`` beyond ``tolerance``."""
    for key in ("kernels", "threads"):
        if old["machine"].get(key) != new["machine"].get(key):
            raise SystemExit(
                f"compare_bench: the reports differ in {key} ({old['machine'].get(key)} vs "
                f"{new['machine'].get(key)}): their speedups do not compare"
            )
    a, b = cells(old), cells(new)
    common = [k for k in a if k in b]
    if not common:
        raise SystemExit("compare_bench: the two reports share no (model, pattern, case) cell")
    lines = [
        f"{'model':<10} {'pattern':<9} {'case':<6} {'old':>7} {'new':>7} {'new/old':>8}   psconv ms old -> new"
    ]
    slower = 0
    for key in common:
        (s_old, ms_old), (s_new, ms_new) = a[key], b[key]
        ratio = s_new / s_old
        flag = "  SLOWER" if ratio < 1 - tolerance else ""
        slower += bool(flag)
        lines.append(
            f"{key[0]:<10} {key[1]:<9} {key[2]:<6} {s_old:6.2f}x {s_new:6.2f}x {ratio:8.2f}   "
            f"{ms_old:9.2f} -> {ms_new:9.2f}{flag}"
        )
    return lines, slower


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the reference report (e.g. results/bench/bench_models.json)")
    parser.add_argument("new", help="the report to check")
    parser.add_argument(
        "--tolerance", type=float, default=0.10, help="allowed fall of a speedup (0.10: 10%%)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.tolerance < 1:
        parser.error(f"--tolerance must be in [0, 1), got {args.tolerance}")
    lines, slower = compare(load(args.old), load(args.new), args.tolerance)
    print("\n".join(lines))
    print(
        f"{slower} cell(s) slower by more than {args.tolerance:.0%}"
        if slower
        else "no cell slower beyond noise"
    )
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main())
