"""``psconv profile``: parameters, MACs and checkpoint size of a model, per layer."""

from __future__ import annotations

import argparse
import json

from ..models import DATASET_SHAPES, create_model, list_models
from ..profile import format_profile, profile
from ..report import complexity_rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="count params, MACs and checkpoint bytes of a model")
    p.add_argument("--model", default="vgg16", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--pattern", default="dense", help="kernel pattern spec, e.g. PSD1_P16")
    p.add_argument("--dataset", default="cifar10", choices=sorted(DATASET_SHAPES))
    p.add_argument("--all", action="store_true", help="one summary row per paper pattern")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    side, classes = DATASET_SHAPES[args.dataset]
    if args.all:
        rows = complexity_rows((args.model,), (args.dataset,))
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'variant':<10} {'params (M)':>11} {'MACs (G)':>9}   ({args.model}, {args.dataset})")
            for row in rows:
                print(f"{row['variant']:<10} {row['params_M']:>11.3f} {row['macs_G']:>9.4f}")
        return 0
    model = create_model(args.model, args.pattern, num_classes=classes, image_size=side)
    result = profile(model, (1, 3, side, side))
    print(json.dumps(result, indent=2) if args.json else format_profile(result))
    return 0
