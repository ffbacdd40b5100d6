"""The demo behind ``make run``: dense against sparse, a few minutes on a laptop-class CPU.

It trains one network twice from the same seed, with dense kernels and with a pre-defined
sparse pattern (default VGG16 and PSD1_P16), on a real CIFAR-10 subset, and puts parameters,
MACs, checkpoint size, accuracy and training time side by side: printed, and written to
``runs/demo/results.csv`` and ``results.json`` next to the two run folders.

Its settings are a :class:`TrainConfig` (:data:`DEMO`: the defaults below over the dataclass's).
The data is ``data_dir``, else ``$PSCONV_DATA``, else the official archive, downloaded and
checked. A short run on a subset says how the two compare early in training, not what the
paper's 150-epoch schedule reaches: for that run ``psconv train`` with its defaults.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .fileio import atomic_write
from .train import train
from .train_config import TrainConfig

__all__ = ["DEMO", "run_demo", "format_table"]

DEMO = TrainConfig(
    model="vgg16",
    pattern="PSD1_P16",
    dataset="cifar10",
    epochs=2,
    batch_size=64,
    lr=0.05,
    schedule="onecycle",
    train_subset=2560,
    test_subset=2000,
    out="runs/demo",
)


def run_demo(config: TrainConfig = DEMO) -> list[dict[str, Any]]:
    """Train ``config.model`` dense and with ``config.pattern``; one row of results each."""
    download = not (config.data_dir or os.environ.get("PSCONV_DATA"))
    # One evaluation, at the end: the budget goes to training.
    base = replace(config, dataset="cifar10", download=download, eval_every=config.epochs)
    out = Path(config.out or "runs/demo")
    patterns = ["dense", config.pattern] if config.pattern != "dense" else ["dense"]
    print(
        f"psconv demo: {config.model} dense vs {config.pattern} on CIFAR-10 "
        f"({config.train_subset} train / {config.test_subset} test images, {config.epochs} epochs, "
        f"{config.schedule} lr {config.lr}, batch {config.batch_size}); "
        f"data: {config.data_dir or os.environ.get('PSCONV_DATA') or 'download'}",
        flush=True,
    )
    rows = []
    source = ""
    for pattern in patterns:
        run_config = replace(base, pattern=pattern, out=str(out / f"{config.model}-{pattern}"))
        run_config.validate()
        # The demo owns these folders: a rerun starts them afresh.
        shutil.rmtree(run_config.out, ignore_errors=True)
        start = time.perf_counter()
        s = train(run_config).summary
        source = s.get("data_source", "")
        rows.append(
            {
                "model": config.model,
                "pattern": pattern,
                "params": s["params"],
                "macs": s["macs"],
                "checkpoint_bytes": s["checkpoint_bytes"],
                "best_top1": s["best_top1"],
                "final_top1": s["final_top1"],
                "final_top5": s["final_top5"],
                "train_seconds": s["train_seconds"],
                "wall_seconds": round(time.perf_counter() - start, 1),
                "run_dir": run_config.out,
            }
        )
    _write(out, rows, source)
    print()
    print(format_table(rows))
    if "jpeg" in source.lower():
        print(
            "Accuracy is on the JPEG copy of CIFAR-10 (about 5.8/255 mean pixel error), not the official images."
        )
    print(f"Results: {out / 'results.csv'} and {out / 'results.json'}; run folders under {out}/")
    print(
        "Full paper schedule (150 epochs, all of CIFAR-10): psconv train --model vgg16 --pattern PSD1_P16 --data-dir DIR"
    )
    return rows


def _write(out: Path, rows: list[dict[str, Any]], source: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", buf.getvalue())
    atomic_write(out / "results.json", json.dumps({"data_source": source, "runs": rows}, indent=2) + "\n")


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<12} {'pattern':<10} {'params':>10} {'MACs':>10} {'ckpt':>9} {'top-1':>7} {'top-5':>7} {'train s':>8}"
    lines = [head, "-" * len(head)]
    dense = rows[0]
    for r in rows:
        lines.append(
            f"{r['model']:<12} {r['pattern']:<10} {r['params'] / 1e6:>9.2f}M {r['macs'] / 1e6:>9.1f}M "
            f"{r['checkpoint_bytes'] / 2**20:>7.1f}MB {r['final_top1']:>6.2f}% {r['final_top5']:>6.2f}% "
            f"{r['train_seconds']:>8.1f}"
        )
    if len(rows) > 1:
        sp = rows[-1]
        lines.append(
            f"{sp['pattern']} vs dense: {dense['params'] / sp['params']:.2f}x fewer params, "
            f"{dense['macs'] / sp['macs']:.2f}x fewer MACs, "
            f"{dense['train_seconds'] / max(sp['train_seconds'], 1e-9):.2f}x training speed, "
            f"top-1 {sp['final_top1'] - dense['final_top1']:+.2f} points"
        )
    return "\n".join(lines)
