"""``inspect``: what a checkpoint holds, from its header alone (no weight is read or built),
and what a checkpoint says about its data (class names, normalisation, recorded accuracy)."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from .checkpoint import CheckpointError, read_header
from .convert import apply_sparse_layers
from .data import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD
from .profile import profile

__all__ = ["summarize_checkpoint", "format_summary", "class_names", "normalization", "recorded_metrics"]

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# Bytes per element by dtype name: safetensors' names (current files) and torch's (format 1).
_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1, "bool": 1,
}  # fmt: skip


def class_names(config: dict[str, Any], meta: dict[str, Any]) -> list[str] | None:
    """The class names training recorded (or CIFAR-10's), else None."""
    num = config.get("num_classes")
    names = meta.get("classes")
    if isinstance(names, list) and len(names) == num and all(isinstance(n, str) for n in names):
        return list(names)
    dataset = meta.get("dataset")
    if num == 10 and (dataset == "cifar10" or (dataset is None and config.get("image_size") == 32)):
        return list(CIFAR10_CLASSES)
    return None


def normalization(meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Training's normalisation: recorded in meta if the trainer did, else the paper's."""
    mean, std = meta.get("mean"), meta.get("std")
    ok = (
        isinstance(mean, list)
        and isinstance(std, list)
        and len(mean) == len(std) == 3
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean + std)
        and all(v > 0 for v in std)
    )
    if ok:
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[union-attr]
    return CIFAR_MEAN, CIFAR_STD


def recorded_metrics(meta: dict[str, Any]) -> dict[str, Any]:
    """Accuracy-like numbers the trainer recorded (any key naming acc/loss/epoch)."""
    keys = ("acc", "loss", "epoch", "top1", "top5")
    return {
        k: v
        for k, v in meta.items()
        if any(t in k.lower() for t in keys) and isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }


def _skeleton_counts(config: dict[str, Any], layers: dict[str, Any], compact_params: int) -> dict[str, int]:
    """Params and MACs of the checkpoint's architecture, from a weightless skeleton.

    The network is laid out on PyTorch's meta device first (no memory), so a header that lies
    about ``image_size`` or ``num_classes`` is caught before anything is allocated; only then is
    the skeleton given (uninitialised, zeroed) CPU memory for one forward pass that counts MACs.
    """
    from .models import list_models, meta_skeleton

    name = str(config["name"])
    if name not in list_models():
        return {}  # a custom network or a newer psconv's: no architecture to count
    model = meta_skeleton(name, int(config["num_classes"]), int(config["image_size"]), compact_params)
    size = int(config["image_size"])
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.zero_()
    apply_sparse_layers(model, layers)
    result = profile(model, (1, 3, size, size), file_size=False)
    return {k: int(result[k]) for k in ("params", "dense_params", "macs", "dense_macs")}


def summarize_checkpoint(path: str | os.PathLike[str], *, count_macs: bool = True) -> dict[str, Any]:
    """What a checkpoint holds, from its header alone (no tensor is read or built).

    Parameters come from the tensor table (state tensors minus BatchNorm running statistics,
    matching ``sum(p.numel() for p in model.parameters())``). MACs and the dense parameter count
    come from ``meta`` when training recorded them, else (``count_macs``) from a skeleton of the
    architecture on PyTorch's meta device, which holds no memory.
    """
    name = str(path)
    header = read_header(path)
    try:
        return _summary(header, name, count_macs)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        detail = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {name!r} has a malformed header ({detail})") from None


def _summary(header: dict[str, Any], name: str, count_macs: bool) -> dict[str, Any]:
    config = dict(header.get("config") or {})
    meta = dict(header.get("meta") or {})
    layers = dict(header.get("sparse_layers") or {})
    table = header["tensors"]
    params = state_bytes = free_weights = 0
    weight_dtype = "float32"
    for key in header["state"]:
        entry = table[key]
        numel = int(entry["numel"])
        state_bytes += numel * _ITEMSIZE.get(str(entry["dtype"]), 8)
        if key.rsplit(".", 1)[-1] not in _BN_BUFFERS:
            params += numel
        if key.endswith(".weight_values"):
            free_weights += numel
            weight_dtype = str(entry["dtype"])
    patterns = sorted({str(spec["pattern"]) for spec in layers.values()})
    summary: dict[str, Any] = {
        "file": name,
        "file_bytes": int(header["file_bytes"]),
        "format_version": header.get("format_version"),
        "model": config.get("name"),
        "pattern": config.get("pattern") or (patterns[0] if len(patterns) == 1 else None),
        "layer_patterns": patterns,
        "sparse_layers": len(layers),
        "num_classes": config.get("num_classes"),
        "image_size": config.get("image_size"),
        "dataset": meta.get("dataset"),
        "classes": class_names(config, meta),
        "params": params,
        "state_bytes": state_bytes,
        "extra_bytes": int(header.get("extra_bytes") or 0),
        "metrics": recorded_metrics(meta),
        "meta": meta,
    }
    counts: dict[str, int] = {}
    if all(isinstance(meta.get(k), int) for k in ("macs", "dense_params", "dense_macs")):
        counts = {k: int(meta[k]) for k in ("macs", "dense_params", "dense_macs")}
        summary["counts_source"] = "meta"
    elif count_macs and {"name", "num_classes", "image_size"} <= set(config):
        counts = _skeleton_counts(config, layers, params)
        if counts and counts["params"] != params:
            raise CheckpointError(
                f"checkpoint {name!r}: its tensor table holds {params} parameters but a "
                f"{config['name']} with these layers has {counts['params']}"
            )
        summary["counts_source"] = "architecture (a weightless skeleton)" if counts else None
    if counts:
        summary.update(
            dense_params=counts["dense_params"], macs=counts["macs"], dense_macs=counts["dense_macs"]
        )
        removed = counts["dense_params"] - params
        # A checkpoint of the same model densified (no resume state): it stores the removed
        # zeros too; the headers differ by a few hundred bytes.
        model_bytes = summary["file_bytes"] - max(0, summary["extra_bytes"])
        summary["model_bytes_approx"] = model_bytes
        summary["dense_file_bytes_approx"] = model_bytes + removed * _ITEMSIZE.get(weight_dtype, 4)
    summary["free_weights"] = free_weights
    return summary


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(int(n))


def format_summary(s: dict[str, Any]) -> str:
    """The ``psconv inspect`` text."""
    lines = [f"checkpoint  {s['file']} (format v{s['format_version']}, {s['file_bytes']:,} bytes)"]
    lines.append(f"model       {s['model'] or 'custom (not in the registry)'}")
    pats = ", ".join(s["layer_patterns"]) or "dense"
    lines.append(f"pattern     {s['pattern'] or pats} ({s['sparse_layers']} sparse layers: {pats})")
    if s["image_size"]:
        lines.append(
            f"input       3x{s['image_size']}x{s['image_size']} ({s['dataset'] or 'dataset not recorded'})"
        )
    if s["classes"] is None and isinstance(s["num_classes"], int):
        lines.append(f"classes     {s['num_classes']} (names not recorded)")
    elif s["classes"]:
        shown = ", ".join(s["classes"][:10]) + (", ..." if len(s["classes"]) > 10 else "")
        lines.append(f"classes     {len(s['classes'])}: {shown}")
    if "dense_params" in s:
        p, dp = s["params"], s["dense_params"]
        lines.append(
            f"params      {p:,} ({_human(p)}) of {dp:,} dense ({100 * (1 - p / max(dp, 1)):.1f}% fewer)"
        )
        m, dm = s["macs"], s["dense_macs"]
        lines.append(f"MACs        {m:,} ({_human(m)}) of {dm:,} dense ({dm / max(m, 1):.2f}x fewer)")
        fb, mb, db = s["file_bytes"], s["model_bytes_approx"], s["dense_file_bytes_approx"]
        held = f" (model about {mb:,}, resume state {s['extra_bytes']:,})" if s["extra_bytes"] > 0 else ""
        lines.append(
            f"file size   {fb:,} bytes{held}; the dense model's checkpoint about {db:,} "
            f"({db / max(mb, 1):.2f}x larger)"
        )
    else:
        lines.append(
            f"params      {s['params']:,} (MACs not counted: --no-macs, or a model not in this psconv's registry)"
        )
    if s["extra_bytes"] > 0 and "dense_params" not in s:
        lines.append(f"extra state {s['extra_bytes']:,} bytes (optimizer/RNG state for resuming)")
    if s["metrics"]:
        lines.append("recorded    " + ", ".join(f"{k}={v}" for k, v in s["metrics"].items()))
    else:
        lines.append("recorded    no accuracy recorded")
    if s.get("verified"):
        lines.append("data        every tensor read; checksum matches")
    return "\n".join(lines)
