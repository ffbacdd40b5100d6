"""Inference speed against what a deployer would run instead: the deployment anchors.

For each model and pattern, interleaved in one process (every round runs each once, after the
previous runtime's threads have parked; median of the rounds), at each batch size:

- ``ours``: :func:`psconv.optimize_for_inference` of the sparse model (folded BatchNorm, fused
  epilogues, compiled sparse kernels), eager;
- ``ort_dense``: the dense twin (:func:`psconv.densify`) exported to ONNX and run by ONNX Runtime
  with all graph optimisations and ``intra_op_num_threads`` = the bench's threads;
- ``compiled_dense``: ``torch.compile`` of the dense twin (eval, no grad);
- ``eager_dense``: the dense twin in eager PyTorch, channels-last (oneDNN's better layout here).

BatchNorm statistics are set to realistic, non-trivial values first (as after training), so
folding is exercised; the weights are random (speed does not depend on their values).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import progress
from .bench import _interleaved
from .convert import densify
from .inference import optimize_for_inference
from .models import create_model

__all__ = ["DEPLOY_BATCHES", "bench_deploy", "format_deploy"]

DEPLOY_BATCHES = (1, 32)
# Pause before each sample: ONNX Runtime's threads spin on after a call (psconv.timing).
_SETTLE_S = 0.05


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def _ort_session(dense: nn.Module, image_size: int, threads: int) -> Callable[[torch.Tensor], Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(dense, (torch.zeros(1, 3, image_size, image_size),), buf, dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})


def _candidates(
    name: str, pattern: str, image_size: int, threads: int
) -> dict[str, Callable[[torch.Tensor], Any]]:
    sparse = _trained_like(create_model(name, pattern, num_classes=10, image_size=image_size))
    dense = densify(sparse).eval()
    ours = optimize_for_inference(sparse)
    dense_cl = densify(sparse).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(densify(sparse).eval())
    fns: dict[str, Callable[[torch.Tensor], Any]] = {
        "ours": ours,
        "eager_dense": dense_cl,
        "compiled_dense": compiled,
    }
    ort = _ort_session(dense, image_size, threads)
    if ort is not None:
        fns["ort_dense"] = ort
    return fns


def _on(f: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    def run() -> None:
        with torch.inference_mode():
            f(x)

    return run


def bench_deploy(
    models: list[str],
    patterns: list[str],
    *,
    batches: tuple[int, ...] = DEPLOY_BATCHES,
    image_size: int = 32,
    repeats: int = 5,
    threads: int = 0,
    target_s: float = 0.2,
) -> list[dict[str, Any]]:
    """Rows ``{model, pattern, batch, <candidate>_ms...}`` (median ms per batch)."""
    threads = threads or torch.get_num_threads()
    rows = []
    jobs = [(m, p) for m in models for p in patterns]
    for name, pattern in progress.iterate(jobs, "deploy bench"):
        fns = _candidates(name, pattern, image_size, threads)
        for batch in batches:
            x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
            times = _interleaved(
                {k: _on(f, x) for k, f in fns.items()}, repeats, target_s, settle_s=_SETTLE_S
            )
            row: dict[str, Any] = {"model": name, "pattern": pattern, "batch": batch}
            row |= {f"{k}_ms": round(v * 1e3, 4) for k, v in times.items()}
            if "ort_dense_ms" in row:
                row["speedup_vs_ort"] = round(row["ort_dense_ms"] / row["ours_ms"], 3)
            rows.append(row)
    return rows


def format_deploy(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<10} {'pattern':<9} {'batch':>5} {'ours':>9} {'ORT dense':>10} {'compiled':>9} {'eager':>9} {'vs ORT':>7}"
    lines = ["Inference (ms per batch, median; dense = the densified twin)", head, "-" * len(head)]
    for r in rows:
        ort = f"{r['ort_dense_ms']:>10.3f}" if "ort_dense_ms" in r else f"{'-':>10}"
        vs = f"{r['speedup_vs_ort']:>6.2f}x" if "speedup_vs_ort" in r else f"{'-':>7}"
        lines.append(
            f"{r['model']:<10} {r['pattern']:<9} {r['batch']:>5} {r['ours_ms']:>9.3f} {ort} "
            f"{r['compiled_dense_ms']:>9.3f} {r['eager_dense_ms']:>9.3f} {vs}"
        )
    return "\n".join(lines)
