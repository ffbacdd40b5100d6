"""``psconv eval``: top-1, top-5 and loss of a checkpoint on a data set's test split."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import DATASETS, DeviceData, load_dataset

__all__ = ["evaluate", "evaluate_checkpoint", "add_parser", "run"]


def evaluate(
    model: nn.Module,
    data: DeviceData,
    batch_size: int = 500,
    *,
    amp: str = "none",
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Loss, top-1 and top-5 (%) over ``data`` in eval mode without autograd.

    Under DDP each rank scores its share and the sums are reduced, so every rank returns the
    numbers of the whole split.
    """
    was_training = model.training
    model.eval()
    device = data.device
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    try:
        with torch.inference_mode():
            for x, y in data.eval_batches(batch_size, rank, world_size):
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = model(x).float()
                k = min(5, out.shape[1])
                top = out.topk(k, 1).indices
                hits = top == y[:, None]
                totals[0] += F.cross_entropy(out, y, reduction="sum").double()
                totals[1] += hits[:, 0].sum()
                totals[2] += hits.any(1).sum()
                totals[3] += len(y)
    finally:
        model.train(was_training)
    if world_size > 1:
        totals = totals.clone()  # inference tensors cannot enter a collective in place
        dist.all_reduce(totals)
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "images": int(n)}


def evaluate_checkpoint(
    path: str,
    dataset: str | None = None,
    data_dir: str | None = None,
    *,
    batch_size: int = 500,
    device: str = "cpu",
    test_subset: int | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint file; ``dataset`` defaults to the one it was trained on."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location=device)
    dataset = dataset or ckpt.meta.get("dataset") or "cifar10"
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    size, classes = ckpt.config.get("image_size"), ckpt.config.get("num_classes")
    if (size, classes) != (info.image_size, info.num_classes):
        raise ValueError(
            f"checkpoint {path!r} is built for {size}x{size} images and {classes} classes, "
            f"{dataset} has {info.image_size}x{info.image_size} and {info.num_classes}"
        )
    data = load_dataset(dataset, data_dir, download_missing=download).subset(None, test_subset)
    result = evaluate(ckpt.model, DeviceData(data.x_test, data.y_test, device, pad=0), batch_size)
    return {"checkpoint": str(path), "dataset": dataset, **ckpt.config, **result}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1, top-5 and loss of a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .ckpt written by psconv")
    p.add_argument("--dataset", choices=sorted(DATASETS), help="[the checkpoint's training data set]")
    p.add_argument("--data-dir", help="data directory or archive [$PSCONV_DATA]")
    p.add_argument("--download", action="store_true", help="fetch the official archive if missing")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--test-subset", type=int, metavar="N", help="evaluate on N images (as train did)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print a JSON dict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device (use auto, cpu, cuda, cuda:N)") from None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} asked for, but this torch build sees no CUDA GPU")
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
