"""What does the JPEG copy of CIFAR-10 cost in accuracy? Results in ``results/jpeg-cost/``.

    python experiments/jpeg_cost.py                  # every run, then the table
    python experiments/jpeg_cost.py --model vgg16 --pattern dense --seeds 0 1

The short-budget runs (``experiments/short_budget.py``) train and test on the JPEG copy
(quality 75, 4:2:0 chroma), the only full CIFAR-10 these machines have; published CIFAR-10
accuracies are for the original pixels. The pixel-exact subset (4,000 training and 1,000 test
images, the first of the official order) has a JPEG twin inside the copy: file k of a class is
that class's k-th image in the official order. So the same model can be trained, with the same
recipe and seed, on the same images in both forms, and each scored on the same 1,000 test
images in both forms. The paired difference (original-trained on original test minus
JPEG-trained on JPEG test) is the JPEG cost at this data size; with 4,000 training images it
is an estimate for the full set, not a measurement of it.

The recipe is the short-budget protocol (``PROTOCOL``, the pilot's learning rate and label
smoothing) with more epochs, because 4,000 images give 31 steps an epoch. Re-running skips
finished runs and continues unfinished ones; the table covers every seed measured so far.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
from short_budget import PROTOCOL, train  # noqa: E402  (one protocol, declared once)

from psconv.data import cache_dir, load_dataset  # noqa: E402
from psconv.fileio import atomic_write  # noqa: E402

SHARED = ROOT.parent / "shared/data"
FORMS = ("original", "jpeg")


def jpeg_twin(exact_npz: Path, jpeg_archive: Path, out: Path) -> Path:
    """Write ``out``: the exact subset's images, in its order, taken from the JPEG copy."""
    if out.is_file():
        return out
    with np.load(exact_npz) as z:
        exact = {k: z[k] for k in z.files}
    copy = load_dataset("cifar10", jpeg_archive)
    # The copy is class-sorted with equal classes: class c's k-th image is row c * n + k.
    n_classes = len(exact["classes"])
    per_class = {s: len(getattr(copy, f"y_{s}")) // n_classes for s in ("train", "test")}
    twin = {"classes": exact["classes"]}
    for split in ("train", "test"):
        y = exact[f"y_{split}"]
        seen = np.zeros(n_classes, dtype=np.int64)
        rows = []
        for label in y:
            rows.append(label * per_class[split] + seen[label])
            seen[label] += 1
        x = getattr(copy, f"x_{split}")[np.array(rows)]
        mae = np.abs(x.astype(np.int16) - exact[f"x_{split}"].astype(np.int16)).mean(axis=(1, 2, 3))
        # JPEG at quality 75 is about 6/255 off; a misaligned pair is about 60/255 off.
        if mae.max() > 25:
            raise SystemExit(
                f"{split} image {int(mae.argmax())} does not match its JPEG twin (MAE {mae.max():.1f})"
            )
        print(f"{split}: {len(x)} twins, mean abs error {mae.mean():.2f}/255 (max {mae.max():.2f})")
        twin[f"x_{split}"], twin[f"y_{split}"] = x, y
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **twin)
    atomic_write(out, buf.getvalue())  # a half-written twin would pass the is_file() check above
    return out


def evaluate(psconv: str, checkpoint: Path, data: Path) -> float:
    cmd = [psconv, "eval", "--checkpoint", str(checkpoint), "--data-dir", str(data), "--json"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout)["top1"])


def run_scores(psconv: str, run: Path, data: dict[str, Path]) -> dict[str, float]:
    """A finished run's final-epoch top-1 on both test forms, kept in its folder.

    Committed run folders carry no checkpoint, so the scores must travel with them: a later
    ``--seeds 1`` then adds to seed 0 instead of needing seed 0's weights again.
    """
    path = run / "scores.json"
    if not path.is_file():
        scores = {test: evaluate(psconv, run / "last.safetensors", data[test]) for test in FORMS}
        atomic_write(path, json.dumps(scores, indent=2) + "\n")
    return json.loads(path.read_text())


def measured_seeds(out: Path) -> list[int]:
    """Seeds whose runs in both forms have scores: the table covers all of them."""
    seeds = [int(p.parent.name.rsplit("-s", 1)[1]) for p in out.glob(f"{FORMS[0]}-s*/scores.json")]
    return sorted(s for s in seeds if (out / f"{FORMS[1]}-s{s}/scores.json").is_file())


def mean_sd(xs: list[float]) -> str:
    sd = f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):.2f}{sd}"


