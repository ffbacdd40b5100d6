"""``psconv inspect``: what a checkpoint holds, read from its header without loading weights."""

from __future__ import annotations

import argparse
import json

from ..checkpoint import verify
from ..inspect_checkpoint import format_summary, summarize_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a checkpoint's model, pattern, classes, params, MACs, accuracy and size",
        description=(
            "Read a checkpoint's header (no weights are loaded): model, pattern, classes, "
            "parameters (from the tensor table), MACs (from the metadata training recorded, else "
            "from a weightless skeleton of the architecture), recorded accuracy, and the file size "
            "against the dense equivalent."
        ),
    )
    p.add_argument("checkpoint", metavar="FILE", help="a psconv checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-macs", action="store_true", help="skip counting MACs (header only)")
    p.add_argument(
        "--verify", action="store_true", help="also read every tensor and check the file's checksum"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = summarize_checkpoint(args.checkpoint, count_macs=not args.no_macs)
    if args.verify:
        verify(args.checkpoint)  # raises CheckpointError, reported on one line by the CLI
        summary["verified"] = True
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
