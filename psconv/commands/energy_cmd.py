"""``psconv energy``: estimated energy per image, index-free storage against bitmask and CSR."""

from __future__ import annotations

import argparse
import json

from ..energy import SOURCES, energy_estimate, parse_overrides
from ..models import DATASET_SHAPES, create_model, list_models
from ..profile import profile


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("energy", help="estimate energy per inference and per training step")
    p.add_argument("--model", default="vgg16", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--pattern", default="PSD1_P16", help="kernel pattern spec")
    p.add_argument("--dataset", default="cifar10", choices=sorted(DATASET_SHAPES))
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help=f"override a constant: {', '.join(SOURCES)}"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    constants = parse_overrides(args.set)
    side, classes = DATASET_SHAPES[args.dataset]
    model = create_model(args.model, args.pattern, num_classes=classes, image_size=side)
    est = energy_estimate(profile(model, (1, 3, side, side), file_size=False), constants)
    if args.json:
        print(json.dumps(est, indent=2))
        return 0
    print(
        f"{args.model} {args.pattern} on {args.dataset}: {est['macs']:,} MACs per image ({est['dense_macs']:,} dense)"
    )
    print(f"{'storage':<11} {'weights (MB)':>12} {'inference (uJ)':>15} {'train step (uJ/image)':>22}")
    for name, fmt in est["formats"].items():
        print(
            f"{name:<11} {fmt['weight_bytes'] / 1e6:>12.3f} {fmt['inference_uj']:>15.1f} {fmt['train_step_uj']:>22.1f}"
        )
    print("constants:")
    for name, value in est["constants"].items():
        print(f"  {name} = {value}  ({est['sources'][name]})")
    return 0
