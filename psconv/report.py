"""Reports from run folders: tables (markdown, CSV) and figures (PNG, when matplotlib exists).

A run folder is what ``psconv train --out`` writes: ``config.json``, ``metrics.csv`` and,
once finished, ``summary.json``. Complexity and energy figures are computed by our own
counter from the model definitions, never copied from the paper.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path
from typing import Any

from .data.info import DATASETS
from .energy import EnergyConstants, energy_estimate
from .fileio import atomic_write
from .models import DATASET_SHAPES, create_model
from .patterns import PAPER_PATTERNS, parse_pattern
from .profile import profile

__all__ = [
    "read_run",
    "variant_rows",
    "complexity_rows",
    "energy_rows",
    "write_report",
    "read_paper",
    "read_timings",
    "MATPLOTLIB_HINT",
]

MATPLOTLIB_HINT = "figures need matplotlib: pip install 'psconv[plot]' (or pip install matplotlib)"
TIMING_KEYS = ("forward_b1_ms", "forward_b128_ms", "train_step_b128_ms")
BENCH_BATCH = 128  # the batch of the timing columns above
PAPER_COLUMNS = ("model", "dataset", "variant", "params_M", "macs_G", "top1")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from None


def read_run(path: str | Path) -> dict[str, Any]:
    """Config, per-epoch metrics and summary of one run folder."""
    folder = Path(path)
    config_path, metrics_path = folder / "config.json", folder / "metrics.csv"
    if not config_path.is_file() or not metrics_path.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a run folder: expected config.json and metrics.csv in it"
        )
    config = _read_json(config_path)
    with metrics_path.open(newline="") as handle:
        metrics = [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    summary_path = folder / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else {}
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
        reader = csv.DictReader(handle)
        missing = [c for c in PAPER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:  # a wrong file would otherwise give a report without the paper's points
            raise ValueError(f"paper results {str(path)!r}: expected columns {', '.join(PAPER_COLUMNS)}; "
                             f"missing {', '.join(missing)}")  # fmt: skip
        return [
            {k: (_float(v) if k in ("params_M", "macs_G", "top1", "top5") else v) for k, v in row.items()}
            for row in reader
        ]


def read_timings(path: str | Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(model, pattern): {forward_b1_ms, forward_b128_ms, train_step_b128_ms}}`` from JSON rows."""
    rows = _read_json(Path(path))
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
    if bench.get("settings", {}).get("batch", BENCH_BATCH) != BENCH_BATCH:
        raise ValueError("timings from psconv bench must use --batch 128 (the report's columns)")
    rows = []
    for model in bench["models"]:
        variants = [("dense", model["dense"])] + list(model["patterns"].items())
        for pattern, cases in variants:
            row = {"model": model["model"], "pattern": pattern}
            row.update({keys[c]: v["ms"] for c, v in cases.items() if c in keys})
            rows.append(row)
    return rows


@functools.cache
def _profile_of(name: str, pattern: str, num_classes: int, side: int) -> dict[str, Any]:
    """A model's counted complexity (read-only: shared by every table of this process that needs
    it; counting a model takes about a second)."""
    model = create_model(name, pattern, num_classes=num_classes, image_size=side)
    return profile(model, (1, 3, side, side), file_size=False)


def complexity_rows(
    models: tuple[str, ...] = ("vgg16", "resnet18"), datasets: tuple[str, ...] = tuple(DATASET_SHAPES)
) -> list[dict[str, Any]]:
    """Params and MACs of every paper variant, for each model and dataset."""
    rows = []
    for dataset in datasets:
        side, classes = DATASET_SHAPES[dataset]
        for name in models:
            for pattern in PAPER_PATTERNS:
                result = _profile_of(name, pattern, classes, side)
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
            est = energy_estimate(_profile_of(name, pattern, classes, side), constants)
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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


def _run_rows(
    runs: list[dict[str, Any]], timings: dict[tuple[str, str], dict[str, float]]
) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        side, classes = DATASET_SHAPES.get(run["dataset"], (32, 10))
        result = _profile_of(run["model"], run["pattern"], classes, side)
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


def _bench_epoch_seconds(run: dict[str, Any], row: dict[str, Any]) -> float | None:
    """An epoch of this run's training steps at the speed ``psconv bench`` measured (batch 128),
    for single-process runs on a whole official training split (minus any holdout)."""
    config, info = run["config"], DATASETS.get(run["dataset"])
    step_ms = row.get("train_step_b128_ms")
    single = (run["summary"].get("world_size") or 1) == 1
    if (
        step_ms is None
        or info is None
        or config.get("batch_size") != BENCH_BATCH
        or config.get("train_subset")
        or not single
    ):
        return None
    steps = (info.train_images - (config.get("holdout") or 0)) // BENCH_BATCH
    return round(step_ms * steps / 1000, 1)


