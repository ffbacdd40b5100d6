"""Compact, index-free checkpoints as safetensors files.

A checkpoint is an ordinary ``.safetensors`` file: any framework, hub or viewer opens it, and
loading it cannot run code. It holds only the model's state (for a sparse layer its free
weights, never the zeros or an index: the mask is a function of the pattern spec) and, for
resuming, optional ``extra`` state (optimizer, RNG). Its string metadata carries:

- ``format`` = ``psconv-checkpoint``, ``format_version`` = ``2``;
- ``config``: the build arguments (``create_model``'s name, pattern, classes, image size, seed);
- ``sparse_layers``: every sparse layer's pattern and seed, so any model can be rebuilt;
- ``meta``: what the trainer knew (dataset, classes, normalisation, accuracy), JSON;
- ``extra``: the structure of the resume state, its tensors stored as ``psconv_extra.N``;
- ``tensors_crc32``: a checksum over every tensor's name and bytes, so flipped bits are caught
  (safetensors itself checks only the layout).

Files of psconv 0.1's own format (``PSCONV`` magic) still load, read-only (see
:mod:`psconv.checkpoint_v1`); saving always writes this format.
"""

from __future__ import annotations

import json
import math
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .checkpoint_v1 import decode_tree, is_v1, parse_v1
from .convert import apply_sparse_layers, sparse_layers
from .errors import CheckpointError
from .fileio import atomic_write

__all__ = [
    "save",
    "load",
    "load_checkpoint",
    "read_header",
    "verify",
    "serialize",
    "Checkpoint",
    "CheckpointError",
]

FORMAT = "psconv-checkpoint"
FORMAT_VERSION = 2
EXTRA_PREFIX = "psconv_extra."


@dataclass
class Checkpoint:
    model: nn.Module
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: Any = None


# --------------------------------------------------------------------------------------------
# Writing


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested Python value -> JSON-able tree, tensors replaced by references to stored names."""
    if isinstance(value, torch.Tensor):
        name = f"{EXTRA_PREFIX}{len(tensors)}"
        tensors[name] = value
        return {"__tensor__": name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, tensors) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise ValueError(f"cannot save a value of type {type(value).__name__} in a checkpoint")


def _checksum(tensors: dict[str, torch.Tensor]) -> int:
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        crc = zlib.crc32(name.encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if key in seen:
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def serialize(model: nn.Module, *, extra: Any = None, **meta: Any) -> bytes:
    """The bytes :func:`save` writes."""
    state = dict(model.state_dict())
    clash = [k for k in state if k.startswith(EXTRA_PREFIX)]
    if clash:
        raise ValueError(
            f"model state names {clash[0]!r} clash with psconv's reserved prefix {EXTRA_PREFIX!r}"
        )
    extra_tensors: dict[str, torch.Tensor] = {}
    extra_tree = _encode(extra, extra_tensors)
    tensors = _plain(state | extra_tensors)
    config = getattr(model, "psconv_config", None)
    try:
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(dict(config) if isinstance(config, dict) else {}),
            "sparse_layers": json.dumps(sparse_layers(model)),
            "meta": json.dumps(meta),
            "extra": json.dumps(extra_tree),
            "tensors_crc32": str(_checksum(tensors)),
        }
    except TypeError as exc:
        raise ValueError(
            f"checkpoint meta must be JSON-like (numbers, strings, lists, dicts): {exc}"
        ) from None
    return safetensors_bytes(tensors, metadata=metadata)


def save(model: nn.Module, path: str | os.PathLike[str], *, extra: Any = None, **meta: Any) -> Path:
    """Write a compact checkpoint atomically (a crash leaves any older file at ``path`` intact).

    ``meta`` must be JSON-like (numbers, strings, lists, dicts); ``extra`` may also hold
    tensors (optimizer state, RNG states) and comes back from :func:`load_checkpoint`.
    """
    return atomic_write(path, serialize(model, extra=extra, **meta))


# --------------------------------------------------------------------------------------------
# Reading


def _check_path(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory, not a file")
    if not stat.S_ISREG(mode):
        # /dev/zero or a FIFO would be read until memory runs out, or block forever.
        raise CheckpointError(f"checkpoint {str(path)!r} is a device or pipe, not a file")


def _first_bytes(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror}") from None


def _json_field(metadata: dict[str, str], key: str, name: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header (metadata {key!r})") from None


def _open_metadata(handle: Any, name: str) -> dict[str, Any]:
    metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{name!r} is a safetensors file but not a psconv checkpoint (no psconv metadata)"
        )
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{name!r} has checkpoint format version {version!r}; this psconv reads 1 and {FORMAT_VERSION}"
        )
    parts = {k: _json_field(metadata, k, name) for k in ("config", "sparse_layers", "meta", "extra")}
    for key in ("config", "sparse_layers", "meta"):
        if not isinstance(parts[key], dict):
            raise CheckpointError(f"checkpoint {name!r} has a corrupt header (metadata {key!r})")
    parts["crc32"] = metadata.get("tensors_crc32")
    return parts


def _safe_open(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise CheckpointError(
            f"{str(path)!r} is not a psconv checkpoint, or is truncated or corrupt ({detail})"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror}") from None


def _table(handle: Any) -> dict[str, dict[str, Any]]:
    table = {}
    for key in handle.keys():
        sl = handle.get_slice(key)
        shape = [int(s) for s in sl.get_shape()]
        table[key] = {"dtype": str(sl.get_dtype()), "shape": shape, "numel": math.prod(shape)}
    return table


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint says about itself, without reading a weight: ``config``, ``meta``,
    ``sparse_layers``, the tensor table (``tensors``: name -> dtype, shape, numel), which of them
    are the model's ``state``, ``format_version`` and ``file_bytes``."""
    path = Path(path)
    _check_path(path)
    name = str(path)
    if is_v1(_first_bytes(path, 8)):
        parts = parse_v1(path.read_bytes(), name)
        tensors = {k: v for k, v in parts["state"].items() if isinstance(v, torch.Tensor)}
        table = {
            k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "numel": t.numel()}
            for k, t in tensors.items()
        }
        header = {k: parts[k] for k in ("config", "sparse_layers", "meta")}
        header |= {"tensors": table, "state": sorted(table), "format_version": 1}
        header["extra_bytes"] = parts["data_bytes"] - sum(
            t.numel() * t.element_size() for t in tensors.values()
        )
    else:
        with _safe_open(path) as handle:
            parts = _open_metadata(handle, name)
            try:
                table = _table(handle)
            except (SafetensorError, TypeError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"checkpoint {name!r} has a corrupt tensor table ({exc})") from None
        header = {k: parts[k] for k in ("config", "sparse_layers", "meta")}
        state = sorted(k for k in table if not k.startswith(EXTRA_PREFIX))
        header |= {"tensors": table, "state": state, "format_version": FORMAT_VERSION}
        itemsize = {
            k: torch.empty((), dtype=_torch_dtype(e["dtype"])).element_size() for k, e in table.items()
        }
        header["extra_bytes"] = sum(table[k]["numel"] * itemsize[k] for k in table if k not in state)
    header["file_bytes"] = path.stat().st_size
    return header


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _torch_dtype(name: str) -> torch.dtype:
    return _ST_DTYPES.get(name, torch.uint8)