def paired(scores: dict[str, dict[str, list[float]]], a: tuple[str, str], b: tuple[str, str]) -> list[float]:
    """Per seed, the score of (trained on, tested on) ``a`` minus that of ``b``."""
    return [x - y for x, y in zip(scores[a[0]][a[1]], scores[b[0]][b[1]])]


def cost_parts(scores: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """The cost per seed and its two parts (cost = test side - won back).

    The test side compares one network on the same images twice, so little noise cancels
    out of it; what training on JPEG wins back compares two networks trained apart.
    """
    return {
        "cost": paired(scores, ("original", "original"), ("jpeg", "jpeg")),
        "test_side": paired(scores, ("original", "original"), ("original", "jpeg")),
        "won_back": paired(scores, ("jpeg", "jpeg"), ("original", "jpeg")),
    }


def table(scores: dict[str, dict[str, list[float]]]) -> str:
    n = len(scores["original"]["original"])
    parts = cost_parts(scores)
    lines = [f"test top-1 (%), final epoch, mean ± sd over {n} seed(s)", ""]
    lines += ["| trained on | original test | JPEG test |", "|---|---|---|"]
    for form in FORMS:
        lines.append(f"| {form} | {mean_sd(scores[form]['original'])} | {mean_sd(scores[form]['jpeg'])} |")
    lines += [
        "",
        f"JPEG cost (original/original minus JPEG/JPEG, paired by seed): {mean_sd(parts['cost'])} points",
    ]
    lines += [
        f"- test side (the original-trained network, original minus JPEG test): {mean_sd(parts['test_side'])}",
        f"- won back by training on JPEG (JPEG test, JPEG- minus original-trained): {mean_sd(parts['won_back'])}",
    ]
    return "\n".join(lines) + "\n"


def pooled_table(root: Path) -> str:
    """Every network's per-seed costs and their pooled mean: the figure the docs quote."""
    lines = ["JPEG cost per seed (points; test side - won back = cost)", ""]
    lines += ["| network | seed | test side | won back | cost |", "|---|---|---|---|---|"]
    costs = []
    for path in sorted(root.glob("*/scores.json")):
        stored = json.loads(path.read_text())
        parts = cost_parts(stored["top1"])
        for i, seed in enumerate(stored["seeds"]):
            row = [f"{parts[k][i]:.2f}" for k in ("test_side", "won_back", "cost")]
            lines.append(f"| {path.parent.name} | {seed} | {' | '.join(row)} |")
            costs.append(parts["cost"][i])
    if len(costs) > 1:
        sd = statistics.stdev(costs)
        lines += ["", f"pooled over {len(costs)} pairs: {statistics.mean(costs):.2f} points"]
        lines[-1] += f" (sd {sd:.2f}, standard error {sd / len(costs) ** 0.5:.2f})"
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exact", type=Path, default=SHARED / "cifar10-exact-subset.npz")
    p.add_argument("--jpeg", type=Path, default=SHARED / "cifar10-jpeg.tar.gz")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--pattern", default="PSD1_P16")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "results/jpeg-cost")
    p.add_argument("--psconv", default=str(ROOT / ".venv/bin/psconv"))
    a = p.parse_args()
    choice = json.loads((ROOT / "results/cifar10-10ep/pilot/choice.json").read_text())
    twin = cache_dir() / "cifar10-exact-subset-jpeg-twin.npz"  # data: never under results/
    data = {"original": a.exact.resolve(), "jpeg": jpeg_twin(a.exact, a.jpeg, twin)}
    out = a.out / f"{a.model}-{a.pattern}"
    for seed in a.seeds:
        for form in FORMS:
            run = out / f"{form}-s{seed}"
            args = ["--model", a.model, "--pattern", a.pattern, *PROTOCOL, "--epochs", str(a.epochs)]
            args += ["--seed", str(seed), "--data-dir", str(data[form]), "--lr", str(choice["lr"])]
            args += ["--label-smoothing", str(choice["label_smoothing"])]
            train(a.psconv, run, args)
            run_scores(a.psconv, run, data)
    seeds = measured_seeds(out)
    per_run = {(f, s): run_scores(a.psconv, out / f"{f}-s{s}", data) for f in FORMS for s in seeds}
    scores = {f: {t: [per_run[f, s][t] for s in seeds] for t in FORMS} for f in FORMS}
    atomic_write(out / "scores.json", json.dumps({"seeds": seeds, "top1": scores}, indent=2) + "\n")
    network, pooled = table(scores), pooled_table(a.out)
    atomic_write(out / "table.md", network)
    atomic_write(a.out / "pooled.md", pooled)
    print(network)
    print(pooled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
