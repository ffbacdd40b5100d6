"""``psconv predict``: classify image files with a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

from ..predict import load_for_inference, predict_files
from .arg_types import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify PNG/JPEG images (files or folders) with a checkpoint",
        description=(
            "Classify images of any size: each is resized (shorter side) and centre-cropped to "
            "the model's input size, then normalised as in training. Folders are walked. Files "
            "that cannot be read are reported on stderr and skipped. Exit code 0 when at least "
            "one image was classified, 2 when none could be."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a psconv checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument(
        "--top-k", type=positive_int, default=5, metavar="K", help="classes to show per image (default 5)"
    )
    p.add_argument("--json", action="store_true", help="print JSON (predictions and skipped files)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    deploy = load_for_inference(args.checkpoint)

    def report(name: str, reason: str) -> None:
        print(f"psconv: skipped {name}: {reason}", file=sys.stderr)

    result = predict_files(deploy, args.images, top_k=args.top_k, on_skip=report)
    if args.json:
        print(
            json.dumps(
                {"checkpoint": args.checkpoint, "predictions": result.predictions, "skipped": result.skipped},
                indent=2,
            )
        )
    else:
        for item in result.predictions:
            best = item["top"][0]
            print(f"{item['file']}: {best['class']} ({100 * best['probability']:.1f}%)")
            for other in item["top"][1:]:
                print(f"    {other['class']:<20} {100 * other['probability']:5.1f}%")
    if not result.predictions:
        raise ValueError(
            f"no image could be classified ({len(result.skipped)} file(s) skipped)"
            if result.skipped
            else f"no files found in {', '.join(map(repr, args.images))} (folders are walked; hidden files are skipped)"
        )
    return 0
