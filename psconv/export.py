"""Export a checkpoint's model: ``pt2`` keeps the sparse speed; ONNX and TorchScript are dense.

``pt2`` is the ``torch.export`` program of :func:`psconv.optimize_for_inference` (folded
BatchNorm, fused epilogues) with psconv's operators (``torch.ops.psconv.conv``) in it: it runs the
sparse kernels wherever psconv is installed (``import psconv`` registers the operators;
:func:`psconv.load_program` calls them without the operator dispatch), batch size free. For runtimes without psconv, the ONNX and TorchScript graphs are the *dense
equivalent* (:func:`psconv.densify`, the fixed zeros written
into ordinary ``Conv`` weights). Inside an ONNX or TorchScript file the mask cannot be
recomputed from the pattern spec, so a compact graph (free weights plus a scatter) would have to
carry the scatter's int64 index, 8 bytes per kept weight: for VGG16 PSD1_P16 that is 9.9 MB of
weights + 19.6 MB of index = 29.5 MB, against 58.9 MB dense and 9.9 MB for the psconv
checkpoint, which needs no index. And runtimes fold a constant scatter back into a dense kernel
at load time (onnxruntime's constant folding, TorchScript freezing), so it would run no faster
and use as much memory. The dense form runs on every runtime, quantiser and compiler unchanged;
the compact checkpoint stays the format to store and ship, and the pattern, parameter and MAC
counts travel in the exported file's metadata.

``export`` writes atomically and never replaces an existing file unless ``force`` is given; it
never overwrites the checkpoint it reads, even with ``force``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import FileExistsRefused, atomic_write
from .inspect_checkpoint import recorded_metrics
from .predict import DeployModel, load_for_inference
from .profile import profile

__all__ = ["EXPORT_FORMATS", "export_model", "export_metadata", "load_exported", "run_exported"]

EXPORT_FORMATS = ("onnx", "torchscript", "pt2")


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
        "metrics": recorded_metrics(deploy.meta),
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


def _export_form(model: nn.Module, example: torch.Tensor) -> None:
    """Each sparse layer of the inference form as the program will run it. On the kernels: free
    weights only (the kernels find their layout from the pattern spec), its mask and flat index
    deleted; ``torch.export`` saves every buffer, used or not, and these two (bool and int64)
    weigh 2.4x the free weights (a ResNet18 PSD2_P8 program for Tiny ImageNet was 55.7 MB, its
    weights 16.4 MB). On oneDNN: a :class:`FusedConv2d` with the zeros written in. The decision
    is the traced program's (free batch: the kernel where it wins at batch 1 and 16)."""
    from .inference import FusedConv2d
    from .kernels import uses_fast
    from .layers import sparse_layer_inputs

    done: set[str] = set()
    with torch.no_grad():
        for name, layer, shape in sparse_layer_inputs(model, example):
            if name in done:  # a layer called twice is decided once
                continue
            done.add(name)
            if all(uses_fast(layer, torch.zeros(b, *shape[1:])) for b in (1, 16)):
                del layer.mask, layer.flat_index
            else:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, FusedConv2d(layer))


def _pt2_bytes(deploy: DeployModel, example: torch.Tensor, metadata: dict[str, Any]) -> bytes:
    """The exported program of the inference form: psconv's sparse operators stay in it, so it
    keeps the sparse speed (and needs psconv installed to run). Adds ``kernel_layers`` (how many
    sparse layers call the operator) to ``metadata``."""
    from .inference import optimize_for_inference

    model = optimize_for_inference(deploy.model)
    _export_form(model, example)
    batch = torch.export.Dim("batch", min=1, max=1024)  # within the kernels' 32-bit pixel indices
    example = example.expand(2, *example.shape[1:]).contiguous()  # a batch of 1 would be specialised
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    # On CPUs where 'auto' measures, layers where oneDNN wins stay convolutions: say how many.
    metadata["kernel_layers"] = sum(
        node.target is torch.ops.psconv.conv.default for node in program.graph.nodes
    )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The first conv's weight is channels-last on purpose (oneDNN's fast path). torch's
        # archive warns on any tensor that does not cover its storage in order, but it stores
        # the strides and load restores them, so the user would be warned about nothing.
        warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
        torch.export.save(
            program,
            buffer,
            extra_files={"psconv.json": json.dumps(dict(metadata, graph="sparse: psconv operators"))},
        )
    return buffer.getvalue()


def load_exported(path: str | os.PathLike[str], fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file with its own runtime (onnxruntime or torch.jit); returns ``x -> logits``."""
    if fmt == "pt2":
        from . import kernels  # noqa: F401  (registers the psconv operators the program calls)

        module = torch.export.load(str(path)).module()

        def run_program(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return run_program
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
    try:
        atomic_write(out, payload, overwrite=force)
    except FileExistsRefused:
        raise ValueError(f"{str(out)!r} already exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise ValueError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None


def export_model(
    checkpoint: str | os.PathLike[str] | DeployModel,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint's model (batch size free) as pt2 (sparse operators) or ONNX / TorchScript
    (dense-equivalent graph).

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
    if fmt == "pt2":
        payload = _pt2_bytes(deploy, example, metadata)
    else:
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
