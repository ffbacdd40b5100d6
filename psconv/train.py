"""``psconv train``: the paper's recipe, resumable, on CPU, one GPU or many (torchrun + DDP).

Everything a run depends on is one visible dataclass, :class:`TrainConfig`; its defaults are
the authors' CIFAR-10 recipe. A run folder holds ``config.json``, ``metrics.csv``,
``last.ckpt``/``best.ckpt`` (compact :func:`psconv.save` files whose ``extra`` carries the
optimizer state and history) and, at the end, ``summary.json``.

Exact resume: each epoch's shuffle, crops and flips are drawn from ``(seed, epoch)`` and the
learning rate is a pure function of the position in the schedule, so the only state is the
model and the optimizer, both in ``last.ckpt``. On CPU a resumed run ends with the same bits
as an uninterrupted one, given deterministic kernels: today that means ``--num-threads 1`` or
``PSCONV_BACKEND=reference`` (the compiled weight-gradient kernel's multi-threaded sums vary in
the last bits from run to run).

Choices the paper leaves open:

- Paper schedule: lr x0.2 after 40, 80, 100, 115, 130 and 140 finished epochs (of 150; scaled
  in proportion for other ``--epochs``), stepped per epoch. The authors' scripts call the
  scheduler at the start of each epoch and so drop one epoch earlier; we use the stated
  milestones. ``cosine`` and ``onecycle`` (warm-up from lr/10 over 20%, then linear to 0) step
  per batch. ``metrics.csv``'s ``lr`` is the rate at the epoch's first step.
- Each epoch drops its last partial batch (its images are in other epochs' batches), so every
  step, on any number of ranks, averages the same number of images.
- ``--train-subset``/``--test-subset`` draw a fixed sample (independent of ``--seed``), so runs
  with different seeds or patterns see the same images, and ``psconv eval --test-subset N``
  scores the images training scored.
- Under DDP, BatchNorm statistics span all ranks (SyncBatchNorm on GPUs, an all-reduce
  BatchNorm on CPU), so N ranks compute what one process does with the same global batch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write, load_checkpoint, save
from .data import DATASETS, DeviceData, load_dataset
from .evaluate import evaluate
from .models import create_model, list_models
from .patterns import parse_pattern
from .profile import profile

__all__ = ["TrainConfig", "TrainResult", "train", "lr_at", "add_parser", "run", "METRICS_FIELDS"]

PAPER_MILESTONES = (40, 80, 100, 115, 130, 140)
PAPER_EPOCHS = 150
SCHEDULES = ("paper", "cosine", "onecycle")
AMP_MODES = ("none", "bf16", "fp16")
METRICS_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "seconds")
# Fields that change what a run computes: a resumed run must agree on all of them.
RESUME_KEYS = (
    "model",
    "pattern",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "gamma",
    "seed",
    "train_subset",
    "holdout",
    "nesterov",
    "label_smoothing",
)


@dataclass
class TrainConfig:
    """One training run. Defaults: the authors' CIFAR-10 recipe (reference README)."""

    model: str = "vgg16"
    pattern: str = "dense"
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    epochs: int = PAPER_EPOCHS
    batch_size: int = 128  # global: split evenly over DDP ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    schedule: str = "paper"
    gamma: float = 0.2  # the paper schedule's factor per milestone
    seed: int = 0
    device: str = "auto"
    out: str | None = None  # run folder; default runs/<model>-<pattern>-<dataset>-s<seed>
    train_subset: int | None = None  # keep N training images (a fixed, seed-independent draw)
    test_subset: int | None = None
    # Hold out N training images (a fixed, seed-independent draw) and evaluate on them instead of
    # the test set: for choosing hyperparameters without looking at the test set.
    holdout: int | None = None
    eval_every: int = 1
    eval_batch_size: int = 500
    compile: bool = False
    amp: str = "none"
    channels_last: bool = False
    num_threads: int | None = None

    def validate(self) -> None:
        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(list_models())}")
        parse_pattern(self.pattern)  # a bad spec fails now, not after loading the data
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every}
        positive |= {"eval_batch_size": self.eval_batch_size}
        for name in ("train_subset", "test_subset", "holdout", "num_threads"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "gamma", "label_smoothing"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"--label-smoothing must be below 1, got {self.label_smoothing!r}")

    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.pattern}-{self.dataset}-s{self.seed}")


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# Schedule


