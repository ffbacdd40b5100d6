"""Reading checkpoints of psconv's first format (0.1, before safetensors); never written now.

Layout (little endian): ``b"PSCONV\\x00\\x01" | uint64 header length | JSON header | raw bytes``.
The header names every tensor (dtype, shape, offset) and holds a CRC32 of the data. These files
still load everywhere a checkpoint is read; ``psconv.save`` of the loaded model writes the
current format (``psconv convert-checkpoint OLD NEW`` does exactly that).
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["MAGIC", "decode_tree", "is_v1", "parse_v1"]

MAGIC = b"PSCONV\x00\x01"
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


def is_v1(raw: bytes) -> bool:
    return raw[: len(MAGIC) - 1] == MAGIC[:-1]


def parse_v1(raw: bytes, name: str) -> dict[str, Any]:
    """A v1 file as the parts of a checkpoint: config, sparse_layers, meta, state, extra
    (tensors decoded), and the header's tensor table."""
    header, data = _parse(raw, name)
    tensors = _tensors(header, data, name)
    try:
        return {
            "config": dict(header.get("config") or {}),
            "sparse_layers": dict(header.get("sparse_layers") or {}),
            "meta": dict(header.get("meta") or {}),
            "state": decode_tree(header["state"], tensors),
            "extra": decode_tree(header.get("extra"), tensors),
            "data_bytes": len(data),
        }
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError):
        raise CheckpointError(f"checkpoint {name!r} has a corrupt header") from None


def _parse(raw: bytes, name: str) -> tuple[dict[str, Any], memoryview]:
    if len(raw) < len(MAGIC) + 8 or raw[: len(MAGIC) - 1] != MAGIC[:-1]:
        raise CheckpointError(f"{name!r} is not a psconv checkpoint (bad magic bytes)")
    if raw[len(MAGIC) - 1] != MAGIC[-1]:
        raise CheckpointError(
            f"{name!r} has format version {raw[len(MAGIC) - 1]}, this psconv reads version {1}"
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
    if header.get("version") != 1:
        raise CheckpointError(f"{name!r} has format version {header.get('version')!r}, this psconv reads {1}")
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


def decode_tree(tree: Any, tensors: Any) -> Any:
    """A JSON tree with ``{"__tensor__": ref}`` leaves back to Python values (``tensors[ref]``:
    a list in this format, a name table in the current one); tuples and non-string keys too."""
    if isinstance(tree, list):
        return [decode_tree(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__tuple__"}:
            return tuple(decode_tree(v, tensors) for v in tree["__tuple__"])
        if set(tree) == {"__items__"}:
            return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in tree["__items__"]}
        return {k: decode_tree(v, tensors) for k, v in tree.items()}
    return tree
