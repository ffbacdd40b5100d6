"""``psconv eval``: top-1, top-5 and loss of a checkpoint on the test split."""

from __future__ import annotations

import argparse
import json

from ..data import DATASETS
from ..evaluate import evaluate_checkpoint
from .arg_types import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1, top-5 and loss of a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint written by psconv")
    p.add_argument("--dataset", choices=sorted(DATASETS), help="[the checkpoint's training data set]")
    p.add_argument("--data-dir", help="data directory or archive [$PSCONV_DATA]")
    p.add_argument("--download", action="store_true", help="fetch the official archive if missing")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument(
        "--test-subset", type=positive_int, metavar="N", help="evaluate on N images (as train did)"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print a JSON dict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        test_subset=args.test_subset,
        download=args.download,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['name']} {result['pattern']} on {result['dataset']} ({result['images']} test images): "
            f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
        )
    return 0
