"""Does ``psconv.sparsify`` convert other people's models correctly? A survey over torchvision
and timm, written to ``results/zoo/`` (``zoo.csv``, ``zoo.json``, ``zoo.md``).

torchvision and timm are not dependencies of psconv (torchvision does not import beside the
CPU build of PyTorch that ``make`` installs), so this runs in a separate environment that has
them, with psconv from this tree on the path::

    python3 -m venv /tmp/zoo && /tmp/zoo/bin/pip install torch torchvision timm numpy safetensors pyyaml
    PYTHONPATH=. /tmp/zoo/bin/python experiments/zoo_check.py            # every model
    PYTHONPATH=. /tmp/zoo/bin/python experiments/zoo_check.py --only resnet

For each model (random weights; BatchNorm given random scales and shifts and statistics
measured on a random batch, and zero-initialised gains random values, so that no branch is
silent, as timm's zero-initialised last norm of a block or NF-ResNet's skipinit would make it):

- ``sparsify(model, PATTERN)`` on a copy; the original with the same masks multiplied into the
  converted convs' weights is the reference: outputs must agree (eval mode), on the compiled
  kernels (``backend fast``) and on the reference path (scatter + ``F.conv2d``);
- which 3x3 convs stayed dense and why (``psconv.skipped_convs``);
- MACs counted by ``psconv.profile`` against the dense model's;
- ``optimize_for_inference`` of the sparse model, against the reference (or why it fails);
- ``densify`` of the sparse model, and ``psconv.save`` then ``psconv.load`` into a freshly built
  dense model (``model=``): both against the reference.

A model passes (``ok``) when the kernels, the reference path, ``densify`` and the checkpoint
round trip all agree with the reference within ``--tol``, and the inference form (which folds BatchNorm
and so rounds differently) within ``--tol-folded``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import psconv

ROOT = Path(__file__).resolve().parent.parent
PATTERN = "PSD2_P8"

# (source, name, input size): diverse on purpose: bottlenecks, grouped and depthwise convs,
# dense connections, padding-0 inception branches, weight-standardised and 'same'-padded convs.
MODELS = [
    ("torchvision", "resnet18", 64),
    ("torchvision", "resnet50", 64),
    ("torchvision", "resnext50_32x4d", 64),
    ("torchvision", "wide_resnet50_2", 64),
    ("torchvision", "vgg16_bn", 64),
    ("torchvision", "densenet121", 64),
    ("torchvision", "googlenet", 96),
    ("torchvision", "inception_v3", 128),
    ("torchvision", "squeezenet1_1", 96),
    ("torchvision", "mobilenet_v2", 64),
    ("torchvision", "mobilenet_v3_large", 64),
    ("torchvision", "efficientnet_b0", 64),
    ("torchvision", "regnet_y_400mf", 64),
    ("torchvision", "shufflenet_v2_x1_0", 64),
    ("torchvision", "convnext_tiny", 64),
    ("timm", "resnet50d", 64),
    ("timm", "resnetv2_50x1_bit", 64),
    ("timm", "nf_resnet26", 64),
    ("timm", "tf_efficientnetv2_b0", 64),
    ("timm", "repvgg_a0", 64),
    ("timm", "dla34", 64),
    ("timm", "cspdarknet53", 64),
    ("timm", "res2net50_14w_8s", 64),
    ("timm", "dpn68", 64),
    ("timm", "ese_vovnet19b_dw", 64),
    ("timm", "hrnet_w18_small", 64),
    ("timm", "regnetx_002", 64),
]

# Models whose dense training step PyTorch itself cannot run here: RepVGG's 1x1 branch on the
# RGB input (3 channels, stride 2, channels-last) hangs in oneDNN's AVX2 1x1 weight gradient
# (uxlfoundation/oneDNN#6035, open; torch 2.13 and 2.14 alike).
NO_TRAIN_STEP = {"repvgg_a0"}


def build(source: str, name: str) -> nn.Module:
    if source == "torchvision":
        import torchvision  # noqa: PLC0415

        kwargs: dict[str, Any] = {"weights": None}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        return torchvision.models.get_model(name, **kwargs)
    import timm  # noqa: PLC0415

    return timm.create_model(name, pretrained=False)


def calibrate(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """Random BatchNorm scales and shifts, statistics measured on a random batch, random values
    for gains initialised to zero (NF-ResNet's skipinit), eval mode: no branch is silent."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("bias") and p.numel() and not p.any():
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.momentum = None
                m.reset_running_stats()
        model.train()
        model(torch.randn(8, 3, size, size, generator=g))
    return model.eval()


def masked_reference(original: nn.Module, sparse: nn.Module) -> nn.Module:
    """The original model with each converted conv's weight multiplied by its layer's mask."""
    ref = copy.deepcopy(original)
    with torch.no_grad():
        for name, layer in sparse.named_modules():
            if isinstance(layer, psconv.PSConv2d):
                ref.get_submodule(name).weight.mul_(layer.mask.to(torch.float32))
    return ref


def round_trip(sparse: nn.Module, skeleton: nn.Module) -> nn.Module:
    """``psconv.save`` then ``psconv.load`` into a freshly built dense model of the same kind."""
    with tempfile.TemporaryDirectory() as tmp:
        psconv.save(sparse, Path(tmp) / "model.safetensors")
        return psconv.load(Path(tmp) / "model.safetensors", model=skeleton)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def attempt(fn: Callable[[], Any]) -> tuple[Any, str]:
    try:
        return fn(), ""
    except Exception as exc:  # a survey: record what failed and go on
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def check(source: str, name: str, size: int, tol: float, tol_folded: float, timed: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    original = calibrate(build(source, name), size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparse = psconv.sparsify(copy.deepcopy(original), PATTERN).eval()
    row: dict[str, Any] = {"source": source, "model": name, "input": size}
    row["converted"] = sum(isinstance(m, psconv.PSConv2d) for m in sparse.modules())
    # 3x3 convs left dense, by reason (grouped convs are many in some models).
    left: dict[str, int] = {}
    for why in psconv.skipped_convs(original).values():
        if not why.startswith("kernel "):
            left[why.split(" (")[0]] = left.get(why.split(" (")[0], 0) + 1
    row["left_dense_3x3"] = left
    row["warnings"] = [str(w.message)[:300] for w in caught]
    with torch.no_grad():
        want = masked_reference(original, sparse)(x)
        for backend in ("fast", "reference"):
            with psconv.kernels.using_backend(backend):
                got, err = attempt(lambda: sparse(x))
            row[f"err_{backend}"] = rel_err(got, want) if got is not None else err
        counts = psconv.profile(sparse, (1, 3, size, size), file_size=False)
        row["macs_g"], row["dense_macs_g"] = counts["macs"] / 1e9, counts["dense_macs"] / 1e9
        fast, err = attempt(lambda: psconv.optimize_for_inference(sparse))
        row["err_inference_form"] = rel_err(fast(x), want) if fast is not None else err
        row["err_densify"] = rel_err(psconv.densify(sparse)(x), want)
        row["err_checkpoint"] = rel_err(round_trip(sparse, build(source, name))(x), want)
    errs = [row[k] for k in ("err_fast", "err_reference", "err_densify", "err_checkpoint")]
    if timed and row["converted"]:
        with torch.no_grad():
            row["speed"] = speed(original, sparse, size, (1, 16))
        if name not in NO_TRAIN_STEP:
            row["speed"]["train_b16"] = train_speed(original, sparse, size)
    folded = row["err_inference_form"]
    row["ok"] = (
        all(isinstance(e, float) and e <= tol for e in errs)
        and isinstance(folded, float)
        and folded <= tol_folded
    )
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def speed(original: nn.Module, sparse: nn.Module, size: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """The inference form of the sparse model against that of the dense original (BatchNorm
    folded in both), backend ``auto``, interleaved in this process, median of 7 rounds: dense
    ms over sparse ms per batch size, and how many sparse layers ``auto`` put on the kernels."""
    from psconv.layers import sparse_layer_inputs  # noqa: PLC0415
    from psconv.timing import calls_per_sample, interleaved  # noqa: PLC0415

    fast, dense = psconv.optimize_for_inference(sparse), psconv.optimize_for_inference(original)
    out: dict[str, Any] = {}
    for b in batches:
        x = torch.randn(b, 3, size, size).contiguous(memory_format=torch.channels_last)
        fns = {"sparse": lambda x=x: fast(x), "dense": lambda x=x: dense(x)}
        with torch.no_grad():
            t = interleaved(fns, 7, {k: calls_per_sample(f, 0.2) for k, f in fns.items()})
            layers = sparse_layer_inputs(fast, x)
            on = sum(psconv.kernels.uses_fast(m, torch.empty(shape)) for _, m, shape in layers)
        out[f"b{b}"] = {"sparse_ms": t["sparse"] * 1e3, "dense_ms": t["dense"] * 1e3, "kernel_layers": on}
    return out


def train_speed(original: nn.Module, sparse: nn.Module, size: int, batch: int = 16) -> dict[str, float]:
    """One training step (forward, a loss, backward) of the sparse model against its dense
    original, both in train mode, backend ``auto``, interleaved, median of 7 rounds."""
    from psconv.timing import calls_per_sample, interleaved  # noqa: PLC0415

    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    models = {"sparse": copy.deepcopy(sparse).train(), "dense": copy.deepcopy(original).train()}

    def step(model: nn.Module) -> None:
        model(x).square().mean().backward()
        model.zero_grad(set_to_none=True)

    fns = {k: (lambda m=m: step(m)) for k, m in models.items()}
    t = interleaved(fns, 7, {k: calls_per_sample(f, 0.3) for k, f in fns.items()})
    return {"sparse_ms": t["sparse"] * 1e3, "dense_ms": t["dense"] * 1e3}


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "python": platform.python_version(), "pattern": PATTERN}
    for mod in ("torchvision", "timm"):
        env[mod] = getattr(sys.modules.get(mod), "__version__", None)
    env["kernels"] = psconv.kernels.kernel_info()["isa"]
    (out / "zoo.json").write_text(json.dumps({"environment": env, "models": rows}, indent=1) + "\n")
    cols = ["source", "model", "input", "converted", "macs_g", "dense_macs_g", "err_fast", "err_reference"]
    cols += ["err_inference_form", "err_densify", "err_checkpoint", "ok"]
    with open(out / "zoo.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    passed = sum(r["ok"] for r in rows)
    lines = [f"# sparsify({PATTERN}) on torchvision {env['torchvision']} and timm {env['timm']}", ""]
    lines += [
        f"{passed} of {len(rows)} models pass. Command: `PYTHONPATH=. python experiments/zoo_check.py --speed`"
    ]
    lines += [f"(torch {env['torch']}, kernels {env['kernels']}); `zoo.json` holds every figure.", ""]
    lines += ["| model | convs made sparse | MACs (G) sparse / dense | max rel. error: kernels, reference path, checkpoint, inference form | 3x3 convs left dense | ok |"]  # fmt: skip
    lines += ["|---|---|---|---|---|---|"]
    for r in rows:
        errs = ", ".join(
            _cell(r[k]) for k in ("err_fast", "err_reference", "err_checkpoint", "err_inference_form")
        )
        left = "; ".join(f"{why}: {n}" for why, n in r["left_dense_3x3"].items())
        lines.append(
            f"| {r['source']} `{r['model']}` ({r['input']}px) | {r['converted']} | "
            f"{r['macs_g']:.3f} / {r['dense_macs_g']:.3f} | {errs} | {left} | {'yes' if r['ok'] else 'NO'} |"
        )
    timed = [r for r in rows if "speed" in r]
    if timed:
        lines += [
            "",
            "Inference form, sparse against dense (BatchNorm folded in both), backend `auto`, 2 threads,",
        ]
        lines += [
            "interleaved, median of 7 rounds (`--speed`); a shared machine's timings carry about 10% noise.",
            "",
        ]
        lines += ["| model | ideal (MAC ratio) | batch 1: dense / sparse ms | speedup | batch 16: dense / sparse ms | speedup | training step, batch 16: dense / sparse ms | speedup | layers on the kernels (b1, b16) |"]  # fmt: skip
        lines += ["|---|---|---|---|---|---|---|---|---|"]
        for r in timed:
            cells = [f"{r['dense_macs_g'] / r['macs_g']:.2f}x"]
            for b in ("b1", "b16", "train_b16"):
                t = r["speed"].get(b)
                if t is None:
                    cells += ["not run (oneDNN hangs)", ""]
                    continue
                cells += [
                    f"{t['dense_ms']:.2f} / {t['sparse_ms']:.2f}",
                    f"{t['dense_ms'] / t['sparse_ms']:.2f}x",
                ]
            on = ", ".join(str(r["speed"][b]["kernel_layers"]) for b in ("b1", "b16"))
            lines.append(
                f"| {r['source']} `{r['model']}` | " + " | ".join(cells) + f" | {on} of {r['converted']} |"
            )
    (out / "zoo.md").write_text("\n".join(lines) + "\n")


def _cell(v: Any) -> str:
    return f"{v:.1e}" if isinstance(v, float) else f"fails ({v})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="models whose name contains this")
    ap.add_argument("--out", default=str(ROOT / "results" / "zoo"))
    ap.add_argument("--tol", type=float, default=1e-5, help="largest relative output error accepted")
    ap.add_argument(
        "--speed",
        action="store_true",
        help="also time sparse against dense inference (noisy on a shared machine)",
    )
    ap.add_argument("--tol-folded", type=float, default=1e-3, help="the same for the inference form")
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for source, name, size in MODELS:
        if a.only in name:
            row = check(source, name, size, a.tol, a.tol_folded, a.speed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if not a.only:
        write(rows, Path(a.out))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
