"""Exact, sparse-aware accounting: parameters, MACs (over kept weights only) and file size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import kernels
from .checkpoint import serialize
from .convert import densify
from .layers import PSConv2d

__all__ = ["profile", "format_profile"]


def _layer_counts(module: nn.Module, out: torch.Tensor) -> tuple[int, int, int, int]:
    """(params, dense_params, macs, dense_macs) of a conv or linear layer for one call."""
    bias = module.bias.numel() if getattr(module, "bias", None) is not None else 0
    if isinstance(module, PSConv2d):
        positions = out.numel() // out.shape[1]
        dense = module.mask.numel()
        return module.nnz + bias, dense + bias, module.nnz * positions, dense * positions
    if isinstance(module, nn.Conv2d):
        positions = out.numel() // out.shape[1]
        weights = module.weight.numel()
        return weights + bias, weights + bias, weights * positions, weights * positions
    assert isinstance(module, nn.Linear)
    rows = out.numel() // out.shape[-1]
    weights = module.weight.numel()
    return weights + bias, weights + bias, weights * rows, weights * rows


def profile(
    model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32), *, file_size: bool = True
) -> dict[str, Any]:
    """Count a model's parameters and multiply-accumulates for one forward of ``input_size``.

    MACs are those of conv and linear layers over their non-zero (kept) weights, the paper's
    "FLOPs"; ``dense_*`` are the same network with dense kernels. ``checkpoint_bytes`` is the
    exact size of :func:`psconv.save`'s file (``dense_checkpoint_bytes``: after ``densify``).
    """
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (N, C, H, W), got {input_size!r}")
    layers: list[dict[str, Any]] = []
    hooks = []

    def record(name: str):  # noqa: ANN202 - hook factory
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            params, dense_params, macs, dense_macs = _layer_counts(module, out)
            layers.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "pattern": module.pattern.name if isinstance(module, PSConv2d) else "dense",
                    "input_shape": list(inputs[0].shape),
                    "output_shape": list(out.shape),
                    "params": params,
                    "dense_params": dense_params,
                    "macs": macs,
                    "dense_macs": dense_macs,
                }
            )

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (PSConv2d, nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        # Counting needs shapes only: the reference path builds no kernel plan and times nothing
        # (auto would, for each new layer shape: seconds a model).
        with torch.no_grad(), kernels.using_backend("reference"):
            model(torch.zeros(size, device=device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    removed = sum(m.mask.numel() - m.nnz for m in model.modules() if isinstance(m, PSConv2d))
    result: dict[str, Any] = {
        "input_size": list(size),
        "params": params,
        "dense_params": params + removed,
        "macs": sum(layer["macs"] for layer in layers),
        "dense_macs": sum(layer["dense_macs"] for layer in layers),
        "layers": layers,
    }
    if file_size:
        result["checkpoint_bytes"] = len(serialize(model))
        result["dense_checkpoint_bytes"] = len(serialize(densify(model)))
    config = getattr(model, "psconv_config", None)
    if isinstance(config, dict):
        result["model"] = config.get("name")
        result["pattern"] = config.get("pattern")
    return result


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(int(n))


def format_profile(result: dict[str, Any]) -> str:
    """A readable per-layer table plus totals."""
    head = f"{'layer':<28} {'type':<9} {'pattern':<9} {'output':<16} {'params':>10} {'MACs':>10} {'dense MACs':>11}"
    lines = [head, "-" * len(head)]
    for layer in result["layers"]:
        shape = "x".join(str(s) for s in layer["output_shape"][1:])
        lines.append(
            f"{layer['name']:<28} {layer['type']:<9} {layer['pattern']:<9} {shape:<16} "
            f"{_human(layer['params']):>10} {_human(layer['macs']):>10} {_human(layer['dense_macs']):>11}"
        )
    lines.append("-" * len(head))
    p, dp, m, dm = result["params"], result["dense_params"], result["macs"], result["dense_macs"]
    lines.append(f"params (all, incl. BN): {p:,} of {dp:,} dense ({100 * (1 - p / dp):.1f}% fewer)")
    lines.append(f"MACs: {m:,} of {dm:,} dense ({dm / m:.2f}x fewer)")
    if "checkpoint_bytes" in result:
        cb, db = result["checkpoint_bytes"], result["dense_checkpoint_bytes"]
        lines.append(f"checkpoint: {cb:,} bytes (dense equivalent {db:,}, {db / cb:.2f}x smaller)")
    return "\n".join(lines)
