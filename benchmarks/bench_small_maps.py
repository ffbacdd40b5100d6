"""The small-map forward (csrc/kernel_small.inc) against the class-by-class tiles, layer by layer.

.venv/bin/python benchmarks/bench_small_maps.py                  # VGG16/ResNet18's small layers, batch 1
.venv/bin/python benchmarks/bench_small_maps.py --patterns PSD4_P8 --batch 4 --json out.json

``PSCONV_SMALL_MAPS`` is read once per process, so each setting runs in child processes of its
own, one pattern a child, the two settings back to back (on, off; then off, on; ...); a
layer's figure is the median over the rounds. (In one process, layers timed after small-map
calls ran up to 7% slower than after none, on paths that never take it.) The layers are
inference-form convs (bias, ReLU fused, no gradient) on the compiled kernels.
off/on above 1: the small-map path is faster. Calls of more than 64 output pixels, from fewer
than 128 channels, or with pair-packed plans (PS1_P9's by default) take the class-by-class
tiles either way: their rows show the noise between processes (on a Zen 3, 2 threads, 5
rounds: 0.92-1.16x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# in channels, out channels, input size, stride: VGG16's and ResNet18's layers at or below
# 8x8 on CIFAR-sized images.
LAYERS = [
    "128,256,8,1",
    "256,256,8,1",
    "256,512,4,1",
    "512,512,4,1",
    "512,512,2,1",
    "128,256,16,2",
    "256,512,8,2",
]
PATTERNS = ["PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9", "PS4_P4"]


def parse_layer(spec: str) -> tuple[int, int, int, int]:
    """``"cin,cout,size,stride"`` as four positive integers."""
    parts = spec.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--layers: {spec!r} is not cin,cout,size,stride (four positive integers)")
    ci, co, size, stride = (int(p) for p in parts)
    return ci, co, size, stride


def time_layers(patterns: list[str], layers: list[str], batch: int, threads: int, reps: int) -> list[float]:
    """us per call of each (pattern, layer), in that order, in this process's setting."""
    import torch

    from psconv import kernels, tune_allocator
    from psconv.inference import FusedPSConv2d
    from psconv.layers import PSConv2d

    torch.set_num_threads(threads)
    tune_allocator()
    kernels.set_backend("fast")
    torch.manual_seed(0)
    calls = []
    for pattern in patterns:
        for spec in layers:
            ci, co, size, stride = parse_layer(spec)
            layer = FusedPSConv2d.from_layer(PSConv2d(ci, co, 3, stride, 1, pattern=pattern, bias=True))
            layer.relu = True
            calls.append(
                (layer, torch.randn(batch, ci, size, size).contiguous(memory_format=torch.channels_last))
            )
    out = []
    with torch.no_grad():
        # Every layer once round before any is timed: the first timed in a fresh process
        # otherwise pays for the threads' and the clock's warm-up (up to 1.3x on a Zen 3).
        for layer, x in calls:
            for _ in range(reps):
                layer(x)
        for layer, x in calls:
            samples = []
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(reps):
                    layer(x)
                samples.append((time.perf_counter() - t) / reps * 1e6)
            out.append(statistics.median(samples))
    return out


def _child(setting: str, pattern: str, args: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--threads", str(args.threads)]
    cmd += ["--reps", str(args.reps), "--patterns", pattern, "--layers", *args.layers]
    env = dict(os.environ, PSCONV_SMALL_MAPS=setting)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", nargs="+", default=PATTERNS)
    ap.add_argument("--layers", nargs="+", default=LAYERS, help="cin,cout,size,stride")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="child processes per pattern and setting")
    ap.add_argument("--reps", type=int, default=100, help="calls per timing sample")
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for spec in args.layers:
        parse_layer(spec)  # a bad spec is refused before any child starts
    if args.child:
        print(json.dumps(time_layers(args.patterns, args.layers, args.batch, args.threads, args.reps)))
        return 0
    # Pattern by pattern, the two settings back to back, which one first alternating by round:
    # this machine's speed drifts over seconds.
    runs: dict[str, list[list[float]]] = {
        "on": [[] for _ in range(args.rounds)],
        "off": [[] for _ in range(args.rounds)],
    }
    for r in range(args.rounds):
        for pattern in args.patterns:
            for setting in ("on", "off") if r % 2 == 0 else ("off", "on"):
                runs[setting][r] += _child(setting, pattern, args)
    rows = []
    keys = [(p, spec) for p in args.patterns for spec in args.layers]
    print(
        f"batch {args.batch}, {args.threads} threads, median of {args.rounds} alternating runs (us per call)"
    )
    print(f"{'pattern':9} {'layer (cin,cout,size,stride)':28} {'on':>8} {'off':>8} {'off/on':>7}")
    for i, (pattern, spec) in enumerate(keys):
        on = statistics.median(r[i] for r in runs["on"])
        off = statistics.median(r[i] for r in runs["off"])
        rows.append({"pattern": pattern, "layer": spec, "batch": args.batch, "on_us": on, "off_us": off})
        print(f"{pattern:9} {spec:28} {on:8.1f} {off:8.1f} {off / on:6.2f}x")
    if args.json:
        from psconv.fileio import atomic_write

        atomic_write(
            args.json, json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
