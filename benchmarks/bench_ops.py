"""Each operator of a sparse layer's training step against oneDNN's dense counterpart: the
forward, the gradient w.r.t. the input and the gradient w.r.t. the weights, channels-last,
interleaved, median of the rounds. Says which of the three holds a model's training step back.

.venv/bin/python benchmarks/bench_ops.py --pattern PSD4_P8 --batch 32 128
PSCONV_KERNEL_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_ops.py

Each pair computes the same tensor (``tests/test_bench_ops.py`` checks it), so a ratio compares
two ways to one result: oneDNN's time over ours.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from psconv import kernels
from psconv.kernels import ops
from psconv.layers import PSConv2d
from psconv.timing import calls_per_sample, interleaved

# ResNet18's sparse stages on CIFAR: (channels, size); VGG16's layers have the same shapes.
SHAPES = [(64, 32), (128, 16), (256, 8), (512, 4)]
OPS = ("fwd", "grad_input", "grad_weight")
_CL = torch.channels_last


def op_pairs(layer: PSConv2d, batch: int, size: int) -> dict[str, Callable[[], torch.Tensor]]:
    """For each operator, ours (key 'psconv <op>') and oneDNN's ('dense <op>'); the weight
    gradients of the dense op are taken at the layer's kept positions, as ours are."""
    c_out, (pattern, seed) = layer.out_channels, (layer.pattern.name, layer.seed)
    x = torch.randn(batch, layer.in_channels, size, size).contiguous(memory_format=_CL)
    g = torch.randn(batch, c_out, size, size).contiguous(memory_format=_CL)
    v = layer.weight_values.detach()
    w = layer.dense_weight().detach().contiguous(memory_format=_CL)
    geom = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, transposed, ...

    def dense_backward(mask: list[bool]) -> tuple[torch.Tensor, ...]:
        return torch.ops.aten.convolution_backward(g, x, w, None, *geom, mask)

    return {
        "psconv fwd": lambda: ops.conv_impl(x, v, None, pattern, seed, c_out, [1, 1], [1, 1], False, True),
        "dense fwd": lambda: torch.ops.aten.convolution(x, w, None, *geom),
        "psconv grad_input": lambda: ops.conv_grad_input(g, v, pattern, seed, layer.in_channels, [size, size], [1, 1], [1, 1]),
        "dense grad_input": lambda: dense_backward([True, False, False])[0],
        "psconv grad_weight": lambda: ops.conv_grad_weight(x, g, pattern, seed, layer.nnz, [1, 1], [1, 1]),
        "dense grad_weight": lambda: dense_backward([False, True, False])[1].reshape(-1)[layer.flat_index],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="PSD4_P8")
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="operators to time")
    ap.add_argument(
        "--channels",
        type=int,
        nargs="+",
        choices=[c for c, _ in SHAPES],
        help="layers to time (default: all)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"kernels {kernels.kernel_info()['isa']}, oneDNN {kernels.onednn_isa()}, {a.pattern}")
    print("layer, batch      " + "".join(f"{op:>28s}" for op in a.ops) + "   (oneDNN ms / psconv ms)")
    for channels, size in SHAPES:
        if a.channels and channels not in a.channels:
            continue
        for batch in a.batch:
            pairs = op_pairs(PSConv2d(channels, channels, pattern=a.pattern), batch, size)
            fns = {k: f for k, f in pairs.items() if k.split()[1] in a.ops}
            t = interleaved(fns, a.rounds, {k: calls_per_sample(f, 0.1) for k, f in fns.items()})
            cells = [f"{t[f'dense {op}'] * 1e3:.1f}/{t[f'psconv {op}'] * 1e3:.1f} = {t[f'dense {op}'] / t[f'psconv {op}']:.2f}x" for op in a.ops]  # fmt: skip
            row = f"{channels:>3d}@{size}x{size}, b{batch}"
            print(row.ljust(18) + "".join(f"{c:>28s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
