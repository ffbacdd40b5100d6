"""The exported program (``psconv export --format pt2``) against the eager inference form.

.venv/bin/python benchmarks/bench_pt2.py --models resnet18:PSD4_P8 vgg16:PSD1_P16 --batches 1 32

For each model: a checkpoint of its (untrained) weights, exported as ``export`` does (free
batch), reloaded with ``torch.export.load``; both run under ``torch.no_grad``, interleaved in
one process, median of rounds. The program calls the kernels through PyTorch's operator
dispatch, the eager form directly, which shows at batch 1; ``psconv.load_program`` loads the same
file with the sparse layers calling the kernels directly.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import psconv
from psconv import export, predict, timing, tune_allocator


def _no_grad_call(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            module(x)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18:PSD4_P8", "vgg16:PSD1_P16"], metavar="M:P")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    warnings.simplefilter("ignore")  # torch.export's notes on the saved archive
    folder = Path(tempfile.mkdtemp(prefix="bench-pt2-"))
    for spec in args.models:
        name, _, pattern = spec.partition(":")
        torch.manual_seed(0)
        model = psconv.create_model(name, pattern or "dense").eval()
        deploy = predict.load_for_inference(
            psconv.save(model, folder / f"{name}.safetensors", dataset="cifar10")
        )
        result = export.export_model(deploy, "pt2", folder / f"{name}.pt2", force=True)
        program = torch.export.load(folder / f"{name}.pt2").module()
        direct = psconv.load_program(folder / f"{name}.pt2")
        eager = psconv.optimize_for_inference(deploy.model)
        for batch in args.batches:
            x = torch.randn(batch, 3, deploy.image_size, deploy.image_size)

            fns = {
                k: _no_grad_call(m, x)
                for k, m in (("eager", eager), ("program", program), ("load_program", direct))
            }
            for fn in fns.values():
                for _ in range(3):
                    fn()
            calls = {k: timing.calls_per_sample(fn, 0.3) for k, fn in fns.items()}
            ms = {k: v * 1e3 for k, v in timing.interleaved(fns, args.rounds, calls).items()}
            print(
                f"{name} {pattern} b={batch}: kernel layers {result['kernel_layers']}/"
                f"{len(result['sparse_layers'])}, eager {ms['eager']:.2f} ms, program {ms['program']:.2f} ms"
                f" ({ms['program'] / ms['eager']:.2f}x eager), psconv.load_program {ms['load_program']:.2f} ms"
                f" ({ms['load_program'] / ms['eager']:.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
