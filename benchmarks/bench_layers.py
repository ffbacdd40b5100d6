"""Per-layer forward timing of the compiled kernels against dense oneDNN (interleaved, median).

.venv/bin/python benchmarks/bench_layers.py --batch 128 --patterns PS4_P4 PS1_P9
.venv/bin/python benchmarks/bench_layers.py --patterns PS1_P9 --packings diagonal pair

With several --packings, each packing is timed in its own round of interleaved runs, with
dense timed again in that round (a packing applies to the plans built after it is set).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from psconv import kernels, tune_allocator
from psconv.layers import PSConv2d

LAYERS = [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4), (512, 512, 2)]


def _time(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--patterns", nargs="+", default=["PS4_P4", "PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9"])
    ap.add_argument("--train", action="store_true", help="time forward+backward")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--packings", nargs="+", default=["auto"], choices=kernels.PACKINGS)
    args = ap.parse_args()
    tune_allocator()  # as `psconv bench` does: freed outputs stay mapped (no page faults)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    for ci, co, hw in LAYERS:
        for packing in args.packings:
            kernels.set_packing(packing)
            bench_layer(ci, co, hw, args, label="" if len(args.packings) == 1 else f"[{packing}] ")
    kernels.set_packing("auto")


def bench_layer(ci: int, co: int, hw: int, args: argparse.Namespace, label: str = "") -> None:
    if True:
        B = args.batch
        x = torch.randn(B, ci, hw, hw)
        xcl = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(co, ci, 3, 3) * 0.05
        layers = {p: PSConv2d(ci, co, pattern=p) for p in args.patterns}
        reps = max(1, int(2e8 / (B * hw * hw * ci * co * 9)))
        if args.train:
            x.requires_grad_(True)
            xcl = xcl.detach().requires_grad_(True)
            w.requires_grad_(True)

            def run_dense(inp):
                y = F.conv2d(inp, w, None, 1, 1)
                y.backward(torch.ones_like(y))

            def run_fast(layer):
                y = layer(xcl)
                y.backward(torch.ones_like(y))
        else:

            def run_dense(inp):
                with torch.no_grad():
                    F.conv2d(inp, w, None, 1, 1)

            def run_fast(layer):
                with torch.no_grad():
                    layer(xcl)

        fns = {"dense_nchw": lambda: run_dense(x), "dense_cl": lambda: run_dense(xcl)}
        for p, layer in layers.items():
            fns[p] = lambda layer=layer: run_fast(layer)
        kernels.set_backend("fast")
        for f in fns.values():
            f()
        res: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, f in fns.items():
                res[k].append(_time(f, reps))
        med = {k: statistics.median(v) for k, v in res.items()}
        dense = min(med["dense_nchw"], med["dense_cl"])
        gmac = B * hw * hw * ci * co * 9 / 1e9
        line = f"{label}{ci}->{co} @{hw} B={B}: dense {dense * 1e3:.2f} ms ({gmac / dense:.0f} GMAC/s; nchw {med['dense_nchw'] * 1e3:.2f} cl {med['dense_cl'] * 1e3:.2f})"
        for p, layer in layers.items():
            ideal = layer.mask.numel() / layer.mask.sum().item()
            line += f" | {p} {dense / med[p]:.2f}x/{ideal:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
