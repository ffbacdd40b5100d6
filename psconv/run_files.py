"""The files of a training run folder: ``config.json``, ``metrics.csv``, ``summary.json``,
``environment.json``, ``kernel_choices.json``, and the lock that keeps two processes from writing
one run.

``last.ckpt``/``best.ckpt`` are :func:`psconv.save` files (see :mod:`psconv.checkpoint`).
Every file is written atomically (:func:`psconv.fileio.atomic_write`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from .fileio import atomic_write
from .runtime import cpu_id, cpu_name
from .train_config import RESUME_KEYS, TrainConfig

__all__ = [
    "METRICS_FIELDS",
    "metrics_text",
    "read_metrics",
    "check_resumable",
    "lock_run_dir",
    "environment",
    "write_json",
    "KERNEL_CHOICES",
    "write_kernel_choices",
    "read_kernel_choices",
]

METRICS_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "seconds")


KERNEL_CHOICES = "kernel_choices.json"
_CHOICES_FORMAT = "psconv-kernel-choices"


def write_kernel_choices(path: Path, layers: dict[str, Any]) -> None:
    """The path ``auto`` took for each layer shape (measured where the kernels are not
    calibrated): what a bit-exact repeat of the run needs beside its config."""
    write_json(path, {"format": _CHOICES_FORMAT, "version": 1, "layers": layers})


def read_kernel_choices(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``kernel_choices.json``'s decisions (cache key -> decision); one clear error otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"kernel choices {str(path)!r} do not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"kernel choices {str(path)!r} cannot be read: {exc}") from None
    if not (
        isinstance(data, dict)
        and data.get("format") == _CHOICES_FORMAT
        and isinstance(data.get("layers"), dict)
    ):
        raise ValueError(f"{str(path)!r} is not a psconv kernel_choices.json (format {_CHOICES_FORMAT!r})")
    return data["layers"]


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def metrics_text(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRICS_FIELDS})
    return buf.getvalue()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``metrics.csv`` as dicts of numbers (``None`` where an epoch was not evaluated)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {k: (None if v == "" else int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows
    ]


def check_resumable(config: TrainConfig, stored: dict[str, Any], run_dir: Path) -> None:
    """Refuse to continue a run with settings that change what it computes."""
    defaults = TrainConfig()
    diffs = [
        f"{k}: run has {stored.get(k, getattr(defaults, k))!r}, now {getattr(config, k)!r}"
        for k in RESUME_KEYS
        if stored.get(k, getattr(defaults, k)) != getattr(config, k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {str(run_dir)!r}: its config differs in what the run computes ({'; '.join(diffs)}); "
            f"start a new run with another --out instead"
        )


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an exclusive lock on the run folder: two processes must not write one run."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    handle = open(run_dir / ".lock", "w")  # noqa: SIM115 (lives as long as the run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(
            f"another psconv process is training in {str(run_dir)!r}; wait for it or stop it"
        ) from None
    return handle


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    return None


def environment(num_threads: int | None = None) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: bit-exact repeats need the same code,
    the same torch, the same CPU kind and the same thread count."""
    from . import __version__
    from .kernels import kernel_info

    info = kernel_info()
    return {
        "psconv": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_id": cpu_id(),
        "threads": num_threads or torch.get_num_threads(),
        "kernel_isa": info["isa"] if info["available"] else None,
        "backend": info["backend"],
    }
