"""``psconv demo``: the main job behind ``make run``; a few minutes on a laptop-class CPU.

It trains one network twice from the same seed, with dense kernels and with a pre-defined
sparse pattern (default VGG16 and PSD1_P16), on a real CIFAR-10 subset, and puts parameters,
MACs, checkpoint size, accuracy and training time side by side: printed, and written to
``runs/demo/results.csv`` and ``results.json`` next to the two run folders.

The data is the first of: ``--data-dir``, ``$PSCONV_DATA``, ``../shared/data`` beside the
repository (or the working directory), else the official archive, downloaded and checked.
A short run on a subset says how the two compare early in training, not what the paper's
150-epoch schedule reaches: for that run ``psconv train`` with its defaults.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .data import resolve_data_dir
from .models import list_models
from .train import SCHEDULES, TrainConfig, train

__all__ = ["DemoConfig", "find_data", "run_demo", "add_parser", "run"]

DEFAULTS = {
    "model": "vgg16",
    "pattern": "PSD1_P16",
    "epochs": 2,
    "batch_size": 64,
    "lr": 0.05,
    "schedule": "onecycle",
    "train_subset": 2560,
    "test_subset": 2000,
    "out": "runs/demo",
}
DemoConfig = dict[str, Any]


def find_data(data_dir: str | None) -> tuple[str | None, bool]:
    """(where the CIFAR-10 data is, whether it must be downloaded)."""
    try:
        return str(resolve_data_dir(data_dir, "cifar10")), False
    except FileNotFoundError:
        pass
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return str(candidate), False
    return None, True


def run_demo(args: argparse.Namespace) -> list[dict[str, Any]]:
    data_dir, download = find_data(args.data_dir)
    out = Path(args.out)
    base = TrainConfig(
        model=args.model,
        dataset="cifar10",
        data_dir=data_dir,
        download=download,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        seed=args.seed,
        device=args.device,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        eval_every=args.epochs,  # one evaluation, at the end: the budget goes to training
        num_threads=args.num_threads,
    )
    patterns = ["dense", args.pattern] if args.pattern != "dense" else ["dense"]
    print(
        f"psconv demo: {args.model} dense vs {args.pattern} on CIFAR-10 "
        f"({args.train_subset} train / {args.test_subset} test images, {args.epochs} epochs, "
        f"{args.schedule} lr {args.lr}, batch {args.batch_size}); data: {data_dir or 'download'}",
        flush=True,
    )
    rows = []
    source = ""
    for pattern in patterns:
        config = replace(base, pattern=pattern, out=str(out / f"{args.model}-{pattern}"))
        config.validate()
        # The demo owns these folders: a rerun starts them afresh.
        shutil.rmtree(config.out, ignore_errors=True)
        start = time.perf_counter()
        result = train(config)
        s = result.summary
        source = s.get("data_source", "")
        rows.append(
            {
                "model": args.model,
                "pattern": pattern,
                "params": s["params"],
                "macs": s["macs"],
                "checkpoint_bytes": s["checkpoint_bytes"],
                "best_top1": s["best_top1"],
                "final_top1": s["final_top1"],
                "final_top5": s["final_top5"],
                "train_seconds": s["train_seconds"],
                "wall_seconds": round(time.perf_counter() - start, 1),
                "run_dir": config.out,
            }
        )
    _write(out, rows, source)
    print()
    print(format_table(rows))
    if "jpeg" in source.lower():
        print(
            "Accuracy is on the JPEG copy of CIFAR-10 (about 5.8/255 mean pixel error), "
            "not the official images."
        )
    print(f"Results: {out / 'results.csv'} and {out / 'results.json'}; run folders under {out}/")
    print(
        "Full paper schedule (150 epochs, all of CIFAR-10): psconv train --model vgg16 --pattern PSD1_P16 "
        "--data-dir DIR"
    )
    return rows


def _write(out: Path, rows: list[dict[str, Any]], source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps({"data_source": source, "runs": rows}, indent=2) + "\n")


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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="short dense-vs-sparse training on real CIFAR-10 (the `make run` job)")
    p.add_argument("--model", default=DEFAULTS["model"], choices=list_models())
    p.add_argument("--pattern", default=DEFAULTS["pattern"], help="sparse pattern to compare with dense")
    p.add_argument("--data-dir", help="CIFAR-10 data [$PSCONV_DATA, ../shared/data, else download]")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--schedule", default=DEFAULTS["schedule"], choices=SCHEDULES)
    p.add_argument("--train-subset", type=int, default=DEFAULTS["train_subset"], metavar="N")
    p.add_argument("--test-subset", type=int, default=DEFAULTS["test_subset"], metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--out", default=DEFAULTS["out"], metavar="DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_demo(args)
    return 0