def scaled_milestones(epochs: int) -> list[int]:
    return [max(1, round(m * epochs / PAPER_EPOCHS)) for m in PAPER_MILESTONES]


def lr_at(config: TrainConfig, epoch: int, progress: float = 0.0) -> float:
    """Learning rate during ``epoch`` (0-based) at ``progress`` in [0, 1) through it."""
    if config.schedule == "paper":
        drops = sum(epoch >= m for m in scaled_milestones(config.epochs))
        return config.lr * config.gamma**drops
    t = (epoch + progress) / config.epochs
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))
    # onecycle: linear warm-up from lr/10 over the first 20%, then linear decay to zero.
    warm = 0.2
    if t < warm:
        return config.lr * (0.1 + 0.9 * t / warm)
    return config.lr * max(0.0, 1 - t) / (1 - warm)


# --------------------------------------------------------------------------------------------
# Devices and processes


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # we created the process group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_arg: str) -> _Dist:
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return _Dist(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if wants_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local, owned=True)


def _resolve_device(device_arg: str, ddp: _Dist) -> torch.device:
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except RuntimeError:
        raise ValueError(f"--device {device_arg!r} is not a device (use auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_arg} asked for, but this torch build sees no CUDA GPU")
        if ddp.world_size > 1:
            device = torch.device("cuda", ddp.local_rank)
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


class _GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics span all ranks, for CPU DDP (torch's SyncBatchNorm
    runs on GPUs only); with it DDP computes what one process on the global batch would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # a differentiable collective

        c = x.shape[1]
        with warnings.catch_warnings():  # deprecated for a private successor; still correct
            warnings.simplefilter("ignore", FutureWarning)
            # Two passes (mean, then squared deviations): E[x^2] - E[x]^2 cancels badly in fp32.
            count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
            stats = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
            n = stats[-1]
            mean = stats[:c] / n
            var = all_reduce(((x - mean.view(1, c, 1, 1)) ** 2).sum((0, 2, 3))) / n
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
            self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return x * scale.view(1, c, 1, 1) + (self.bias - mean * scale).view(1, c, 1, 1)


def _global_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = _GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            # Same Parameter and buffer objects: the optimizer and checkpoints see no change.
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            setattr(module, name, new)
        else:
            _global_batchnorm(child)
    return module


# --------------------------------------------------------------------------------------------
# Files


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def _lock_run_dir(run_dir: Path) -> Any:
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


def _metrics_text(history: list[dict[str, Any]]) -> str:
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


