"""Deployment: inspect a checkpoint, classify image files, export to ONNX or TorchScript.

Choices (documented in ``psconv <command> --help`` too):

- **Export form**: the exported graph is the *dense equivalent* (:func:`psconv.densify`, the
  fixed zeros written into ordinary ``Conv`` weights). Inside an ONNX or TorchScript file the
  mask cannot be recomputed from the pattern spec, so a compact graph (free weights plus a
  scatter) would have to carry the scatter's int64 index, 8 bytes per kept weight: for VGG16
  PSD1_P16 that is 9.9 MB of weights + 19.6 MB of index = 29.5 MB, against 58.9 MB dense and
  9.9 MB for the psconv checkpoint, which needs no index. And runtimes fold a constant scatter
  back into a dense kernel at load time (onnxruntime's constant folding, TorchScript freezing),
  so it would run no faster and use as much memory. The dense form runs on every runtime,
  quantiser and compiler unchanged; the compact checkpoint stays the format to store and ship,
  and the pattern, parameter and MAC counts travel in the exported file's metadata.
- **Overwriting**: ``export`` writes atomically and never replaces an existing file unless
  ``force`` is given; it never overwrites the checkpoint it reads, even with ``force``.
- **Predict exit codes**: 0 when at least one image was classified (files that could not be
  read are reported on stderr and listed under ``skipped`` in JSON); 2 when none could be.
- **Non-finite values**: image files decode to uint8 0..255, so they cannot carry NaN or Inf
  into the network (a float TIFF holding NaN decodes to arbitrary bytes through Pillow's
  conversion, like any other pixel values). Tensors given to :func:`classify` with NaN/Inf are
  refused with ``ValueError``: the network itself propagates NaN to NaN logits, and NaN
  probabilities rank arbitrarily. A checkpoint whose weights hold NaN/Inf (a diverged run) is
  refused by :func:`load_for_inference`; one whose finite weights still yield NaN/Inf scores
  (a negative BatchNorm variance) has those images skipped and reported by ``predict``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, read_header
from .convert import apply_sparse_layers, densify
from .data import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD, DeviceData
from .profile import profile

__all__ = [
    "IMAGE_FORMATS",
    "DeployModel",
    "summarize_checkpoint",
    "format_summary",
    "load_for_inference",
    "load_image",
    "iter_image_files",
    "classify",
    "predict_files",
    "PredictResult",
    "normalize",
    "run_exported",
    "load_exported",
    "export_model",
    "export_metadata",
]

# Only decoders that parse the file themselves: Pillow's EPS plugin, for one, runs Ghostscript.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1}
EXPORT_FORMATS = ("onnx", "torchscript")


# --------------------------------------------------------------------------------------------
# What a checkpoint says about itself


def _class_names(config: dict[str, Any], meta: dict[str, Any]) -> list[str] | None:
    """The class names training recorded (or CIFAR-10's), else None."""
    num = config.get("num_classes")
    names = meta.get("classes")
    if isinstance(names, list) and len(names) == num and all(isinstance(n, str) for n in names):
        return list(names)
    dataset = meta.get("dataset")
    if num == 10 and (dataset == "cifar10" or (dataset is None and config.get("image_size") == 32)):
        return list(CIFAR10_CLASSES)
    return None


def _norm_constants(meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _metrics(meta: dict[str, Any]) -> dict[str, Any]:
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
    about ``image_size`` or ``num_classes`` is caught before anything is allocated: a real
    checkpoint keeps at least 1/9 of every weight, so its dense network has at most 9x its
    parameters. Only then is the skeleton given (uninitialised, zeroed) CPU memory for one
    forward pass that counts MACs. Meta-device BatchNorm would import torch._dynamo (seconds).
    """
    from . import models

    name, size, classes = str(config["name"]), int(config["image_size"]), int(config["num_classes"])
    if name not in models.list_models():
        return {}  # a custom network or a newer psconv's: no architecture to count
    if classes < 1 or size < 32 or size % 32:
        raise ValueError("bad num_classes or image_size")
    with torch.device("meta"):
        # The bare builder, not create_model: its initialisation is wasted work here.
        model = models._REGISTRY[name](classes, size)
    dense = sum(p.numel() for p in model.parameters())
    if dense > 9 * compact_params:
        raise ValueError(f"it describes a {name} of {dense:,} weights but stores {compact_params:,}")
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
    state = header["state"]
    if not isinstance(state, dict) or not isinstance(table, list):
        raise TypeError
    params = 0
    state_bytes = 0
    free_weights = 0
    weight_dtype = "float32"
    for key, ref in state.items():
        entry = table[int(ref["__tensor__"])]
        numel = math.prod(int(s) for s in entry["shape"])
        state_bytes += int(entry["nbytes"])
        if key.rsplit(".", 1)[-1] not in _BN_BUFFERS:
            params += numel
        if key.endswith(".weight_values"):
            free_weights += numel
            weight_dtype = str(entry["dtype"])
    patterns = sorted({str(spec["pattern"]) for spec in layers.values()})
    summary: dict[str, Any] = {
        "file": name,
        "file_bytes": int(header["file_bytes"]),
        "format_version": header.get("version"),
        "model": config.get("name"),
        "pattern": config.get("pattern") or (patterns[0] if len(patterns) == 1 else None),
        "layer_patterns": patterns,
        "sparse_layers": len(layers),
        "num_classes": config.get("num_classes"),
        "image_size": config.get("image_size"),
        "dataset": meta.get("dataset"),
        "classes": _class_names(config, meta),
        "params": params,
        "state_bytes": state_bytes,
        "extra_bytes": int(header.get("data_bytes") or 0) - state_bytes,
        "metrics": _metrics(meta),
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
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# A model ready to run


@dataclass
class DeployModel:
    """A checkpoint's model in eval mode plus what inference needs to know about it."""

    model: nn.Module
    config: dict[str, Any]
    meta: dict[str, Any]
    classes: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def dense(self) -> nn.Module:
        """The dense-equivalent copy of the model (computed once)."""
        if "dense" not in self._cache:
            self._cache["dense"] = densify(self.model).eval()
        return self._cache["dense"]

    def export_metadata(self) -> dict[str, Any]:
        """:func:`export_metadata` of this model (computed once)."""
        if "metadata" not in self._cache:
            self._cache["metadata"] = export_metadata(self)
        return self._cache["metadata"]


def load_for_inference(path: str | os.PathLike[str]) -> DeployModel:
    """Load a checkpoint for prediction or export; refuse non-finite weights and custom models."""
    name = str(path)
    ckpt = load_checkpoint(path)
    model = ckpt.model.eval()
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"checkpoint {name!r} holds NaN/Inf values in {key!r} (did its training diverge?)"
            )
    size = ckpt.config.get("image_size")
    if not isinstance(size, int) or size < 1:
        raise CheckpointError(f"checkpoint {name!r} does not record its input size (config['image_size'])")
    mean, std = _norm_constants(ckpt.meta)
    return DeployModel(
        model=model,
        config=ckpt.config,
        meta=ckpt.meta,
        # Generic names only for a model that exists, so their number is that of its outputs.
        classes=_class_names(ckpt.config, ckpt.meta)
        or [f"class_{i}" for i in range(int(ckpt.config["num_classes"]))],
        image_size=size,
        mean=mean,
        std=std,
        source=name,
    )


# --------------------------------------------------------------------------------------------
# Images


def load_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode an image file to uint8 ``[size, size, 3]`` RGB as the training data looked.

    The shorter side is resized to ``size`` (bilinear, antialiased) and the centre cropped,
    so the aspect ratio is kept; a ``size`` x ``size`` image (CIFAR-10, Tiny ImageNet) is left
    untouched. EXIF orientation is applied; alpha is dropped; greyscale becomes 3 channels.
    Raises ``ValueError`` for anything that is not a readable PNG/JPEG/BMP/GIF/WebP/TIFF.
    """
    from PIL import Image, ImageOps

    file = Path(path)
    if file.is_dir():
        raise ValueError("is a directory")
    if not file.exists():
        raise ValueError("no such file")
    if not file.is_file():
        # A FIFO or device would block or never end: only regular files are opened.
        raise ValueError("not a regular file")
    try:
        with warnings.catch_warnings():
            # A decompression bomb is an error here; Pillow's other warnings about damaged
            # metadata (EXIF, ICC) would be noise on stderr around the one-line skip report.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                img = ImageOps.exif_transpose(img)
                rgb = img.convert("RGB")
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a directory") from None
    except PermissionError:
        raise ValueError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"not an image ({'/'.join(IMAGE_FORMATS)})") from None
    except Exception as exc:  # Pillow raises many types for damaged files
        raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    w, h = rgb.size
    if w < 1 or h < 1:
        raise ValueError("image is empty")
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.array(rgb, dtype=np.uint8)


def iter_image_files(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """The files named, and every non-hidden file under the folders named, in sorted order.

    Symbolic links to folders are not followed (no loops); files of any name are yielded, so a
    misnamed or corrupt file is reported by the decoder rather than silently passed over.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(filenames):
                    if not fn.startswith("."):
                        yield Path(dirpath) / fn
        else:
            yield path


# --------------------------------------------------------------------------------------------
# Prediction


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW, with exactly the arithmetic of training and ``psconv eval``."""
    labels = np.zeros(len(images), dtype=np.int64)
    data = DeviceData(images, labels, "cpu", mean=tuple(mean), std=tuple(std), pad=0)
    return data.normalize(data.x)


@torch.no_grad()
def _scores(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities, per-row finiteness of the logits) for a normalised batch."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch [N, 3, H, W], got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("input holds NaN or Inf values; the network would return NaN scores")
    was_training = model.training
    model.eval()
    try:
        logits = model(x).float()
    finally:
        model.train(was_training)
    return torch.softmax(logits, dim=1), torch.isfinite(logits).all(dim=1)


def classify(model: nn.Module, x: torch.Tensor, top_k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and class indices of the ``top_k`` classes for a normalised batch.

    Raises ``ValueError`` for NaN/Inf inputs and when the network's own outputs are not finite
    (weights that are finite but broken, such as a negative BatchNorm variance).
    """
    probs, finite = _scores(model, x)
    if not bool(finite.all()):
        raise ValueError("the network returned NaN/Inf scores; its checkpoint is probably damaged")
    k = max(1, min(int(top_k), probs.shape[1]))
    return probs.topk(k, dim=1)


@dataclass
class PredictResult:
    predictions: list[dict[str, Any]]
    skipped: list[dict[str, str]]


def predict_files(
    deploy: DeployModel,
    paths: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 64,
    on_skip: Callable[[str, str], None] | None = None,
) -> PredictResult:
    """Classify every image among ``paths`` (folders walked); unreadable files are skipped.

    ``on_skip(file, reason)`` is called for each skipped file as it happens.
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    predictions: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        x = normalize(np.stack([a for _, a in pending]), deploy.mean, deploy.std)
        probs, finite = _scores(deploy.model, x)
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for (name, _), vals, idx, ok in zip(pending, values.tolist(), indices.tolist(), finite.tolist()):
            if not ok:
                reason = "the network returned NaN/Inf scores (is the checkpoint damaged?)"
                skipped.append({"file": name, "reason": reason})
                if on_skip is not None:
                    on_skip(name, reason)
                continue
            top = [
                {"class": deploy.classes[i], "index": i, "probability": round(v, 6)}
                for v, i in zip(vals, idx)
            ]
            predictions.append({"file": name, "top": top})
        pending.clear()

    for path in iter_image_files(paths):
        try:
            pending.append((str(path), load_image(path, deploy.image_size)))
        except ValueError as exc:
            skipped.append({"file": str(path), "reason": str(exc)})
            if on_skip is not None:
                on_skip(str(path), str(exc))
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return PredictResult(predictions, skipped)


# --------------------------------------------------------------------------------------------
# Export


def export_metadata(deploy: DeployModel) -> dict[str, Any]:
    """What an exported file says about itself: pattern, params, MACs, classes, preprocessing."""
    from . import __version__

    size = deploy.image_size
    counts = profile(deploy.model, (1, 3, size, size), file_size=False)
    layers = {}
    from .layers import PSConv2d

    for name, module in deploy.model.named_modules():
        if isinstance(module, PSConv2d):
            layers[name] = module.pattern.name
    return {
        "producer": f"psconv {__version__}",
        "source_checkpoint": os.path.basename(deploy.source),
        "model": deploy.config.get("name"),
        "pattern": deploy.config.get("pattern"),
        "sparse_layers": layers,
        "graph": "dense-equivalent: the pattern's fixed zeros are written into ordinary Conv weights",
        "params": int(counts["params"]),
        "dense_params": int(counts["dense_params"]),
        "macs": int(counts["macs"]),
        "dense_macs": int(counts["dense_macs"]),
        "num_classes": len(deploy.classes),
        "classes": deploy.classes,
        "image_size": size,
        "input": f"float32 [N, 3, {size}, {size}] RGB, (pixel/255 - mean) / std",
        "output": f"float32 [N, {len(deploy.classes)}] logits",
        "mean": list(deploy.mean),
        "std": list(deploy.std),
        "dataset": deploy.meta.get("dataset"),
        "metrics": _metrics(deploy.meta),
    }


def _onnx_bytes(dense: nn.Module, example: torch.Tensor, metadata: dict[str, Any]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ValueError(
            "ONNX export needs the optional packages onnx and onnxruntime: pip install 'psconv[onnx]'"
        ) from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter (dynamo=False) writes one self-contained file with no
        # extra dependency; the dynamo exporter would need onnxscript and may write side files.
        torch.onnx.export(
            dense,
            (example,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = f"psconv {metadata.get('model')} {metadata.get('pattern')} (dense-equivalent graph)"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = f"psconv.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
    entry = proto.metadata_props.add()
    entry.key = "psconv.json"
    entry.value = json.dumps(metadata)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(dense: nn.Module, example: torch.Tensor, metadata: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Tracing records plain tensor ops, so every registered network exports, whatever
        # Python its forward uses; the networks have no data-dependent control flow.
        traced = torch.jit.trace(dense, (example,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={"psconv.json": json.dumps(metadata, indent=1)})
    return buffer.getvalue()


def load_exported(path: str | os.PathLike[str], fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file with its own runtime (onnxruntime or torch.jit); returns ``x -> logits``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.detach().cpu().numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module(x)

    return run


def run_exported(path: str | os.PathLike[str], fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file on ``x`` with its own runtime."""
    return load_exported(path, fmt)(x)


def _write_new_file(out: Path, payload: bytes, *, force: bool, protect: Path) -> None:
    """Write ``payload`` to ``out`` atomically; never replace an existing file unless ``force``."""
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a directory; name the file to write")
    if out.exists() and protect.exists() and os.path.samefile(out, protect):
        raise ValueError(f"--out {str(out)!r} is the checkpoint being exported; choose another name")
    if out.exists() and not force:
        raise ValueError(f"{str(out)!r} already exists; pass --force to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise ValueError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, out)
        else:
            # link() fails if the name exists: no window in which another writer's file is lost.
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise ValueError(f"{str(out)!r} already exists; pass --force to overwrite it") from None
            except OSError:
                if out.exists():
                    raise ValueError(f"{str(out)!r} already exists; pass --force to overwrite it") from None
                os.replace(tmp, out)
    except OSError as exc:
        raise ValueError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_model(
    checkpoint: str | os.PathLike[str] | DeployModel,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint's model (dense-equivalent graph, batch size free) to ONNX or TorchScript.

    With ``verify`` the written file is run by its own runtime on a random batch and compared
    with psconv's model (skipped for ONNX when onnxruntime is not installed). Returns the
    metadata written, plus ``max_abs_diff`` when verified. ``checkpoint`` may be a loaded
    :class:`DeployModel`, to export one model to several formats without reloading it.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out_path = Path(out)
    if out_path.is_dir():
        raise ValueError(f"--out {str(out_path)!r} is a directory; name the file to write")
    source = Path(checkpoint.source if isinstance(checkpoint, DeployModel) else checkpoint)
    # Checked before the (slow) export as well as at the end, where the write is atomic.
    if out_path.exists() and source.exists() and os.path.samefile(out_path, source):
        raise ValueError(f"--out {str(out_path)!r} is the checkpoint being exported; choose another name")
    if out_path.exists() and not force:
        raise ValueError(f"{str(out_path)!r} already exists; pass --force to overwrite it")
    deploy = checkpoint if isinstance(checkpoint, DeployModel) else load_for_inference(checkpoint)
    metadata = deploy.export_metadata()
    size = deploy.image_size
    example = torch.zeros(1, 3, size, size)
    payload = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(deploy.dense(), example, metadata)
    _write_new_file(out_path, payload, force=force, protect=source)
    result = dict(metadata, file=str(out_path), file_bytes=len(payload), format=fmt)
    if verify:
        runnable = True
        if fmt == "onnx":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                runnable = False
        if runnable:
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                ours = deploy.model(x)
            theirs = run_exported(out_path, fmt, x)
            diff = float((ours - theirs).abs().max())
            result["max_abs_diff"] = diff
            tol = 1e-4 * max(1.0, float(ours.abs().max()))
            if not diff <= tol:
                raise ValueError(
                    f"exported {fmt} model differs from psconv's by {diff:.3g} (tolerance {tol:.3g}); "
                    f"{str(out_path)!r} was written but should not be trusted"
                )
    return result