def _read_all(path: Path) -> dict[str, Any]:
    """config, sparse_layers, meta, state (tensors) and extra (decoded) of a checkpoint file."""
    _check_path(path)
    name = str(path)
    if is_v1(_first_bytes(path, 8)):
        return parse_v1(path.read_bytes(), name)
    with _safe_open(path) as handle:
        parts = _open_metadata(handle, name)
        # safetensors has checked that the offsets tile the file, so every tensor's size is
        # bounded by the file's: reading them cannot be made to allocate more than that.
        try:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except (SafetensorError, TypeError, ValueError, RuntimeError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                f"checkpoint {name!r} holds a tensor this psconv cannot read ({detail})"
            ) from None
    if parts["crc32"] != str(_checksum(tensors)):
        raise CheckpointError(f"checkpoint {name!r} is corrupt (data checksum mismatch)")
    try:
        extra = decode_tree(parts["extra"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header (metadata 'extra')") from None
    state = {k: t for k, t in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    return {k: parts[k] for k in ("config", "sparse_layers", "meta")} | {"state": state, "extra": extra}


def verify(path: str | os.PathLike[str]) -> None:
    """Read every tensor of a checkpoint and check its checksum, without building the model.

    A damaged file raises :class:`CheckpointError` naming what is wrong, as loading it would;
    ``read_header`` alone never touches the data.
    """
    _read_all(Path(path))


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Rebuild the model of a checkpoint (or fill ``model``, a dense skeleton of it)."""
    path = Path(path)
    parts = _read_all(path)
    # Building layers draws initial weights that the file then overwrites: leave the caller's
    # random stream as it was (a resumed training restores its own RNG state afterwards).
    with torch.random.fork_rng(devices=[]):
        return _restore(parts, str(path), model, map_location)


def _check_dtypes(model: nn.Module, state: Any, name: str) -> None:
    """load_state_dict would silently cast a tensor of another dtype (float32 -> int32)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header (state is not a table)")
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and isinstance(tensor, torch.Tensor) and tensor.dtype != expected[key].dtype:
            raise CheckpointError(
                f"checkpoint {name!r} does not match its model: {key!r} is {tensor.dtype}, "
                f"the model expects {expected[key].dtype}"
            )


def _build(config: dict[str, Any], state: dict[str, Any], name: str) -> nn.Module:
    """The registered model a checkpoint names, its size checked on the meta device first."""
    from .models import create_model, meta_skeleton

    if "name" not in config:
        raise CheckpointError(
            f"checkpoint {name!r} holds a custom model: pass a skeleton, load(path, model=...)"
        )
    try:
        build = {k: config[k] for k in ("name", "num_classes", "image_size")}
        if not isinstance(build["name"], str):
            raise ValueError(f"unknown model {build['name']!r}")
        stored = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
        meta_skeleton(build["name"], build["num_classes"], build["image_size"], stored)
        model = create_model(**build)
    except (KeyError, ValueError, TypeError, RuntimeError, MemoryError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint {name!r}: cannot rebuild its model: {exc}") from None
    model.psconv_config = config  # type: ignore[assignment]
    return model


def _restore(
    parts: dict[str, Any], name: str, model: nn.Module | None, map_location: str | torch.device
) -> Checkpoint:
    config, layers, meta, state = parts["config"], parts["sparse_layers"], parts["meta"], parts["state"]
    if model is None:
        model = _build(config, state, name)
    try:
        apply_sparse_layers(model, layers)
        _check_dtypes(model, state, name)
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError, KeyError, OverflowError, AttributeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {name!r} does not match its model: {first}") from None
    model.to(map_location)
    return Checkpoint(model=model, config=config, meta=meta, extra=parts["extra"])


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load a checkpoint written by :func:`save` and return its model, in eval mode."""
    return load_checkpoint(path, model=model, map_location=map_location).model.eval()
