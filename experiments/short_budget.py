"""The short-budget CIFAR-10 protocol behind ``results/cifar10-10ep/``: one command, resumable.

    python experiments/short_budget.py               # pilot, then every run, in priority order
    python experiments/short_budget.py --only vgg16  # runs whose name contains "vgg16"
    python experiments/short_budget.py --list        # what is done, running, left

Protocol: the full 50k training images of the CIFAR-10 JPEG copy, the full 10k test set, 10
epochs, batch 128, one-cycle (warm-up over the first 20% from lr/10, linear decay to zero),
SGD with the paper's momentum 0.9 and weight decay 5e-4, Nesterov momentum, the paper's
augmentation (pad-4 random crop, flip). Final-epoch test top-1 is the result.

The peak learning rate and label smoothing are chosen once for every model by a pilot that
never sees the test set: VGG16 PSD1_P16 (the cheapest model of the study) trained for the same
10 epochs on 20,000 training images and scored on 5,000 *other* training images held out
(``--holdout 5000``). The pilot's best final held-out top-1 picks the setting, written to
``pilot/choice.json``, and every run uses it. Re-running continues unfinished runs
(``psconv train --resume``) and skips finished ones, so the script can be stopped at any time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ["--dataset", "cifar10", "--epochs", "10", "--batch-size", "128", "--schedule", "onecycle"]
PROTOCOL += ["--momentum", "0.9", "--weight-decay", "5e-4", "--nesterov", "--num-threads", "2"]
PILOT_MODEL = ("vgg16", "PSD1_P16")
PILOT_DATA = ["--holdout", "5000", "--train-subset", "20000", "--seed", "0"]
# (name, peak lr, label smoothing)
PILOT_GRID = [("lr0.1-ls0.1", 0.1, 0.1), ("lr0.2-ls0.1", 0.2, 0.1), ("lr0.05-ls0.1", 0.05, 0.1)]
PILOT_GRID += [("lr0.1-ls0", 0.1, 0.0)]
# (model, pattern, seed), most needed first: each sparse variant's gap needs its dense twin.
RUNS = [
    ("vgg16", "PSD1_P16", 0),
    ("resnet18", "PSD1_P16", 0),
    ("vgg16", "dense", 0),
    ("vgg16", "PS1_P9", 0),
    ("vgg16", "PSD2_P8", 0),
    ("resnet18", "PS1_P9", 0),
    ("resnet18", "dense", 0),
    ("vgg16", "PSD4_P8", 0),
    ("vgg16", "PSD1_P16", 1),
    ("resnet18", "PSD1_P16", 1),
    ("shufflenet", "dense", 0),
    ("mobilenetv2", "dense", 0),
    ("vgg16", "dense", 1),
    ("resnet18", "PSD4_P8", 0),
    ("resnet18", "PSD2_P8", 0),
    ("vgg16", "PS1_P9", 1),  # the largest VGG16 gap: is it one seed's noise?
    ("resnet18", "PS1_P9", 1),  # the same question for ResNet18's largest gap
]


def train(psconv: str, out: Path, args: list[str]) -> None:
    """One run to its end: continued when its folder holds one, skipped when finished."""
    if (out / "summary.json").is_file():
        print(f"== {out.relative_to(ROOT)}: done", flush=True)
        return
    print(f"== {out.relative_to(ROOT)}", flush=True)
    cmd = [psconv, "train", "--out", str(out)]
    cmd += ["--resume"] if (out / "config.json").is_file() else args
    subprocess.run(cmd, check=True)


def choose(pilot_dir: Path) -> dict[str, float | str]:
    """The pilot setting with the best final-epoch held-out top-1 (ties: the first listed)."""
    scores = []
    for name, lr, ls in PILOT_GRID:
        summary = json.loads((pilot_dir / name / "summary.json").read_text())
        assert summary["evaluated_on"].startswith("holdout"), "the pilot must not score on the test set"
        scores.append((summary["final_top1"], name, lr, ls))
    best = max(scores, key=lambda s: s[0])  # max keeps the first of equal scores
    return {"name": best[1], "lr": best[2], "label_smoothing": best[3], "holdout_top1": best[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", default=os.environ.get("DATA", str(ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"))
    )
    p.add_argument("--out", default=str(ROOT / "results/cifar10-10ep"))
    p.add_argument("--psconv", default=str(ROOT / ".venv/bin/psconv"))
    p.add_argument("--only", default="", help="only runs whose name contains this")
    p.add_argument("--list", action="store_true", help="show each run's state and stop")
    a = p.parse_args()
    out = Path(a.out).resolve()
    names = [f"{m}-{pat}-s{seed}" for m, pat, seed in RUNS]
    if a.list:
        for name in [f"pilot/{n}" for n, _, _ in PILOT_GRID] + names:
            d = out / name
            state = (
                "done"
                if (d / "summary.json").exists()
                else "started"
                if (d / "config.json").exists()
                else "-"
            )
            print(f"{state:8s} {name}")
        return 0
    data = ["--data-dir", a.data]
    pilot_dir = out / "pilot"
    for name, lr, ls in PILOT_GRID:
        model, pattern = PILOT_MODEL
        args = ["--model", model, "--pattern", pattern, *PROTOCOL, *PILOT_DATA, *data]
        train(a.psconv, pilot_dir / name, args + ["--lr", str(lr), "--label-smoothing", str(ls)])
    choice = choose(pilot_dir)
    (pilot_dir / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
    print(f"pilot choice: {choice}", flush=True)
    for (model, pattern, seed), name in zip(RUNS, names):
        if a.only and a.only not in name:
            continue
        args = ["--model", model, "--pattern", pattern, "--seed", str(seed), *PROTOCOL, *data]
        args += ["--lr", str(choice["lr"]), "--label-smoothing", str(choice["label_smoothing"])]
        train(a.psconv, out / name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