def _check_resumable(config: TrainConfig, stored: dict[str, Any], run_dir: Path) -> None:
    diffs = [
        f"{k}: run has {stored.get(k)!r}, now {getattr(config, k)!r}"
        for k in RESUME_KEYS
        if stored.get(k) != getattr(config, k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {str(run_dir)!r}: its config differs in what the run computes ({'; '.join(diffs)}); "
            f"start a new run with another --out instead"
        )


# --------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A one-line bar on a terminal; silent otherwise (the caller prints one line per epoch)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self.start = time.perf_counter()

    def update(self, step: int, loss: float, acc: float) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * step / max(1, self.total))
        rate = step / max(1e-9, time.perf_counter() - self.start)
        bar = "#" * filled + "." * (width - filled)
        print(
            f"\r{self.label} [{bar}] {step}/{self.total} loss {loss:.4f} acc {acc:5.1f}% {rate:5.1f} it/s",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled:
            print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The loop


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run ``config`` describes; see the module doc.

    ``stop_after`` ends this call after that many finished epochs (counted from the run's
    start), leaving a run that ``resume`` continues: training in pieces on a time budget.
    """
    config.validate()
    ddp = _setup_distributed(config.device)
    try:
        with contextlib.ExitStack() as cleanup:
            result = _train(
                config, resume, stop_after, ddp, log if ddp.main else (lambda _msg: None), cleanup
            )
        if ddp.world_size > 1:
            # rank 0 still writes the last checkpoint: no rank may tear the group down before it
            dist.barrier()
        return result
    finally:
        if ddp.owned:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    resume: bool,
    stop_after: int | None,
    ddp: _Dist,
    log: Callable[[str], None],
    cleanup: contextlib.ExitStack,
) -> TrainResult:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = _resolve_device(config.device, ddp)
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 or none")
    if config.batch_size % ddp.world_size:
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by the {ddp.world_size} processes"
        )
    run_dir = config.run_dir()
    last_path, best_path = run_dir / "last.ckpt", run_dir / "best.ckpt"
    if resume:
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {str(run_dir / 'config.json')!r} does not exist")
        _check_resumable(config, json.loads((run_dir / "config.json").read_text()), run_dir)
    elif last_path.exists() or (run_dir / "metrics.csv").exists():
        raise ValueError(
            f"run folder {str(run_dir)!r} already holds a run: pass --resume to continue it, or choose another --out"
        )

    # Data: rank 0 decodes and caches first, so the other ranks only read the cache.
    if ddp.main:
        data = load_dataset(config.dataset, config.data_dir, download_missing=config.download)
    if ddp.world_size > 1:
        dist.barrier()
    if not ddp.main:
        data = load_dataset(config.dataset, config.data_dir, download_missing=False)
    if config.holdout:
        data = data.holdout(config.holdout)
    data = data.subset(config.train_subset, config.test_subset)
    train_data = DeviceData(data.x_train, data.y_train, device)
    test_data = DeviceData(data.x_test, data.y_test, device, pad=0)
    if len(train_data) < config.batch_size:
        raise ValueError(
            f"the training set has {len(train_data)} images, fewer than one batch of {config.batch_size}"
        )
    steps = train_data.steps_per_epoch(config.batch_size)

    torch.manual_seed(config.seed)  # the initialisation; masks come from the seed as well
    model = create_model(
        config.model,
        config.pattern,
        num_classes=data.num_classes,
        image_size=data.image_size,
        seed=config.seed,
    )
    side = data.image_size
    counts = profile(model, (1, 3, side, side))
    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch = 0, -1.0, 0
    extra: dict[str, Any] = {}
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path, model=model)
        extra = ckpt.extra if isinstance(ckpt.extra, dict) else {}
        try:
            start_epoch = int(extra["epoch"])
            history = list(extra["history"])
            best, best_epoch = float(extra["best_top1"]), int(extra["best_epoch"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"cannot resume: {str(last_path)!r} holds no training state (a best.ckpt or an "
                "exported model copied over it?); start a new run with another --out"
            ) from None
        log(f"resuming {run_dir} after epoch {start_epoch}/{config.epochs}")
    elif resume:
        log(f"no finished epoch in {run_dir}: starting it from the beginning")

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if ddp.world_size > 1:
        model = (
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if device.type == "cuda"
            else _global_batchnorm(model)
        )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    if extra:
        optimizer.load_state_dict(extra["optimizer"])
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        if isinstance(extra.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(extra["torch_rng"])
    net: nn.Module = model
    if ddp.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        net = torch.compile(net)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_run_dir(run_dir)
        if lock is not None:
            cleanup.enter_context(lock)  # released when this call ends, however it ends
        _atomic_write(run_dir / "config.json", json.dumps(asdict(config), indent=2) + "\n")
        _atomic_write(run_dir / "metrics.csv", _metrics_text(history))
        log(
            f"{config.model} {config.pattern} on {config.dataset}: {counts['params']:,} params, "
            f"{counts['macs'] / 1e6:.1f} M MACs; {len(train_data)} train / {len(test_data)} test images, "
            f"{steps} steps of {config.batch_size} per epoch, {ddp.world_size} process(es) on {device}"
        )
    bar_on = ddp.main and sys.stderr.isatty()
    end_epoch = min(config.epochs, stop_after or config.epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bar = _Progress(bar_on, steps, f"epoch {epoch + 1}/{config.epochs}")
        batches = train_data.train_batches(config.batch_size, config.seed, epoch, ddp.rank, ddp.world_size)
        for step, (x, y) in enumerate(batches):
            lr = lr_at(config, epoch, step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            # Checking costs a device sync: every 20 steps on a GPU, each step on a CPU. The sum
            # keeps a NaN of any step; under DDP all ranks decide together, so none is left waiting.
            if device.type == "cpu" or step % 20 == 19 or step == steps - 1:
                bad = (~torch.isfinite(loss_sum)).float()
                if ddp.world_size > 1:
                    dist.all_reduce(bad)
                if bad.item():
                    bar.close()
                    raise TrainingDiverged(
                        f"loss became NaN or infinite by epoch {epoch + 1} step {step + 1}: stopped; "
                        f"{str(run_dir)!r} keeps the last good checkpoint (after epoch {epoch}); "
                        f"try a lower --lr"
                    )
                bar.update(step + 1, loss_sum.item() / seen, 100 * correct.item() / seen)
        bar.close()
        totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)])
        if ddp.world_size > 1:
            dist.all_reduce(totals)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr_at(config, epoch, 0.0),
            "train_loss": round(totals[0].item() / totals[2].item(), 6),
            "train_top1": round(100 * totals[1].item() / totals[2].item(), 4),
        }
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            res = evaluate(
                model, test_data, config.eval_batch_size, amp=config.amp, channels_last=config.channels_last,
                rank=ddp.rank, world_size=ddp.world_size,
            )  # fmt: skip
            row |= {"test_loss": round(res["loss"], 6), "test_top1": round(res["top1"], 4)}
            row["test_top5"] = round(res["top5"], 4)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        improved = row.get("test_top1") is not None and row["test_top1"] > best
        if improved:
            best, best_epoch = row["test_top1"], epoch + 1
        if ddp.main:
            state = {
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "best_top1": best,
                "best_epoch": best_epoch,
                "history": history,
                "torch_rng": torch.get_rng_state(),
                "scheduler": {"name": config.schedule, "epochs_done": epoch + 1},
                "scaler": scaler.state_dict() if scaler is not None else None,
                "config": asdict(config),
            }
            meta = {"epoch": epoch + 1, "dataset": config.dataset, "test_top1": row.get("test_top1")}
            meta["data_source"] = data.source
            # Order matters for a crash between writes: best first, then last, then the csv
            # (which is always rebuilt from last.ckpt's history on resume).
            if improved:
                save(model, best_path, extra=state, **meta)
            save(model, last_path, extra=state, **meta)
            _atomic_write(run_dir / "metrics.csv", _metrics_text(history))
            log(_epoch_line(row, config.epochs))

    summary = _summary(config, history, counts, best, best_epoch, ddp.world_size, str(device))
    summary["data_source"] = data.source
    summary["evaluated_on"] = f"holdout ({config.holdout} training images)" if config.holdout else "test"
    summary["environment"] = environment(config.num_threads)
    if ddp.main and len(history) == config.epochs:
        _atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        log(
            f"done: best top-1 {best:.2f}% (epoch {best_epoch}), final {summary['final_top1']:.2f}%; "
            f"{summary['train_seconds']:.0f} s; run folder {run_dir}"
        )
    return TrainResult(summary=summary, model=model, history=history)


def environment(num_threads: int | None = None) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: bit-exact repeats need the same code,
    the same torch, the same CPU kind and the same thread count."""
    import platform
    import subprocess

    from . import __version__
    from .engine import kernel_info

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or None
    info = kernel_info()
    return {
        "psconv": __version__,
        "git_commit": commit,
        "torch": torch.__version__,
        "cpu": cpu,
        "threads": num_threads or torch.get_num_threads(),
        "kernel_isa": info["isa"] if info["available"] else None,
        "backend": info["backend"],
    }


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    test = (
        f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:.2f}% top5 {row['test_top5']:.2f}%"
        if row.get("test_top1") is not None
        else "test -"
    )
    return (
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.5f} train loss {row['train_loss']:.4f} "
        f"top1 {row['train_top1']:.2f}% | {test} | {row['seconds']:.1f} s"
    )


