"""Why the deploy bench pauses before each sample: ONNX Runtime's threads spin after a call.

.venv/bin/python benchmarks/bench_settle.py --model resnet18 --pattern PSD4_P8 --batch 1

Times our inference form in blocks of calls, each round three ways: right after a block of ORT
calls, 50 ms after one (what ``psconv bench --deploy`` does), and after a block of our own calls;
median over the rounds. On a machine with few cores, the first is slower by whatever ORT's
spinning threads take away.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from psconv import tune_allocator
from psconv.bench_deploy import _candidates, _on


def _block(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pattern", default="PSD4_P8")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    fns = _candidates(args.model, args.pattern, 32, args.threads)
    if "ort_dense" not in fns:
        raise SystemExit("onnxruntime is not installed")
    x = torch.randn(args.batch, 3, 32, 32)
    ours, ort = _on(fns["ours"], x), _on(fns["ort_dense"], x)
    samples: dict[str, list[float]] = {"after ORT": [], "50 ms after ORT": [], "after ours": []}
    for _ in range(args.rounds):
        _block(ort, 5)
        samples["after ORT"].append(_block(ours, args.calls))
        _block(ort, 5)
        time.sleep(0.05)
        ours()
        samples["50 ms after ORT"].append(_block(ours, args.calls))
        _block(ours, 5)
        samples["after ours"].append(_block(ours, args.calls))
    print(f"{args.model} {args.pattern}, batch {args.batch}, {args.threads} threads, ours in ms per call:")
    for name, values in samples.items():
        print(f"  {name:<16} median {statistics.median(values):7.3f}  min {min(values):7.3f}")


if __name__ == "__main__":
    main()
