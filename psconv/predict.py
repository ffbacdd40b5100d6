"""``predict``: a checkpoint's model ready for inference, image files in, top-k classes out.

- **Exit codes** (the command): 0 when at least one image was classified (files that could not
  be read are reported on stderr and listed under ``skipped`` in JSON); 2 when none could be.
- **Non-finite values**: image files decode to uint8 0..255, so they cannot carry NaN or Inf
  into the network. Tensors given to :func:`classify` with NaN/Inf are refused with
  ``ValueError``: NaN probabilities rank arbitrarily. A checkpoint whose weights hold NaN/Inf (a
  diverged run) is refused by :func:`load_for_inference`; one whose finite weights still yield
  NaN/Inf scores (a negative BatchNorm variance) has those images skipped and reported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .convert import densify
from .data import DeviceData
from .inspect_checkpoint import class_names, normalization

__all__ = [
    "IMAGE_FORMATS",
    "DeployModel",
    "load_for_inference",
    "load_image",
    "iter_image_files",
    "normalize",
    "classify",
    "predict_files",
    "PredictResult",
]

# Only decoders that parse the file themselves: Pillow's EPS plugin, for one, runs Ghostscript.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


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

    def runner(self) -> nn.Module:
        """The model in its inference form (:func:`psconv.optimize_for_inference`, computed once;
        the model itself when torch.fx cannot trace it): what predictions run."""
        if "runner" not in self._cache:
            from .inference import inference_form

            self._cache["runner"] = inference_form(self.model)
        return self._cache["runner"]

    def export_metadata(self) -> dict[str, Any]:
        """:func:`psconv.export.export_metadata` of this model (computed once)."""
        if "metadata" not in self._cache:
            from .export import export_metadata

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
    mean, std = normalization(ckpt.meta)
    return DeployModel(
        model=model,
        config=ckpt.config,
        meta=ckpt.meta,
        # Generic names only for a model that exists, so their number is that of its outputs.
        classes=class_names(ckpt.config, ckpt.meta)
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
        probs, finite = _scores(deploy.runner(), x)
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