def _summary(
    config: TrainConfig,
    history: list[dict[str, Any]],
    counts: dict[str, Any],
    best: float,
    best_epoch: int,
    world_size: int,
    device: str,
) -> dict[str, Any]:
    final = history[-1] if history else {}
    return {
        "model": config.model,
        "pattern": config.pattern,
        "dataset": config.dataset,
        "epochs": len(history),
        "best_top1": best if best >= 0 else None,
        "best_epoch": best_epoch or None,
        "final_top1": final.get("test_top1"),
        "final_top5": final.get("test_top5"),
        "final_test_loss": final.get("test_loss"),
        "params": counts["params"],
        "dense_params": counts["dense_params"],
        "macs": counts["macs"],
        "dense_macs": counts["dense_macs"],
        "checkpoint_bytes": counts.get("checkpoint_bytes"),
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "world_size": world_size,
        "device": device,
    }


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a model (the paper's recipe by default); resumable; torchrun for many GPUs",
        description="Train a model with the paper's recipe; `torchrun --nproc_per_node=N -m psconv train ...` "
        "trains with DDP. Defaults are shown in brackets.",
    )
    # Defaults are left unset here so that --resume can tell what the user asked to change.
    S = argparse.SUPPRESS
    p.add_argument("--model", default=S, help=f"[{d.model}] one of: {', '.join(list_models())}")
    p.add_argument("--pattern", default=S, help=f"[{d.pattern}] kernel pattern spec, e.g. PSD1_P16")
    p.add_argument("--dataset", default=S, choices=sorted(DATASETS), help=f"[{d.dataset}]")
    p.add_argument("--data-dir", default=S, help="data directory or archive [$PSCONV_DATA]")
    p.add_argument("--download", action="store_true", default=S, help="fetch the official archive if missing")
    p.add_argument("--epochs", type=int, default=S, help=f"[{d.epochs}]")
    p.add_argument("--batch-size", type=int, default=S, help=f"[{d.batch_size}] global batch size")
    p.add_argument("--lr", type=float, default=S, help=f"[{d.lr}]")
    p.add_argument("--momentum", type=float, default=S, help=f"[{d.momentum}]")
    p.add_argument("--weight-decay", type=float, default=S, help=f"[{d.weight_decay}]")
    p.add_argument("--nesterov", action="store_true", default=S, help="Nesterov momentum")
    p.add_argument("--label-smoothing", type=float, default=S, help=f"[{d.label_smoothing}]")
    p.add_argument("--schedule", default=S, choices=SCHEDULES, help=f"[{d.schedule}]")
    p.add_argument("--seed", type=int, default=S, help=f"[{d.seed}]")
    p.add_argument("--device", default=S, help=f"[{d.device}] auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=S, metavar="RUN_DIR", help="[runs/<model>-<pattern>-<dataset>-s<seed>]")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its config by default)")
    p.add_argument("--train-subset", type=int, default=S, metavar="N", help="train on N images")
    p.add_argument("--test-subset", type=int, default=S, metavar="N", help="evaluate on N images")
    p.add_argument(
        "--holdout", type=int, default=S, metavar="N",
        help="validate on N held-out training images instead of the test set (hyperparameter search)",
    )  # fmt: skip
    p.add_argument("--eval-every", type=int, default=S, metavar="K", help=f"[{d.eval_every}] epochs")
    p.add_argument("--eval-batch-size", type=int, default=S, help=f"[{d.eval_batch_size}]")
    p.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    p.add_argument("--amp", default=S, choices=AMP_MODES, help=f"[{d.amp}] mixed precision")
    p.add_argument("--channels-last", action="store_true", default=S, help="channels-last memory format")
    p.add_argument("--num-threads", type=int, default=S, help="CPU threads [torch default]")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if getattr(args, "resume", False):
        run_dir = Path(given.get("out") or TrainConfig(**given).run_dir())
        config_file = run_dir / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"nothing to resume: {str(config_file)!r} does not exist")
        try:
            stored = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{str(config_file)!r} is not valid JSON") from None
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        base = {k: v for k, v in stored.items() if k in known}
        return TrainConfig(**(base | given | {"out": str(run_dir)}))
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # SIGTERM (a scheduler stopping the job) ends like Ctrl-C: the last finished epoch is saved.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        train(config, resume=args.resume)
    except KeyboardInterrupt:
        print(
            f"psconv: interrupted; the last finished epoch is in {str(config.run_dir() / 'last.ckpt')!r}; "
            f"continue with: psconv train --out {config.run_dir()} --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
