"""The report's figures, drawn as the paper draws its own: one panel per model.

- ``accuracy_vs_macs.png``: final-epoch top-1 against GMACs; for each variant our point
  (filled) and the paper's (hollow square) in one colour, joined by a line;
- ``accuracy_vs_time.png``: final-epoch top-1 against measured seconds per training epoch on
  this machine (light networks beside the sparse ResNet18);
- ``training_curves.png``: test top-1 per epoch, one panel per model, a colour per run.

Labels are pushed apart vertically so that none overlap; log axes print plain numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .fileio import atomic_stream

__all__ = ["draw_figures", "PANELS"]

# Panels, and the (model, pattern) variants each shows; the light networks sit beside the
# sparse ResNet18 they are compared with in the paper.
PANELS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "VGG16": lambda r: r["model"] == "vgg16",
    "ResNet18": lambda r: r["model"] == "resnet18",
    "ResNet18 sparse vs light networks": lambda r: (
        r["model"] in ("mobilenetv2", "shufflenet")
        or (r["model"] == "resnet18" and r["pattern"] in ("PSD1_P16", "PS1_P9"))
    ),
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _spread_labels(ys: list[float], gap: float) -> list[float]:
    """Label heights near ``ys``, at least ``gap`` apart (greedy, bottom to top, then centred)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [0.0] * len(ys)
    last = -float("inf")
    for i in order:
        placed[i] = max(ys[i], last + gap)
        last = placed[i]
    shift = (sum(placed) - sum(ys)) / max(len(ys), 1)
    return [p - shift for p in placed]


def _colours(n: int) -> list[Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _scatter_panel(ax: Any, rows: list[dict[str, Any]], x_key: str, paper_x_key: str | None) -> None:
    colours = _colours(len(rows))
    ys = [r["final_top1"] for r in rows]
    span = max(ys + [r.get("paper_top1") or ys[0] for r in rows]) - min(
        ys + [r.get("paper_top1") or ys[0] for r in rows]
    )
    label_y = _spread_labels(ys, gap=max(span, 1.0) * 0.07)
    for row, colour, ly in zip(rows, colours, label_y):
        x, y = row[x_key], row["final_top1"]
        ax.errorbar([x], [y], yerr=[[y - row["final_min"]], [row["final_max"] - y]] if row["seeds"] > 1 else None,
                    fmt="o", color=colour, ms=7, capsize=3, zorder=3)  # fmt: skip
        px, py = (row.get(paper_x_key) if paper_x_key else None), row.get("paper_top1")
        if px is not None and py is not None:
            ax.plot([x, px], [y, py], "-", color=colour, lw=1, alpha=0.6)
            ax.plot([px], [py], "s", mfc="none", mec=colour, ms=7, zorder=3)
        name = row["label"] + (f" (n={row['seeds']})" if row["seeds"] > 1 else "")
        ax.annotate(name, (x, y), xytext=(x * 1.08, ly), fontsize=7, color=colour, va="center",
                    arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.5})  # fmt: skip
    # Spread labels can sit beyond every point: the y range must hold them too.
    paper = [r["paper_top1"] for r in rows if paper_x_key and r.get(paper_x_key) and r.get("paper_top1")]
    spread = [r[k] for r in rows if r["seeds"] > 1 for k in ("final_min", "final_max")]
    shown = ys + label_y + paper + spread
    low, high = min(shown), max(shown)
    if high - low < 2.0:  # a lone point gets a readable range, not 0.1-point ticks
        low, high = (low + high) / 2 - 1.0, (low + high) / 2 + 1.0
    pad = (high - low) * 0.06
    ax.set_ylim(low - pad, high + pad)


def _accuracy_figure(
    rows: list[dict[str, Any]], x_key: str, paper_x_key: str | None, xlabel: str, path: Path
) -> Path | None:
    panels = [(title, [r for r in rows if keep(r) and r.get(x_key)]) for title, keep in PANELS.items()]
    panels = [(t, sel) for t, sel in panels if sel]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, sel) in zip(axes[0], panels):
        _scatter_panel(ax, sel, x_key, paper_x_key)
        _plain_log_axis(ax)
        lo = min(r[x_key] for r in sel)
        hi = max(
            [r[x_key] for r in sel] + [r.get(paper_x_key) or 0 for r in sel]
            if paper_x_key
            else [r[x_key] for r in sel]
        )
        ax.set_xlim(lo / 1.3, hi * 2.2)  # room for the labels on the right
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final-epoch test top-1 (%)")
        ax.grid(alpha=0.3, which="both")
    if paper_x_key:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color="k", label="ours (10 epochs)"),
                   Line2D([], [], marker="s", ls="", mfc="none", mec="k", label="paper (150 epochs, best epoch)")]  # fmt: skip
        # Above the panels, where no point or label can sit under it.
        fig.legend(handles=handles, fontsize=8, loc="upper center", ncol=2, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
    else:
        fig.tight_layout()
    _save(fig, path)
    return path


def _curves_figure(runs: list[dict[str, Any]], path: Path) -> Path | None:
    order = ["vgg16", "resnet18", "mobilenetv2", "shufflenet"]
    models = sorted(
        {r["model"] for r in runs if r["metrics"]}, key=lambda m: (order.index(m) if m in order else 9, m)
    )
    if not models:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(models), figsize=(5.0 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        sel = sorted((r for r in runs if r["model"] == model and r["metrics"]), key=lambda r: r["name"])
        for run, colour in zip(sel, _colours(len(sel))):
            points = [(m["epoch"], m["test_top1"]) for m in run["metrics"] if m.get("test_top1") is not None]
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker=".", color=colour, label=run["name"]
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(
            {
                "vgg16": "VGG16",
                "resnet18": "ResNet18",
                "mobilenetv2": "MobileNetV2",
                "shufflenet": "ShuffleNet",
            }.get(model, model)
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return path


def _time_axis(variants: list[dict[str, Any]]) -> tuple[str, None, str]:
    """Same-session benchmark times where every variant has one (runs ran on different days)."""
    if variants and all(v.get("bench_epoch_seconds") for v in variants):
        return (
            "bench_epoch_seconds",
            None,
            "seconds per epoch of steps (one psconv bench session)",
        )
    return "epoch_seconds", None, "measured seconds per training epoch (this CPU)"


def draw_figures(variants: list[dict[str, Any]], runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Every figure the data allows (needs matplotlib); returns the files written."""
    figures = [
        _accuracy_figure(variants, "macs_G", "paper_macs_G", "GMACs per image (non-zero weights)",
                         out_dir / "accuracy_vs_macs.png"),
        _accuracy_figure(variants, *_time_axis(variants), out_dir / "accuracy_vs_time.png"),
        _curves_figure(runs, out_dir / "training_curves.png"),
    ]  # fmt: skip
    return [f for f in figures if f is not None]


def _save(fig: Any, path: Path) -> None:
    """The PNG under ``path`` only once complete (a figure is often replaced in place)."""
    import matplotlib.pyplot as plt

    with atomic_stream(path) as handle:
        fig.savefig(handle, dpi=130, format="png")
    plt.close(fig)
