"""``psconv export``: a checkpoint's model as a pt2 program (sparse operators) or ONNX / TorchScript."""

from __future__ import annotations

import argparse
import json

from ..export import EXPORT_FORMATS, export_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint: pt2 (keeps the sparse speed) or ONNX / TorchScript (dense-equivalent)",
        description=(
            "pt2: the torch.export program of the inference form (folded BatchNorm, fused epilogues, "
            "psconv's sparse operators: keeps the sparse speed, runs wherever psconv is installed; "
            "psconv.load_program(PATH), or torch.export.load(PATH).module()). onnx / torchscript: "
            "a dense-equivalent graph (the pattern's zeros written into "
            "ordinary convolutions: runs on every runtime; pattern, params and MACs are in the "
            "file's metadata). Input: float32 [N, 3, S, S] normalised RGB; output: logits. The "
            "written file is run by its runtime and compared with psconv's model. An existing "
            "file is never replaced without --force, and the checkpoint itself never."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a psconv checkpoint")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="pt2, onnx or torchscript")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.add_argument("--no-verify", action="store_true", help="do not run the exported file to check it")
    p.add_argument("--json", action="store_true", help="print the metadata written as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = export_model(args.checkpoint, args.format, args.out, force=args.force, verify=not args.no_verify)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    check = (
        f"; max |difference| from psconv {result['max_abs_diff']:.2g}"
        if "max_abs_diff" in result
        else "; not verified"
    )
    graph = "dense-equivalent graph"
    if args.format == "pt2":
        graph = (
            f"psconv operators in {result['kernel_layers']} of {len(result['sparse_layers'])} sparse layers"
        )
    print(
        f"wrote {result['file']} ({args.format}, {result['file_bytes']:,} bytes, {graph}): "
        f"{result['model']} {result['pattern']}, {result['params']:,} params, {result['macs']:,} MACs{check}"
    )
    return 0
