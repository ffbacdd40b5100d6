"""``psconv bench``: time sparse models against dense and masked-dense (see :mod:`psconv.bench`)."""

from __future__ import annotations

import argparse
import json

from ..bench import CASES, DEFAULT_MODELS, DEFAULT_PATTERNS, format_report, run_bench
from ..bench_deploy import DEPLOY_BATCHES, bench_deploy, format_deploy
from ..fileio import atomic_write
from .arg_types import non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time sparse models against dense and masked-dense (CPU)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models to time")
    p.add_argument("--patterns", nargs="*", default=list(DEFAULT_PATTERNS),
                   help="pattern specs (none: time the dense model only)")  # fmt: skip
    p.add_argument("--batch", type=positive_int, default=128, help="large batch (forward and training step)")
    p.add_argument("--image-size", type=positive_int, default=32, help="input side (32: CIFAR-10)")
    p.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds (median is reported)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="few repeats, batch 8, no per-layer or memory runs")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--backend", choices=["auto", "fast"], default="auto",
                   help="backend of the psconv rows: auto (what users get) or fast (the kernels on every layer)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--output", help="also write the JSON to this file")
    p.add_argument(
        "--deploy", action="store_true",
        help="inference rows only: optimize_for_inference against the dense twin in ONNX Runtime, torch.compile and eager",
    )  # fmt: skip
    p.add_argument(
        "--deploy-batches", type=positive_int, nargs="+", default=list(DEPLOY_BATCHES), metavar="B"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.deploy:
        return _run_deploy(args)

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
        backend=args.backend,
        on_model=show,
    )
    text = json.dumps(report, indent=2)
    if args.output:
        atomic_write(args.output, text + "\n")
    if args.json:
        print(text)
    return 0


def _run_deploy(args: argparse.Namespace) -> int:
    import torch

    from ..kernels import kernel_info, onednn_isa

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    rows = bench_deploy(list(args.models), list(args.patterns), batches=tuple(args.deploy_batches),
                        image_size=args.image_size, repeats=repeats, threads=args.threads,
                        target_s=0.01 if args.quick else 0.2)  # fmt: skip
    info = kernel_info()
    report = {
        "machine": {
            "threads": torch.get_num_threads(),
            "kernels": info["isa"],
            "onednn": onednn_isa(),
            "torch": torch.__version__,
        }
    }
    report["deploy"] = rows
    text = json.dumps(report, indent=2)
    if args.output:
        atomic_write(args.output, text + "\n")
    print(text if args.json else format_deploy(rows))
    return 0
