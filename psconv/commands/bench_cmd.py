"""``psconv bench``: time sparse models against dense and masked-dense (see :mod:`psconv.bench`)."""

from __future__ import annotations

import argparse
import json

from ..bench import DEFAULT_MODELS, DEFAULT_PATTERNS, format_report, run_bench
from ..fileio import atomic_write


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time sparse models against dense and masked-dense (CPU)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models to time")
    p.add_argument("--patterns", nargs="+", default=list(DEFAULT_PATTERNS), help="pattern specs")
    p.add_argument("--batch", type=int, default=128, help="large batch (forward and training step)")
    p.add_argument("--image-size", type=int, default=32, help="input side (32: CIFAR-10)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="few repeats, batch 8, no per-layer or memory runs")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--cases", nargs="+", default=["fwd1", "fwd", "train"], choices=["fwd1", "fwd", "train"])
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--output", help="also write the JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def show(partial: dict) -> None:
        if not args.json:
            print(format_report(partial), flush=True)

    report = run_bench(
        list(args.models),
        list(args.patterns),
        batch=args.batch,
        image_size=args.image_size,
        repeats=args.repeats,
        threads=args.threads,
        cases=list(args.cases),
        layers=not args.no_layers,
        memory=not args.no_memory,
        quick=args.quick,
        on_model=show,
    )
    text = json.dumps(report, indent=2)
    if args.output:
        atomic_write(args.output, text + "\n")
    if args.json:
        print(text)
    return 0
