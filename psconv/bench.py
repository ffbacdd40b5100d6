"""``psconv bench``: wall-clock speed of pattern-sparse models against dense and masked-dense.

For each model and pattern, three implementations of the same network are timed in one run,
interleaved (every round runs each once), and the median of the rounds is reported:

- ``dense``: the network with ordinary ``nn.Conv2d`` layers (``densify``), the best of NCHW
  and channels-last inputs/weights, i.e. oneDNN at its best;
- ``masked``: the pattern model on the reference path (scatter the kept weights into a dense
  kernel, then ``F.conv2d``), which is what the authors' masking code costs;
- ``psconv``: the pattern model on the ``auto`` backend (or ``fast``: ``--backend``), the best
  of NCHW and channels-last.

Cases: forward at batch 1 and at the large batch (eval mode, no grad), and a training step at
the large batch (forward, cross-entropy, backward, SGD with momentum). Per layer, each
pattern-sparse conv is timed alone on its real input shape (forward, and forward+backward).
The ideal ratio beside each speedup is dense MACs / kept MACs (from :func:`psconv.profile`).
Peak memory of a training step: in a fresh subprocess, after one warm-up step, the growth of the
resident set's high-water mark over one more step, and that process's peak RSS.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, progress, timing
from .allocator import tune_allocator
from .layers import PSConv2d, sparse_layer_inputs
from .runtime import cpu_id, cpu_name

__all__ = ["run_bench", "bench_model", "format_report", "DEFAULT_PATTERNS", "DEFAULT_MODELS", "CASES"]

DEFAULT_PATTERNS = ("PS4_P4", "PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9")
# What one model bench can time: forward at batch 1, forward and a training step at its batch.
CASES = ("fwd1", "fwd", "train")
DEFAULT_MODELS = ("vgg16", "resnet18")
_CL = torch.channels_last


# ----------------------------------------------------------------------------- timing helpers
# Sample length multiplier (--quick shrinks it: a smoke run takes seconds); the psconv rows' backend.
_SAMPLE_SCALE, _SPARSE_BACKEND = 1.0, "auto"


def _interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, target_s: float, settle_s: float = 0.0
) -> dict[str, float]:
    """Median seconds per call of each function, sampled round-robin (:mod:`psconv.timing`)."""
    target_s *= _SAMPLE_SCALE
    if target_s < 0.01:  # smoke runs: one call per sample
        calls = {k: 1 for k in fns}
    else:
        calls = {k: timing.calls_per_sample(f, target_s) for k, f in fns.items()}
    return timing.interleaved(fns, repeats, calls, settle_s=settle_s)


def _forward_fn(model: nn.Module, x: torch.Tensor, backend: str) -> Callable[[], Any]:
    def fn() -> None:
        with kernels.using_backend(backend), torch.no_grad():
            model(x)

    return fn


def _train_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, backend: str) -> Callable[[], Any]:
    # A small learning rate keeps the weights finite over many timed steps.
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def fn() -> None:
        with kernels.using_backend(backend):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    return fn


# ----------------------------------------------------------------------------- models
def _variants(name: str, pattern: str, image_size: int) -> tuple[nn.Module, nn.Module]:
    from .convert import densify
    from .models import create_model

    sparse = create_model(name, pattern, num_classes=10, image_size=image_size)
    dense = densify(sparse)
    return sparse, dense


def _ideal(model: nn.Module, image_size: int) -> tuple[float, dict[str, float]]:
    from .profile import profile

    prof = profile(model, (1, 3, image_size, image_size), file_size=False)
    per_layer = {
        layer["name"]: layer["dense_macs"] / max(layer["macs"], 1)
        for layer in prof["layers"]
        if layer.get("type") == "PSConv2d"
    }
    return prof["dense_macs"] / max(prof["macs"], 1), per_layer


def _both_layouts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    return model, copy.deepcopy(model).to(memory_format=_CL)


def _case_inputs(case: str, batch: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = 1 if case == "fwd1" else batch
    return torch.randn(b, 3, image_size, image_size), torch.randint(0, 10, (b,))


def _time_case(
    case: str,
    dense: nn.Module,
    sparse: dict[str, nn.Module],
    batch: int,
    image_size: int,
    repeats: int,
) -> dict[str, float]:
    """Median seconds for dense (NCHW, CL), and per pattern masked and psconv (NCHW, CL)."""
    x, y = _case_inputs(case, batch, image_size)
    xcl = x.contiguous(memory_format=_CL)
    fns: dict[str, Callable[[], Any]] = {}
    train = case == "train"
    models: list[tuple[str, nn.Module, str]] = []
    d_nchw, d_cl = _both_layouts(dense)
    models += [("dense/nchw", d_nchw, "reference"), ("dense/cl", d_cl, "reference")]
    for pat, m in sparse.items():
        m_nchw, m_cl = _both_layouts(m)
        models += [(f"{pat}/masked", m_nchw, "reference"), (f"{pat}/psconv/nchw", m_nchw, _SPARSE_BACKEND)]
        models += [(f"{pat}/psconv/cl", m_cl, _SPARSE_BACKEND)]
    for key, model, backend in models:
        inp = xcl if key.endswith("/cl") else x
        if train:
            model.train()
            fns[key] = _train_fn(model, inp, y, backend)
        else:
            model.eval()
            fns[key] = _forward_fn(model, inp, backend)
    return _interleaved(fns, repeats, target_s=0.3 if train else 0.15)


# ----------------------------------------------------------------------------- per layer
def _bench_layer(layer: PSConv2d, shape: tuple[int, ...], repeats: int, train: bool) -> dict[str, float]:
    conv = layer.to_conv()
    conv_cl = copy.deepcopy(conv).to(memory_format=_CL)
    x = torch.randn(shape)
    xcl = x.contiguous(memory_format=_CL)
    if train:
        x.requires_grad_(True)
        xcl.requires_grad_(True)

    def call(mod: nn.Module, inp: torch.Tensor, backend: str) -> Callable[[], Any]:
        def fn() -> None:
            with kernels.using_backend(backend):
                if train:
                    mod(inp).sum().backward()
                else:
                    with torch.no_grad():
                        mod(inp)

        return fn

    fns = {
        "dense/nchw": call(conv, x, "reference"),
        "dense/cl": call(conv_cl, xcl, "reference"),
        "masked": call(layer, x, "reference"),
        "psconv": call(layer, xcl, _SPARSE_BACKEND),
    }
    return _interleaved(fns, repeats, target_s=0.05)


def _runs_fast(layer: nn.Module, shape: tuple[int, ...], train: bool) -> bool:
    """Whether the timed call took the kernels: asked as that call was made (backend, batch,
    gradients), since 'auto' decides a training call and a forward call of a shape apart."""
    with kernels.using_backend(_SPARSE_BACKEND), torch.set_grad_enabled(train):
        return kernels.uses_fast(layer, torch.empty(shape, requires_grad=train))


def _layer_table(
    sparse: nn.Module,
    ideal_layers: dict[str, float],
    batch: int,
    image_size: int,
    repeats: int,
    cases: list[str],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    for case in cases:
        b = 1 if case == "fwd1" else batch
        for name, layer, shape in sparse_layer_inputs(
            sparse.eval(), torch.zeros(b, 3, image_size, image_size)
        ):
            key = (case, shape, layer.out_channels, layer.stride, layer.padding)
            if key not in cache:
                t = _bench_layer(layer, shape, repeats, train=case == "train")
                dense = min(t["dense/nchw"], t["dense/cl"])
                fast = _runs_fast(layer, shape, train=case == "train")
                cache[key] = {
                    "dense_ms": dense * 1e3,
                    "masked_ms": t["masked"] * 1e3,
                    "psconv_ms": t["psconv"] * 1e3,
                    "speedup": dense / t["psconv"],
                    "speedup_vs_masked": t["masked"] / t["psconv"],
                    "kernel": "fast" if fast else "reference",
                    "packing": kernels.packing_of(layer) if fast else None,
                }
            rows.append(
                {
                    "case": case,
                    "layer": name,
                    "shape": f"{layer.in_channels}->{layer.out_channels} @{shape[2]}x{shape[3]} s{layer.stride[0]}",
                    "ideal": ideal_layers.get(name, float("nan")),
                    **cache[key],
                }
            )
    return rows


# ----------------------------------------------------------------------------- memory
_PROBE = """
import resource, sys, torch, torch.nn.functional as F
from psconv import kernels
from psconv.convert import densify
from psconv.models import create_model
name, pattern, variant, batch, size, threads, backend = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
if threads:
    torch.set_num_threads(threads)
