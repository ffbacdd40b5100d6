"""Compact, index-free, code-free checkpoints.

File layout (little endian)::

    b"PSCONV\\x00\\x01" | uint64 header length | JSON header (utf-8) | raw tensor bytes

The header names every tensor (dtype, shape, offset), the model's build arguments and the
pattern of every sparse layer; the data holds only the model's state (the free weights of
sparse layers, never their zeros or an index) plus optional ``extra`` state. Loading parses
JSON and raw bytes only, so a file cannot run code. A CRC32 guards the data.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .convert import apply_sparse_layers, sparse_layers

__all__ = ["save", "load", "load_checkpoint", "read_header", "Checkpoint", "CheckpointError"]

MAGIC = b"PSCONV\x00\x01"
FORMAT_VERSION = 1
_MAX_HEADER = 64 * 1024 * 1024
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, foreign or of the wrong version."""


@dataclass
class Checkpoint:
    model: nn.Module
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: Any = None


class _Blob:
    """Collects tensors into one byte string and records where each lies."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.entries: list[dict[str, Any]] = []

    def add(self, tensor: torch.Tensor) -> int:
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"cannot save tensors of dtype {tensor.dtype}")
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        self.entries.append(
            {
                "dtype": _DTYPE_NAMES[tensor.dtype],
                "shape": list(tensor.shape),
                "offset": self.buffer.tell(),
                "nbytes": len(raw),
            }
        )
        self.buffer.write(raw)
        return len(self.entries) - 1


def _encode(value: Any, blob: _Blob) -> Any:
    """Nested Python value -> JSON-able tree, tensors replaced by references into the blob."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": blob.add(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, blob) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, blob) for k, v in value.items()}
        return {"__items__": [[_encode(k, blob), _encode(v, blob)] for k, v in value.items()]}
    raise ValueError(f"cannot save a value of type {type(value).__name__} in a checkpoint")


def _decode(tree: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in tree["__tuple__"])
        if set(tree) == {"__items__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in tree["__items__"]}
        return {k: _decode(v, tensors) for k, v in tree.items()}
    return tree


def _model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "psconv_config", None)
    return dict(config) if isinstance(config, dict) else {}


def serialize(model: nn.Module, *, extra: Any = None, **meta: Any) -> bytes:
    """The bytes :func:`save` writes."""
    blob = _Blob()
    state = _encode(dict(model.state_dict()), blob)
    extra_tree = _encode(extra, blob)
    data = blob.buffer.getvalue()
    header = {
        "format": "psconv-checkpoint",
        "version": FORMAT_VERSION,
        "config": _model_config(model),
        "sparse_layers": sparse_layers(model),
        "meta": meta,
        "state": state,
        "extra": extra_tree,
        "tensors": blob.entries,
        "data_bytes": len(data),
        "data_crc32": zlib.crc32(data),
    }
    try:
        head = json.dumps(header, separators=(",", ":")).encode()
    except TypeError as exc:
        raise ValueError(
            f"checkpoint meta must be JSON-like (numbers, strings, lists, dicts): {exc}"
        ) from None
    return MAGIC + struct.pack("<Q", len(head)) + head + data


def save(model: nn.Module, path: str | os.PathLike[str], *, extra: Any = None, **meta: Any) -> Path:
    """Write a compact checkpoint atomically (a crash leaves any older file at ``path`` intact).

    ``meta`` must be JSON-like (numbers, strings, lists, dicts); ``extra`` may also hold
    tensors (optimizer state, RNG states) and comes back from :func:`load_checkpoint`.
    """
    path = Path(path)
    atomic_write(path, serialize(model, extra=extra, **meta))
    return path


def atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a synced temp file and a rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> tuple[dict[str, Any], memoryview]:
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0  # read_bytes below names the problem
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        # /dev/zero or a disk would be read until memory runs out.
        raise CheckpointError(f"checkpoint {str(path)!r} is a device, not a file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror}") from None
    return _parse(raw, str(path))


def _parse(raw: bytes, name: str) -> tuple[dict[str, Any], memoryview]:
    if len(raw) < len(MAGIC) + 8 or raw[: len(MAGIC) - 1] != MAGIC[:-1]:
        raise CheckpointError(f"{name!r} is not a psconv checkpoint (bad magic bytes)")
    if raw[len(MAGIC) - 1] != MAGIC[-1]:
        raise CheckpointError(
            f"{name!r} has format version {raw[len(MAGIC) - 1]}, this psconv reads version {FORMAT_VERSION}"
        )
    (head_len,) = struct.unpack_from("<Q", raw, len(MAGIC))
    start = len(MAGIC) + 8
    if head_len > min(_MAX_HEADER, len(raw) - start):
        raise CheckpointError(f"checkpoint {name!r} is truncated or corrupt (header length {head_len})")
    try:
        header = json.loads(raw[start : start + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header") from None
    if not isinstance(header, dict) or header.get("format") != "psconv-checkpoint":
        raise CheckpointError(f"{name!r} is not a psconv checkpoint (foreign header)")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name!r} has format version {header.get('version')!r}, this psconv reads {FORMAT_VERSION}"
        )
    data = memoryview(raw)[start + head_len :]
    if header.get("data_bytes") != len(data):
        raise CheckpointError(
            f"checkpoint {name!r} is truncated or has trailing bytes "
            f"(data is {len(data)} bytes, header says {header.get('data_bytes')})"
        )
    if header.get("data_crc32") != zlib.crc32(data):
        raise CheckpointError(f"checkpoint {name!r} is corrupt (data checksum mismatch)")
    return header, data


