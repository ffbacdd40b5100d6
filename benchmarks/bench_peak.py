"""How close a sparse layer runs to what this machine's cores can do: MACs per second of our
kernel beside float32 GEMM (MKL via torch.mm) and oneDNN's dense convolution of the same layer.

.venv/bin/python benchmarks/bench_peak.py --pattern PSD4_P8 --channels 64 --size 32 --batch 1 32

"kept" counts the pattern's non-zero weights at each output pixel (the MACs the method needs);
"executed" counts every lane of every packed FMA the kernel issues (padding lanes of the
diagonal packing included); taps that fall on the zero padding count in neither, nor in dense.
Executed MACs/s near the GEMM's rate means the kernel is bound by arithmetic, not by its
overhead. All candidates run interleaved, median of the rounds (psconv.timing).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from psconv import tune_allocator
from psconv.kernels import layer_plans, set_backend, uses_fast
from psconv.kernels.plans import G_F, geometry
from psconv.layers import PSConv2d
from psconv.timing import calls_per_sample, interleaved


def tap_pixels(layer: PSConv2d, size: int) -> list[int]:
    """Output pixels of one image at which each of the 9 taps falls inside the input."""
    geo, _, _ = geometry(0, size, size, tuple(layer.stride), tuple(layer.padding))
    return [sum(npos for tapmask, npos, *_ in geo.classes.tolist() if (tapmask >> t) & 1) for t in range(9)]


def mac_counts(layer: PSConv2d, batch: int, size: int) -> tuple[int, int, int]:
    """(dense, kept, executed) MACs of one forward, padding taps left out of all three:
    dense counts every weight, kept the pattern's non-zeros, executed every lane of every
    packed FMA the kernel issues (entries of the segments whose tap is inside, x the group's
    blocks x 16 lanes), from the layer's plan and pixel classes."""
    pix = tap_pixels(layer, size)
    mask = layer.mask.reshape(layer.out_channels, layer.in_channels, 9)
    dense = sum(layer.out_channels * layer.in_channels * p for p in pix)
    kept = sum(int(mask[:, :, t].sum()) * pix[t] for t in range(9))
    plan = layer_plans(layer).fwd
    segs = plan.segs.tolist()
    executed = 0
    for g in plan.groups.tolist():
        for tap, _, count, _, _ in segs[g[5] : g[6]]:
            executed += count * g[G_F] * 16 * pix[tap]
    return dense * batch, kept * batch, executed * batch


def time_batch(layer: PSConv2d, batch: int, size: int, gemm: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of the GEMM, oneDNN's dense conv and our sparse conv."""
    c = layer.in_channels
    x = torch.randn(batch, c, size, size).contiguous(memory_format=torch.channels_last)
    if not uses_fast(layer, x):
        raise SystemExit("the compiled kernels cannot run here (not built, or not a CPU they support)")
    dense_w = layer.dense_weight().detach().contiguous(memory_format=torch.channels_last)
    a, b = torch.randn(gemm, gemm), torch.randn(gemm, gemm)
    fns = {
        "gemm": lambda: torch.mm(a, b),
        "dense conv": lambda: F.conv2d(x, dense_w, padding=1),
        "sparse conv": lambda: layer(x),
    }
    calls = {k: calls_per_sample(fn, 0.05) for k, fn in fns.items()}
    return interleaved(fns, rounds, calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="PSD4_P8")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--gemm", type=int, default=1024, help="n of the n x n x n GEMM")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    set_backend("fast")  # the kernel is what is measured, whatever 'auto' would pick
    c, s, n = args.channels, args.size, args.gemm
    layer = PSConv2d(c, c, 3, padding=1, pattern=args.pattern, bias=False).eval()
    print(
        f"{args.pattern} {c}->{c} @{s}x{s}, {args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    with torch.inference_mode():
        for batch in args.batch:
            t = time_batch(layer, batch, s, n, args.rounds)
            dense_macs, kept, executed = mac_counts(layer, batch, s)
            print(f"  batch {batch}:")
            print(f"    GEMM {n}^3           {n**3 / t['gemm'] / 1e9:7.1f} GMAC/s")
            print(
                f"    dense conv (oneDNN)  {dense_macs / t['dense conv'] / 1e9:7.1f} GMAC/s"
                f"  {t['dense conv'] * 1e6:9.1f} us"
            )
            print(
                f"    sparse conv          {kept / t['sparse conv'] / 1e9:7.1f} GMAC/s kept, "
                f"{executed / t['sparse conv'] / 1e9:.1f} executed  {t['sparse conv'] * 1e6:9.1f} us"
                f"  ({t['dense conv'] / t['sparse conv']:.2f}x dense)"
            )


if __name__ == "__main__":
    main()