model = create_model(name, pattern, num_classes=10, image_size=size)
if variant == 'dense':
    model = densify(model)
kernels.set_backend('reference' if variant in ('dense', 'masked') else backend)
opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

def status(key):
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith(key):
                return float(line.split()[1]) / 1024
    raise KeyError(key)

def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()

step()  # warm-up: plans, packed weights, optimizer state
try:
    # ru_maxrss survives exec (it would report the parent's size): use the mm's high-water
    # mark, reset just before the timed step. The base is the mark itself, not VmRSS read
    # after it: the mark only grows, so the step's growth cannot come out negative.
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')
    base = status('VmHWM')
    step()
    peak = status('VmHWM')
except (OSError, KeyError):
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak - base, peak)
"""


def _peak_memory(
    name: str, pattern: str, variant: str, batch: int, size: int, threads: int
) -> dict[str, float]:
    """Peak RSS growth (MiB) over one steady-state training step in a fresh process, and the peak."""
    cmd = [
        sys.executable,
        "-c",
        _PROBE,
        name,
        pattern,
        variant,
        str(batch),
        str(size),
        str(threads),
        _SPARSE_BACKEND,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    if out.returncode != 0:
        return {"step_mib": float("nan"), "peak_rss_mib": float("nan")}
    step, peak = (float(v) for v in out.stdout.split()[-2:])
    return {"step_mib": step, "peak_rss_mib": peak}


# ----------------------------------------------------------------------------- driver
def bench_model(
    name: str,
    patterns: list[str],
    batch: int = 128,
    image_size: int = 32,
    repeats: int = 5,
    cases: list[str] | None = None,
    layers: bool = True,
    memory: bool = True,
    threads: int = 0,
) -> dict[str, Any]:
    """Time one model over several patterns; the structure of ``psconv bench --json``."""
    cases = list(cases or CASES)
    torch.manual_seed(0)
    sparse: dict[str, nn.Module] = {}
    ideal: dict[str, tuple[float, dict[str, float]]] = {}
    dense: nn.Module | None = None
    for pat in patterns:
        s, d = _variants(name, pat, image_size)
        sparse[pat] = s
        ideal[pat] = _ideal(s, image_size)
        dense = dense or d
    if dense is None:  # no pattern: the dense model alone (e.g. MobileNetV2's training step)
        dense = _variants(name, "dense", image_size)[1]
    result: dict[str, Any] = {"model": name, "dense": {}, "patterns": {p: {} for p in patterns}}
    for case in cases:
        t = _time_case(case, dense, sparse, batch, image_size, repeats)
        d_best = min(t["dense/nchw"], t["dense/cl"])
        result["dense"][case] = {
            "ms": d_best * 1e3,
            "nchw_ms": t["dense/nchw"] * 1e3,
            "channels_last_ms": t["dense/cl"] * 1e3,
        }
        for pat in patterns:
            ours = min(t[f"{pat}/psconv/nchw"], t[f"{pat}/psconv/cl"])
            result["patterns"][pat][case] = {
                "ms": ours * 1e3,
                "nchw_ms": t[f"{pat}/psconv/nchw"] * 1e3,
                "channels_last_ms": t[f"{pat}/psconv/cl"] * 1e3,
                "masked_ms": t[f"{pat}/masked"] * 1e3,
                "speedup": d_best / ours,
                "speedup_vs_masked": t[f"{pat}/masked"] / ours,
                "masked_speedup": d_best / t[f"{pat}/masked"],
            }
    for pat in patterns:
        result["patterns"][pat]["ideal"] = ideal[pat][0]
        if layers:
            result["patterns"][pat]["layers"] = _layer_table(
                sparse[pat], ideal[pat][1], batch, image_size, repeats, cases
            )
    if memory and "train" in cases:
        result["dense"]["train_memory"] = _peak_memory(
            name, (patterns or ["dense"])[0], "dense", batch, image_size, threads
        )
        for pat in patterns:
            result["patterns"][pat]["train_memory"] = {
                "psconv": _peak_memory(name, pat, "psconv", batch, image_size, threads),
                "masked": _peak_memory(name, pat, "masked", batch, image_size, threads),
            }
    return result


_CASE_LABEL = {"fwd1": "forward b=1", "fwd": "forward b={b}", "train": "train step b={b}"}


def format_report(report: dict[str, Any]) -> str:
    b = report["settings"]["batch"]
    machine = report["machine"]
    cpu = f" on {machine['cpu']} ({machine.get('cpu_id', '?')})" if "cpu" in machine else ""
    lines = [
        f"psconv bench{cpu}: torch {machine['torch']}, {machine['threads']} threads, "
        f"kernels {machine['kernels']} (backend {machine.get('backend', 'auto')}), "
        f"oneDNN {machine.get('onednn', '?')}, allocator {machine.get('allocator', 'default')}; "
        f"median of {report['settings']['repeats']} interleaved rounds",
        "speedup = dense (best of NCHW / channels-last) time / psconv time; ideal = dense MACs / kept MACs",
    ]
    for res in report["models"]:
        lines.append("")
        lines.append(f"== {res['model']} ==")
        head = f"{'pattern':<10} {'ideal':>6}"
        cases = [c for c in CASES if c in res["dense"]]
        for c in cases:
            head += f" | {_CASE_LABEL[c].format(b=b):>22}"
        lines.append(head)
        row = f"{'dense':<10} {1.0:>6.2f}"
        for c in cases:
            row += f" | {res['dense'][c]['ms']:>10.2f} ms        "
        lines.append(row)
        for pat, r in res["patterns"].items():
            row = f"{pat:<10} {r['ideal']:>6.2f}"
            for c in cases:
                row += f" | {r[c]['ms']:>8.2f} ms {r[c]['speedup']:>5.2f}x"
                row += f" m{r[c]['speedup_vs_masked']:>4.1f}"
            lines.append(row)
        lines.append("  (mX.X = speedup over the masked-dense reference path)")
        mem = res["dense"].get("train_memory")
        if mem:
            lines.append(f"  train-step memory (MiB RSS growth): dense {mem['step_mib']:.0f}")
            for pat, r in res["patterns"].items():
                m = r.get("train_memory", {})
                if m:
                    lines.append(
                        f"    {pat:<10} psconv {m['psconv']['step_mib']:.0f}  masked {m['masked']['step_mib']:.0f}"
                    )
        for pat, r in res["patterns"].items():
            if not r.get("layers"):
                continue
            lines.append(f"  per layer, {pat}: speedup (ideal) [kernel; -pair: pair-broadcast packing]")
            by_layer: dict[str, dict[str, Any]] = {}
            for row_ in r["layers"]:
                by_layer.setdefault(row_["layer"], {"shape": row_["shape"], "ideal": row_["ideal"]})[
                    row_["case"]
                ] = row_
            for lname, info in by_layer.items():
                txt = f"    {lname:<22} {info['shape']:<22} ideal {info['ideal']:>5.2f}"
                for c in cases:
                    if c in info:
                        kind = info[c]["kernel"] + ("-pair" if info[c].get("packing") == "pair" else "")
                        txt += f" | {c} {info[c]['speedup']:>5.2f}x [{kind}]"
                lines.append(txt)
    return "\n".join(lines)


def run_bench(
    models: list[str],
    patterns: list[str],
    *,
    batch: int = 128,
    image_size: int = 32,
    repeats: int = 5,
    threads: int = 0,
    cases: list[str] | None = None,
    layers: bool = True,
    memory: bool = True,
    quick: bool = False,
    backend: str = "auto",
    on_model: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Time every model x pattern (see the module doc); ``on_model(partial report)`` after each model.
    ``backend``: of the psconv rows, 'auto' or 'fast'."""
    if backend not in ("auto", "fast"):
        raise ValueError(f"backend must be 'auto' or 'fast', got {backend!r}")
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    cases = cases or list(CASES)
    global _SAMPLE_SCALE, _SPARSE_BACKEND
    _SAMPLE_SCALE, _SPARSE_BACKEND = 1.0, backend
    if quick:
        batch, repeats, layers, memory = min(batch, 8), min(repeats, 2), False, False
        _SAMPLE_SCALE = 0.05
    info = kernels.kernel_info()
    allocator = tune_allocator()  # dense and sparse alike: they run in this one process
    report: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "kernels": info["isa"] if info["available"] else f"unavailable ({info['error']})",
            "onednn": kernels.onednn_isa(),
            "backend": backend,
            "cpu": cpu_name(),
            "cpu_id": cpu_id(),
            "allocator": allocator,
        },
        "settings": {"batch": batch, "repeats": repeats, "image_size": image_size, "cases": cases},
        "models": [],
    }
    for name in progress.iterate(models, "bench models"):
        result = bench_model(name, list(patterns), batch=batch, image_size=image_size, repeats=repeats,
                             cases=list(cases), layers=layers, memory=memory, threads=threads)  # fmt: skip
        report["models"].append(result)
        if on_model is not None:
            on_model(dict(report, models=[result]))
    return report
