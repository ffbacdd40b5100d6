"""``psconv convert-checkpoint``: rewrite a checkpoint of psconv 0.1's format as safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_checkpoint, save
from ..fileio import FileExistsRefused


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-checkpoint",
        help="rewrite a checkpoint (any format psconv reads) in the current safetensors format",
        description="Read a checkpoint (psconv 0.1's PSCONV format loads too) and write the same model, "
        "meta and training state as a .safetensors checkpoint. OUT is never replaced without --force.",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint to read")
    p.add_argument("out", metavar="OUT", help="file to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ValueError(f"OUT {str(out)!r} is the checkpoint being read; choose another name")
    ckpt = load_checkpoint(src)
    if out.exists() and not args.force:
        raise FileExistsRefused(f"{str(out)!r} already exists; pass --force to overwrite it")
    save(ckpt.model, out, extra=ckpt.extra, **ckpt.meta)
    print(f"wrote {out} ({out.stat().st_size:,} bytes) from {src}")
    return 0