# The paper's light-network points (its comparison figure; reference README), CIFAR-10.
PAPER_LIGHT = {("mobilenetv2", "cifar10"): (90.35, 0.090), ("shufflenet", "cifar10"): (88.91, 0.098)}
_LABELS = {"mobilenetv2": "MobileNetV2", "shufflenet": "ShuffleNet"}


def variant_rows(
    runs: list[dict[str, Any]], run_rows: list[dict[str, Any]], paper_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per (model, pattern, dataset): final-epoch top-1 mean and spread over seeds, gap to
    the dense model's mean, the paper's top-1 and gap, seconds per epoch on this machine (the
    fastest epoch of any of its seeds: the same work, so the slower ones were disturbed) and,
    where ``psconv bench`` timings were given, an epoch of training steps at the benchmark's
    speed (every variant timed in one session, so they compare; run times span days)."""
    import statistics

    finished = [
        (run, row) for run, row in zip(runs, run_rows) if run["summary"] and run["final_top1"] is not None
    ]
    keys = sorted({(r["model"], r["pattern"], r["dataset"]) for _, r in finished})
    paper = {(p["model"], p["dataset"], p["variant"]): p for p in paper_rows}
    out = []
    for model, pattern, dataset in keys:
        sel = [
            (run, row)
            for run, row in finished
            if (row["model"], row["pattern"], row["dataset"]) == (model, pattern, dataset)
        ]
        finals = [run["final_top1"] for run, _ in sel]
        # A run's fastest epoch: other work on a shared machine (or a paused run) only adds time.
        epoch_s = [
            min((m["seconds"] for m in run["metrics"] if m.get("seconds")), default=None) for run, _ in sel
        ]
        bench_s = [_bench_epoch_seconds(run, run_row) for run, run_row in sel]
        row: dict[str, Any] = {"model": model, "pattern": pattern, "dataset": dataset, "seeds": len(sel),
                               "final_top1": round(statistics.mean(finals), 2), "final_min": min(finals),
                               "final_max": max(finals), "final_std": round(statistics.stdev(finals), 2) if len(finals) > 1 else None,
                               "best_top1": round(statistics.mean(run["best_top1"] for run, _ in sel), 2),
                               "epochs": sel[0][1]["epochs"], "macs_G": sel[0][1]["macs_G"], "params_M": sel[0][1]["params_M"],
                               "epoch_seconds": min((s for s in epoch_s if s), default=None), "label": _LABELS.get(model, pattern),
                               "bench_epoch_seconds": next((s for s in bench_s if s), None)}  # fmt: skip
        ref = paper.get((model, dataset, _paper_name(pattern)))
        light = PAPER_LIGHT.get((model, dataset)) if pattern == "dense" else None
        row["paper_top1"], row["paper_macs_G"] = (
            (ref["top1"], ref["macs_G"]) if ref else (light or (None, None))
        )
        out.append(row)
    for row in out:
        dense = next(
            (
                d
                for d in out
                if (d["model"], d["dataset"], d["pattern"]) == (row["model"], row["dataset"], "dense")
            ),
            None,
        )
        if dense is not None and row["pattern"] != "dense":
            row["gap_to_dense"] = round(row["final_top1"] - dense["final_top1"], 2)
            if row["paper_top1"] is not None and dense["paper_top1"] is not None:
                row["paper_gap"] = round(row["paper_top1"] - dense["paper_top1"], 2)
                row["gap_minus_paper_gap"] = round(row["gap_to_dense"] - row["paper_gap"], 2)
    return out


def write_report(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    paper: str | Path | None = None,
    timings: str | Path | list[str | Path] | None = None,
    constants: EnergyConstants | None = None,
) -> dict[str, Any]:
    """Write ``out/report.md``, CSV tables and PNG figures; returns what was written."""
    from . import progress

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d) for d in progress.iterate(list(run_dirs), "reading runs")]
    timing_table: dict[tuple[str, str], dict[str, float]] = {}
    for path in [timings] if isinstance(timings, (str, Path)) else timings or []:
        timing_table.update(read_timings(path))
    paper_rows = read_paper(paper) if paper else []
    run_rows = _run_rows(runs, timing_table)
    variants = variant_rows(runs, run_rows, paper_rows)
    complexity, energy = complexity_rows(), energy_rows(constants=constants)
    for name, rows in (
        ("runs", run_rows),
        ("variants", variants),
        ("complexity", complexity),
        ("energy", energy),
    ):
        _write_csv(out_dir / f"{name}.csv", rows)
    try:
        from .report_figures import draw_figures

        figures, note = draw_figures(variants, runs, out_dir), None
    except ImportError:
        figures, note = [], MATPLOTLIB_HINT
    sections = ["# psconv report", ""] + _accuracy_sections(variants, run_rows, timing_table)
    sections += _reference_sections(complexity, energy, constants)
    if figures:
        sections += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    if note:
        sections += [f"_{note}_", ""]
    atomic_write(out_dir / "report.md", "\n".join(sections))
    return {"report": str(out_dir / "report.md"), "figures": [str(f) for f in figures], "runs": run_rows,
            "variants": variants}  # fmt: skip


def _budget(run_rows: list[dict[str, Any]]) -> str:
    kinds = sorted(
        {f"{r['dataset']}: {r['epochs']} epoch(s) on {r['train_images']} training images" for r in run_rows}
    )
    return "; ".join(kinds)


def _accuracy_sections(
    variants: list[dict[str, Any]],
    run_rows: list[dict[str, Any]],
    timings: dict[tuple[str, str], dict[str, float]],
) -> list[str]:
    if not run_rows:
        return []
    sections = []
    if variants:
        columns = [("model", "model"), ("pattern", "pattern"), ("seeds", "seeds"), ("final_top1", "final top-1 (mean)"),
                   ("final_std", "std over seeds"), ("gap_to_dense", "gap to dense"), ("paper_top1", "paper top-1"),
                   ("paper_gap", "paper gap"), ("gap_minus_paper_gap", "our gap - paper gap"),
                   ("best_top1", "best epoch (test-picked)"), ("macs_G", "GMACs"), ("epoch_seconds", "s / epoch")]  # fmt: skip
        if any(v.get("bench_epoch_seconds") for v in variants):
            columns.append(("bench_epoch_seconds", "s / epoch (bench)"))
        sections += ["## Accuracy against the paper (final epoch)", "", _md_table(variants, columns), "",
                     f"**Budget.** {_budget(run_rows)}, against the paper's 150 epochs. The number reported is "
                     "the final epoch's test top-1; the best epoch is picked on the test set and shown only "
                     "for comparison with the paper, which reports it. Seeds: one unless the table says "
                     "more, so a difference of a few tenths of a point is within seed noise. Accuracy on the "
                     "CIFAR-10 JPEG copy is not accuracy on the official images. A gap is the variant's top-1 "
                     "minus its dense twin's (negative: below dense); 'our gap - paper gap' of -1 or more "
                     "means the variant loses at most one point more than it does in the paper. 's / epoch' "
                     "is the fastest epoch of the variant's runs, which ran on different days of a machine "
                     "whose speed varies between days; 's / epoch (bench)', where given, is an epoch of "
                     "training steps at the speed `psconv bench` measured for every variant in one session: "
                     "the time figure uses it when every variant has it.", ""]  # fmt: skip
    columns = [("run", "run"), ("model", "model"), ("pattern", "pattern"), ("dataset", "dataset"),
               ("params_M", "params (M)"), ("macs_G", "MACs (G)"), ("epochs", "epochs"),
               ("train_images", "train images"), ("final_top1", "final top-1"), ("best_top1", "best top-1"),
               ("final_top5", "final top-5"), ("wall_s", "train wall (s)")]  # fmt: skip
    if timings:
        columns += [(k, k.replace("_", " ")) for k in TIMING_KEYS]
    return sections + ["## Every run", "", _md_table(run_rows, columns), ""]


def _reference_sections(
    complexity: list[dict[str, Any]], energy: list[dict[str, Any]], constants: EnergyConstants | None
) -> list[str]:
    columns = [("model", "model"), ("dataset", "dataset"), ("variant", "variant"), ("params_M", "params (M)"),
               ("macs_G", "MACs (G)")]  # fmt: skip
    return ["## Complexity of every paper variant (our counter)", "", _md_table(complexity, columns), "",
            "## Energy estimate (CIFAR-10, per image)", "", _md_table(energy, [(k, k) for k in energy[0]]), "",
            _constants_note(constants), ""]  # fmt: skip


def _paper_name(pattern: str) -> str:
    return "pSC9" if pattern == "dense" else pattern


def _constants_note(constants: EnergyConstants | None) -> str:
    from .energy import SOURCES

    c = constants or EnergyConstants()
    lines = ["Constants (override with `psconv energy --set NAME=VALUE`):", ""]
    lines += [f"- `{name}` = {getattr(c, name)}: {source}" for name, source in SOURCES.items()]
    return "\n".join(lines)
