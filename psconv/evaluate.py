"""Evaluation: top-1, top-5 and loss of a model (or a checkpoint) on a data set's test split."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import DATASETS, DeviceData, load_dataset
from .runtime import amp_dtype, resolve_device

__all__ = ["evaluate", "evaluate_checkpoint"]


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
    autocast = amp_dtype(amp)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    try:
        with torch.inference_mode():
            for x, y in data.eval_batches(batch_size, rank, world_size):
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
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
    device: str = "auto",
    test_subset: int | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint file; ``dataset`` defaults to the one it was trained on."""
    from .checkpoint import load_checkpoint

    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    device = str(resolve_device(device))
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
    from .inference import inference_form
    from .inspect_checkpoint import normalization

    model = inference_form(ckpt.model)  # folded BatchNorm, fused epilogues: same numbers, faster
    mean, std = normalization(ckpt.meta)  # as the checkpoint was trained
    result = evaluate(
        model, DeviceData(data.x_test, data.y_test, device, mean=mean, std=std, pad=0), batch_size
    )
    return {"checkpoint": str(path), "dataset": dataset, **ckpt.config, **result}
