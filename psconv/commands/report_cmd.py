"""``psconv report``: tables and figures from run folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..energy import parse_overrides
from ..report import write_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write report.md, CSV tables and PNG figures from run folders")
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="run folders (psconv train --out)")
    p.add_argument("--out", required=True, help="output folder for report.md, *.csv and *.png")
    p.add_argument("--paper", metavar="CSV", help="paper-results.csv: draw the paper's points beside ours")
    p.add_argument(
        "--timings", nargs="+", metavar="JSON", help="psconv bench --json outputs (or rows): measured times"
    )
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override an energy constant")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in [args.paper, *(args.timings or [])]:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{path!r} does not exist")
    result = write_report(
        args.runs, args.out, paper=args.paper, timings=args.timings, constants=parse_overrides(args.set)
    )
    print(f"wrote {result['report']} ({len(result['runs'])} runs, {len(result['figures'])} figures)")
    return 0