def _tensors(header: dict[str, Any], data: memoryview, name: str) -> list[torch.Tensor]:
    tensors = []
    try:
        for entry in header["tensors"]:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
            count = 1
            for s in shape:
                count *= s
            itemsize = torch.empty((), dtype=dtype).element_size()
            if (
                min(shape, default=1) < 0
                or nbytes != count * itemsize
                or offset < 0
                or offset + nbytes > len(data)
            ):
                raise ValueError
            chunk = bytearray(data[offset : offset + nbytes])
            flat = torch.frombuffer(chunk, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
            tensors.append(flat.reshape(shape))
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt tensor table") from None
    return tensors


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's header (config, meta, sparse layers, tensor table) without building a model."""
    header, _ = _read(Path(path))
    header = dict(header)
    header["file_bytes"] = Path(path).stat().st_size
    return header


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Rebuild the model of a checkpoint (or fill ``model``, a dense skeleton of it)."""
    path = Path(path)
    name = str(path)
    header, data = _read(path)
    tensors = _tensors(header, data, name)
    # Building layers draws initial weights that the file then overwrites: leave the caller's
    # random stream as it was (a resumed training restores its own RNG state afterwards).
    with torch.random.fork_rng(devices=[]):
        return _restore(header, tensors, name, model, map_location)


def _check_dtypes(model: nn.Module, state: Any, name: str) -> None:
    """load_state_dict would silently cast a tensor the header relabelled (float32 -> int32)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header (state is not a table)")
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and isinstance(tensor, torch.Tensor) and tensor.dtype != expected[key].dtype:
            raise CheckpointError(
                f"checkpoint {name!r} does not match its model: {key!r} is {tensor.dtype}, "
                f"the model expects {expected[key].dtype}"
            )


def _restore(
    header: dict[str, Any],
    tensors: list[torch.Tensor],
    name: str,
    model: nn.Module | None,
    map_location: str | torch.device,
) -> Checkpoint:
    try:
        state = _decode(header["state"], tensors)
        extra = _decode(header.get("extra"), tensors)
        config = dict(header.get("config") or {})
        layers = dict(header.get("sparse_layers") or {})
        meta = dict(header.get("meta") or {})
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header") from None
    if model is None:
        if "name" not in config:
            raise CheckpointError(
                f"checkpoint {name!r} holds a custom model: pass a skeleton, load(path, model=...)"
            )
        from .models import create_model

        try:
            build = {k: config[k] for k in ("name", "num_classes", "image_size")}
            _refuse_oversized(build, tensors)
            model = create_model(**build)
        except (ValueError, TypeError, RuntimeError, MemoryError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {name!r}: cannot rebuild its model: {exc}") from None
        model.psconv_config = config  # type: ignore[assignment]
    try:
        apply_sparse_layers(model, layers)
        _check_dtypes(model, state, name)
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError, KeyError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {name!r} does not match its model: {first}") from None
    model.to(map_location)
    return Checkpoint(model=model, config=config, meta=meta, extra=extra)


def _refuse_oversized(build: dict[str, Any], tensors: list[torch.Tensor]) -> None:
    """Refuse a header whose ``num_classes``/``image_size`` describe a network far larger than
    the tensors stored: ``create_model`` would allocate and initialise every weight (gigabytes,
    or an out-of-memory kill) before ``load_state_dict`` could notice. The network is laid out on
    the meta device (no memory, no init); a real file keeps at least 1 of 9 weights of a layer.
    """
    from .models import _REGISTRY

    classes, size = build["num_classes"], build["image_size"]
    builder = _REGISTRY.get(build["name"]) if isinstance(build["name"], str) else None
    if builder is None or not isinstance(classes, int) or not isinstance(size, int):
        return  # create_model names the problem
    if classes < 1 or size < 32 or size % 32:
        return
    with torch.device("meta"):
        probe = builder(classes, size)
    needed = sum(p.numel() for p in probe.parameters())
    stored = sum(t.numel() for t in tensors)
    if needed > 9 * stored + 1_000_000:
        raise ValueError(f"its header describes a network of {needed:,} weights, the file stores {stored:,}")


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load a checkpoint written by :func:`save` and return its model, in eval mode."""
    return load_checkpoint(path, model=model, map_location=map_location).model.eval()
