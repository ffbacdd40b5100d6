"""Batch-1 inference: the sparse convs of a model timed in sequence against each one alone.

.venv/bin/python benchmarks/bench_batch1_layers.py --model resnet18 --pattern PSD4_P8

Records every sparse conv call of one forward of the inference form (its module and inputs),
then times (a) the calls in model order, as a forward runs them, so each layer's packed weights
have been evicted by the others', and (b) each call repeated alone, its weights in cache; the
gap is the cost of streaming the weights once per image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from psconv import tune_allocator
from psconv.bench_deploy import _trained_like
from psconv.inference import FusedPSConv2d, optimize_for_inference
from psconv.kernels import layer_plans
from psconv.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pattern", default="PSD4_P8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    model = optimize_for_inference(_trained_like(create_model(args.model, args.pattern, num_classes=10)))
    calls: list[tuple[torch.nn.Module, tuple]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp)))
        for m in model.modules()
        if isinstance(m, FusedPSConv2d)
    ]
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
        for h in hooks:
            h.remove()

        def in_order() -> None:
            for mod, inp in calls:
                mod(*inp)

        def each_alone() -> float:
            total = 0.0
            for mod, inp in calls:
                for _ in range(3):
                    mod(*inp)
                t = time.perf_counter()
                for _ in range(20):
                    mod(*inp)
                total += (time.perf_counter() - t) / 20
            return total * 1e3

        for _ in range(10):
            in_order()
        seq = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(20):
                in_order()
            seq.append((time.perf_counter() - t) / 20 * 1e3)
        alone = [each_alone() for _ in range(5)]
    packed_mb = sum(layer_plans(mod).fwd.total * 4 for mod, _ in calls) / 1e6
    print(f"{args.model} {args.pattern}, batch 1, {args.threads} threads: {len(calls)} sparse convs, "
          f"{packed_mb:.1f} MB of packed weights")  # fmt: skip
    print(
        f"  in model order: {statistics.median(seq):.3f} ms   each alone: {statistics.median(alone):.3f} ms"
    )


if __name__ == "__main__":
    main()
