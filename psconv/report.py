"""Reports from run folders: tables (markdown, CSV) and figures (PNG, when matplotlib exists).

A run folder is what ``psconv train --out`` writes: ``config.json``, ``metrics.csv`` and,
once finished, ``summary.json``. Complexity and energy figures are computed by our own
counter from the model definitions, never copied from the paper.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .energy import EnergyConstants, energy_estimate
from .models import DATASET_SHAPES, create_model
from .patterns import PAPER_PATTERNS, parse_pattern
from .profile import profile

__all__ = [
    "read_run",
    "complexity_rows",
    "energy_rows",
    "write_report",
    "read_paper",
    "read_timings",
    "MATPLOTLIB_HINT",
]

MATPLOTLIB_HINT = "figures need matplotlib: pip install 'psconv[plot]' (or pip install matplotlib)"
TIMING_KEYS = ("forward_b1_ms", "forward_b128_ms", "train_step_b128_ms")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def read_run(path: str | Path) -> dict[str, Any]:
    """Config, per-epoch metrics and summary of one run folder."""
    folder = Path(path)
    config_path, metrics_path = folder / "config.json", folder / "metrics.csv"
    if not config_path.is_file() or not metrics_path.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a run folder: expected config.json and metrics.csv in it"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {exc}") from None
    with metrics_path.open(newline="") as handle:
        metrics = [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    tops = [m["test_top1"] for m in metrics if m.get("test_top1") is not None]
    top5 = [m["test_top5"] for m in metrics if m.get("test_top5") is not None]
    return {
        "path": str(folder),
        "name": folder.name,
        "model": config.get("model"),
        "pattern": parse_pattern(config.get("pattern", "dense")).name,
        "dataset": config.get("dataset", "cifar10"),
        "config": config,
        "metrics": metrics,
        "summary": summary,
        "epochs_done": len(metrics),
        "best_top1": max(tops) if tops else None,
        "final_top1": tops[-1] if tops else None,
        "final_top5": top5[-1] if top5 else None,
        "seconds": sum(m.get("seconds") or 0.0 for m in metrics),
    }


def read_paper(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``paper-results.csv`` (numbers as floats, blanks as None)."""
    with Path(path).open(newline="") as handle:
        return [
            {k: (_float(v) if k in ("params_M", "macs_G", "top1", "top5") else v) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def read_timings(path: str | Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(model, pattern): {forward_b1_ms, forward_b128_ms, train_step_b128_ms}}`` from JSON rows."""
    rows = json.loads(Path(path).read_text())
    if isinstance(rows, dict) and "models" in rows:
        rows = _bench_rows(rows)
    elif isinstance(rows, dict):
        rows = rows.get("rows", [])
    table: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        if not isinstance(row, dict) or "model" not in row or "pattern" not in row:
            raise ValueError(f"timings file {str(path)!r}: each row needs 'model' and 'pattern'")
        key = (row["model"], parse_pattern(row["pattern"]).name)
        table[key] = {k: float(row[k]) for k in TIMING_KEYS if row.get(k) is not None}
    return table


def _bench_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of :func:`read_timings` from ``psconv bench --json`` output."""
    keys = {"fwd1": "forward_b1_ms", "fwd": "forward_b128_ms", "train": "train_step_b128_ms"}
    if bench.get("settings", {}).get("batch", 128) != 128:
        raise ValueError("timings from psconv bench must use --batch 128 (the report's columns)")
    rows = []
    for model in bench["models"]:
        variants = [("dense", model["dense"])] + list(model["patterns"].items())
        for pattern, cases in variants:
            row = {"model": model["model"], "pattern": pattern}
            row.update({keys[c]: v["ms"] for c, v in cases.items() if c in keys})
            rows.append(row)
    return rows


def complexity_rows(
    models: tuple[str, ...] = ("vgg16", "resnet18"), datasets: tuple[str, ...] = tuple(DATASET_SHAPES)
) -> list[dict[str, Any]]:
    """Params and MACs of every paper variant, for each model and dataset."""
    rows = []
    for dataset in datasets:
        side, classes = DATASET_SHAPES[dataset]
        for name in models:
            for pattern in PAPER_PATTERNS:
                model = create_model(name, pattern, num_classes=classes, image_size=side)
                result = profile(model, (1, 3, side, side), file_size=False)
                rows.append(
                    {
                        "model": name,
                        "dataset": dataset,
                        "variant": pattern,
                        "params_M": round(result["params"] / 1e6, 3),
                        "macs_G": round(result["macs"] / 1e9, 4),
                        "params": result["params"],
                        "macs": result["macs"],
                    }
                )
    return rows


def energy_rows(
    models: tuple[str, ...] = ("vgg16", "resnet18"),
    patterns: tuple[str, ...] = ("dense", "PSD4_P8", "PSD2_P8", "PSD1_P16", "PS1_P9"),
    constants: EnergyConstants | None = None,
    dataset: str = "cifar10",
) -> list[dict[str, Any]]:
    side, classes = DATASET_SHAPES[dataset]
    rows = []
    for name in models:
        for pattern in patterns:
            model = create_model(name, pattern, num_classes=classes, image_size=side)
            est = energy_estimate(profile(model, (1, 3, side, side), file_size=False), constants)
            fmt = est["formats"]
            rows.append(
                {
                    "model": name,
                    "pattern": parse_pattern(pattern).name,
                    "weight_MB_index_free": fmt["index_free"]["weight_bytes"] / 1e6,
                    "weight_MB_bitmask": fmt["bitmask"]["weight_bytes"] / 1e6,
                    "weight_MB_csr": fmt["csr"]["weight_bytes"] / 1e6,
                    "infer_uJ_index_free": fmt["index_free"]["inference_uj"],
                    "infer_uJ_bitmask": fmt["bitmask"]["inference_uj"],
                    "infer_uJ_csr": fmt["csr"]["inference_uj"],
                    "infer_uJ_dense": fmt["dense"]["inference_uj"],
                    "train_uJ_index_free": fmt["index_free"]["train_step_uj"],
                    "train_uJ_csr": fmt["csr"]["train_step_uj"],
                    "train_uJ_dense": fmt["dense"]["train_step_uj"],
                }
            )
    return rows


def _md_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _run_rows(
    runs: list[dict[str, Any]], timings: dict[tuple[str, str], dict[str, float]]
) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        side, classes = DATASET_SHAPES.get(run["dataset"], (32, 10))
        result = profile(create_model(run["model"], run["pattern"], num_classes=classes, image_size=side),
                         (1, 3, side, side), file_size=False)  # fmt: skip
        config = run["config"]
        row = {
            "run": run["name"],
            "model": run["model"],
            "pattern": run["pattern"],
            "dataset": run["dataset"],
            "params_M": result["params"] / 1e6,
            "macs_G": result["macs"] / 1e9,
            "epochs": run["epochs_done"],
            "train_images": config.get("train_subset") or "all",
            "best_top1": run["best_top1"],
            "final_top1": run["final_top1"],
            "final_top5": run["final_top5"],
            "wall_s": round(run["seconds"], 1),
        }
        if run["dataset"] == "cifar10":  # psconv bench times CIFAR-10 shapes
            row.update(timings.get((run["model"], run["pattern"]), {}))
        rows.append(row)
    return rows


def write_report(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    paper: str | Path | None = None,
    timings: str | Path | list[str | Path] | None = None,
    constants: EnergyConstants | None = None,
) -> dict[str, Any]:
    """Write ``out/report.md``, CSV tables and PNG figures; returns what was written."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d) for d in run_dirs]
    timing_table: dict[tuple[str, str], dict[str, float]] = {}
    for path in [timings] if isinstance(timings, (str, Path)) else timings or []:
        timing_table.update(read_timings(path))
    paper_rows = read_paper(paper) if paper else []
    run_rows = _run_rows(runs, timing_table)
    paper_lookup = {(r["model"], r["dataset"], r["variant"]): r for r in paper_rows}
    for row in run_rows if paper_rows else []:
        ref = paper_lookup.get((row["model"], row["dataset"], _paper_name(row["pattern"])))
        row["paper_top1"] = ref["top1"] if ref else None
        if ref and ref["top1"] is not None and row["best_top1"] is not None:
            row["gap_to_paper"] = round(row["best_top1"] - ref["top1"], 2)
    complexity = complexity_rows()
    energy = energy_rows(constants=constants)
    _write_csv(out_dir / "runs.csv", run_rows)
    _write_csv(out_dir / "complexity.csv", complexity)
    _write_csv(out_dir / "energy.csv", energy)
    figures, note = _figures(runs, run_rows, paper_rows, out_dir)
    sections = ["# psconv report", ""]
    if run_rows:
        columns = [("run", "run"), ("model", "model"), ("pattern", "pattern"), ("dataset", "dataset"),
                   ("params_M", "params (M)"), ("macs_G", "MACs (G)"), ("epochs", "epochs"),
                   ("train_images", "train images"), ("best_top1", "best top-1"), ("final_top1", "final top-1"),
                   ("final_top5", "final top-5"), ("wall_s", "train wall (s)")]  # fmt: skip
        if timing_table:
            columns += [(k, k.replace("_", " ")) for k in TIMING_KEYS]
        sections += ["## Our runs", "", _md_table(run_rows, columns), ""]
    short = [r for r in run_rows if r["epochs"] < 150]
    if paper_rows and short:
        sections += [
            "**Budget.** "
            + ", ".join(
                sorted(
                    {f"{r['dataset']}: {r['epochs']} epoch(s) on {r['train_images']} images" for r in short}
                )
            )
            + ", against the paper's 150 epochs on the full training set. Where our sparse variants "
            "trail dense by more than the paper's gaps, or lead it, that is the budget speaking: a run this "
            "short measures how fast a network starts to learn, one seed each, so differences of a few "
            "points are noise. Accuracy on the CIFAR-10 JPEG copy is not accuracy on the official images.",
            "",
        ]
    if paper_rows:
        sections += ["## Against the paper (best top-1, %)", "",
                     _md_table(run_rows, [("model", "model"), ("pattern", "pattern"), ("dataset", "dataset"),
                                          ("best_top1", "ours"), ("paper_top1", "paper"),
                                          ("gap_to_paper", "ours - paper")]), ""]  # fmt: skip
    sections += [
        "## Complexity of every paper variant (our counter)",
        "",
        _md_table(
            complexity,
            [
                ("model", "model"),
                ("dataset", "dataset"),
                ("variant", "variant"),
                ("params_M", "params (M)"),
                ("macs_G", "MACs (G)"),
            ],
        ),  # fmt: skip
        "",
        "## Energy estimate (CIFAR-10, per image)",
        "",
        _md_table(energy, [(k, k) for k in energy[0]]),
        "",
        _constants_note(constants),
        "",
    ]
    if figures:
        sections += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    if note:
        sections += [f"_{note}_", ""]
    (out_dir / "report.md").write_text("\n".join(sections))
    return {"report": str(out_dir / "report.md"), "figures": [str(f) for f in figures], "runs": run_rows}


def _paper_name(pattern: str) -> str:
    return "pSC9" if pattern == "dense" else pattern


def _constants_note(constants: EnergyConstants | None) -> str:
    from .energy import SOURCES

    c = constants or EnergyConstants()
    lines = ["Constants (override with `psconv energy --set NAME=VALUE`):", ""]
    lines += [f"- `{name}` = {getattr(c, name)}: {source}" for name, source in SOURCES.items()]
    return "\n".join(lines)


def _figures(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], paper_rows: list[dict[str, Any]], out_dir: Path
) -> tuple[list[Path], str | None]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], MATPLOTLIB_HINT
    figures: list[Path] = []
    groups = sorted({(r["model"], r["dataset"]) for r in rows})
    for x_key, x_label, stem in (
        ("macs_G", "GMACs per image (non-zero weights)", "accuracy_vs_macs"),
        ("train_step_b128_ms", "measured training step, batch 128 (ms, this CPU)", "accuracy_vs_time"),
    ):
        points = [r for r in rows if r.get(x_key) is not None and r.get("best_top1") is not None]
        if not points:
            continue
        fig, axes = plt.subplots(
            1, max(1, len({r["dataset"] for r in points})), figsize=(7, 4.5), squeeze=False
        )
        for ax, dataset in zip(axes[0], sorted({r["dataset"] for r in points})):
            for model, ds in groups:
                if ds != dataset:
                    continue
                sel = [r for r in points if r["model"] == model and r["dataset"] == ds]
                line = ax.plot(
                    [r[x_key] for r in sel], [r["best_top1"] for r in sel], "o", label=f"{model} (ours)"
                )[0]
                for r in sel:
                    dense = r["pattern"] == "dense"
                    ax.annotate(r["pattern"], (r[x_key], r["best_top1"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points", weight="bold" if dense else "normal")  # fmt: skip
                    if dense:
                        ax.plot([r[x_key]], [r["best_top1"]], "*", ms=14, color=line.get_color())
                if x_key == "macs_G" and paper_rows:
                    ref = [p for p in paper_rows if p["model"] == model and p["dataset"] == ds]
                    ref = [p for p in ref if p["macs_G"] is not None and p["top1"] is not None]
                    if ref:
                        ax.plot([p["macs_G"] for p in ref], [p["top1"] for p in ref], "x", color=line.get_color(),
                                alpha=0.6, label=f"{model} (paper, 150 epochs)")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel("best test top-1 (%)")
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        figures.append(path)
    curves = [r for r in runs if r["metrics"]]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in curves:
            epochs = [m["epoch"] for m in run["metrics"]]
            ax.plot(epochs, [m["test_top1"] for m in run["metrics"]], marker=".", label=run["name"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out_dir / "training_curves.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        figures.append(path)
    return figures, None
