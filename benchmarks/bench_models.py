"""End-to-end and per-layer benchmark of VGG16 / ResNet18 (CIFAR shapes): psconv vs dense vs masked.

The same as ``psconv bench`` (see psconv/bench.py for what is timed and how). Examples:

    .venv/bin/python benchmarks/bench_models.py --json --output runs/bench.json
    .venv/bin/python benchmarks/bench_models.py --quick --models vgg16 --patterns PS4_P4
"""

from __future__ import annotations

import sys

from psconv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
