"""torch.compile against eager for a sparse model, on the default 'auto' backend.

.venv/bin/python benchmarks/bench_compile.py --model resnet18 --pattern PSD1_P16 --batch 64

Times a training step (SGD, cross-entropy) at ``--batch`` and an eval forward at batch 1, eager
and compiled, interleaved in one process, median of rounds. Two copies of the model start from
the same weights; compilation and warm-up happen before any timing.
"""

from __future__ import annotations

import argparse
import copy

import torch

from psconv import timing, tune_allocator
from psconv.bench import _forward_fn, _train_fn
from psconv.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pattern", default="PSD1_P16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    torch.manual_seed(0)
    eager = create_model(args.model, args.pattern, num_classes=10)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    x1 = torch.randn(1, 3, 32, 32)
    cases = {
        f"train step b={args.batch}": {
            "eager": _train_fn(eager, x, y, "auto"),
            "compiled": _train_fn(compiled, x, y, "auto"),
        },
        "eval forward b=1": {
            "eager": _forward_fn(eager, x1, "auto"),
            "compiled": _forward_fn(compiled, x1, "auto"),
        },
    }
    for name, fns in cases.items():
        for m in (eager, twin):
            m.train(name.startswith("train"))
        for fn in fns.values():
            for _ in range(3):
                fn()  # compiles (first call of each mode) and warms up
        calls = {k: timing.calls_per_sample(fn, 0.3) for k, fn in fns.items()}
        ms = {k: v * 1e3 for k, v in timing.interleaved(fns, args.rounds, calls).items()}
        print(
            f"{args.model} {args.pattern} {name}: eager {ms['eager']:.2f} ms, compiled {ms['compiled']:.2f} ms"
            f" ({ms['eager'] / ms['compiled']:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
