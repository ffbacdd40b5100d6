"""Training: the paper's recipe, resumable, on CPU, one GPU or many (torchrun + DDP).

Everything a run depends on is one dataclass, :class:`~psconv.train_config.TrainConfig`; its
defaults are the authors' CIFAR-10 recipe. A run folder holds ``config.json`` (the resolved
config, accepted back by ``psconv train --config``), ``environment.json``, ``metrics.csv``,
``last.safetensors``/``best.safetensors`` (compact :func:`psconv.save` files whose ``extra``
carries the optimizer state and history, whose ``meta`` describes the data),
``kernel_choices.json`` where ``auto`` measures, and, at the end, ``summary.json``.

Exact resume: each epoch's shuffle, crops and flips are drawn from ``(seed, epoch)`` and the
learning rate is a pure function of the position in the schedule, so the only state is the
model and the optimizer, both in ``last.safetensors``. The compiled kernels sum per-thread
partial gradients in a fixed order, so on one CPU kind with one thread count a run, resumed or
not, ends with the same bits, provided every layer runs the same code: where ``auto`` decides by
measuring, a resume (and a repeat given ``--kernel-choices``) takes the recorded paths.

Choices the paper leaves open:

- Paper schedule: lr x0.2 after 40, 80, 100, 115, 130 and 140 finished epochs (of 150; scaled
  in proportion for other ``--epochs``), stepped per epoch (the authors' scripts drop one epoch
  earlier; we use the stated milestones). ``cosine`` and ``onecycle`` (warm-up from lr/10 over
  20%, then linear to 0) step per batch. ``metrics.csv``'s ``lr`` is the rate at the epoch's
  first step.
- Each epoch drops its last partial batch (its images are in other epochs' batches), so every
  step, on any number of ranks, averages the same number of images.
- ``--train-subset``/``--test-subset``/``--holdout`` draw fixed samples (independent of
  ``--seed``), so runs with different seeds or patterns see the same images.
- Under DDP, BatchNorm statistics span all ranks (SyncBatchNorm on GPUs, an all-reduce
  BatchNorm on CPU), so N ranks compute what one process does with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import progress
from .checkpoint import load_checkpoint, save
from .data import DeviceData, ImageDataset, load_dataset
from .evaluate import evaluate
from .fileio import atomic_write
from .kernels import autotune
from .models import create_model
from .profile import profile
from .run_files import (
    KERNEL_CHOICES,
    check_resumable,
    environment,
    lock_run_dir,
    metrics_text,
    read_kernel_choices,
    write_json,
    write_kernel_choices,
)
from .runtime import DistContext, amp_dtype, global_batchnorm, resolve_device, setup_distributed
from .train_config import PAPER_EPOCHS, TrainConfig

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train", "lr_at", "data_meta"]

PAPER_MILESTONES = (40, 80, 100, 115, 130, 140)
LAST, BEST = "last.safetensors", "best.safetensors"


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


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


def data_meta(data: ImageDataset, dataset: str) -> dict[str, Any]:
    """What a checkpoint must say about its data so that inference needs nothing else."""
    meta: dict[str, Any] = {"dataset": dataset, "image_size": data.image_size}
    # Readable names to print; the source's own ids (Tiny ImageNet's wnids) beside them.
    meta["classes"] = list(data.class_words or data.classes)
    if data.class_words:
        meta["class_ids"] = list(data.classes)
    meta["mean"], meta["std"] = list(data.mean), list(data.std)
    meta["data_source"] = data.source
    return meta


@dataclass
class _Run:
    """Everything one training run holds while it runs."""

    config: TrainConfig
    ddp: DistContext
    device: torch.device
    run_dir: Path
    train_data: DeviceData
    test_data: DeviceData
    meta: dict[str, Any]
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    counts: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0


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
    ddp = setup_distributed(config.device)
    log = log if ddp.main else (lambda _msg: None)
    try:
        with contextlib.ExitStack() as cleanup:
            run = _setup(config, resume, ddp, log, cleanup)
            end_epoch = min(config.epochs, stop_after or config.epochs)
            for epoch in range(len(run.history), end_epoch):
                row = _train_epoch(run, epoch)
                _save_epoch(run, row)
                log(_epoch_line(row, config.epochs))
            result = _finish(run, log)
        if ddp.world_size > 1:
            dist.barrier()  # rank 0 still writes the last checkpoint: nobody tears the group down first
        return result
    finally:
        if ddp.owned:
            dist.destroy_process_group()


def _setup(
    config: TrainConfig,
    resume: bool,
    ddp: DistContext,
    log: Callable[[str], None],
    cleanup: contextlib.ExitStack,
) -> _Run:
    """Check the run folder, load the data, build the model and optimizer, restore a resumed run."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device, ddp)
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 or none")
    if config.batch_size % ddp.world_size:
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by the {ddp.world_size} processes"
        )
    run_dir = config.run_dir()
    _check_run_dir(config, run_dir, resume)
    _pin_kernel_choices(config, run_dir, resume, log)
    data = _load_data(config, ddp)
    train_data = DeviceData(data.x_train, data.y_train, device, mean=data.mean, std=data.std)
    test_data = DeviceData(data.x_test, data.y_test, device, mean=data.mean, std=data.std, pad=0)
    if len(train_data) < config.batch_size:
        raise ValueError(
            f"the training set has {len(train_data)} images, fewer than one batch of {config.batch_size}"
        )
    torch.manual_seed(config.seed)  # the initialisation; masks come from the seed as well
    model = create_model(
        config.model,
        config.pattern,
        num_classes=data.num_classes,
        image_size=data.image_size,
        seed=config.seed,
    )
    counts = profile(model, (1, 3, data.image_size, data.image_size))
    extra = _resume_state(run_dir, model, log) if resume else {}
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if ddp.world_size > 1:
        model = (
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if device.type == "cuda"
            else global_batchnorm(model)
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
    run = _Run(config, ddp, device, run_dir, train_data, test_data, data_meta(data, config.dataset), model, net,
               optimizer, scaler, counts)  # fmt: skip
    if extra:
        run.history, run.best, run.best_epoch = extra["history"], extra["best_top1"], extra["best_epoch"]
    if ddp.main:
        _start_files(run, cleanup, log)
    return run


def _check_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    if resume:
        stored = run_dir / "config.json"
        if not stored.is_file():
            raise FileNotFoundError(f"nothing to resume: {str(stored)!r} does not exist")
        try:
            stored_config = json.loads(stored.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{str(stored)!r} is not valid JSON") from None
        check_resumable(config, stored_config, run_dir)
    elif any((run_dir / n).exists() for n in (LAST, "last.ckpt", "metrics.csv")):
        raise ValueError(
            f"run folder {str(run_dir)!r} already holds a run: pass --resume to continue it, or choose another --out"
        )


def _pin_kernel_choices(config: TrainConfig, run_dir: Path, resume: bool, log: Callable[[str], None]) -> None:
    """Repeat the kernel-or-oneDNN path of each layer that ``--kernel-choices`` and, on resume, the
    run itself recorded: measuring again could pick the other path and change the last bits."""
    choices = read_kernel_choices(config.kernel_choices) if config.kernel_choices else {}
    own = run_dir / KERNEL_CHOICES
    if resume and own.is_file():
        choices |= read_kernel_choices(own)
    autotune.reset_used()
    autotune.pin_decisions(choices)  # also drops the pins of an earlier run in this process
    if choices:
        log(f"kernel choices: {len(choices)} recorded layer decision(s) taken instead of measuring")


def _load_data(config: TrainConfig, ddp: DistContext) -> ImageDataset:
    """The run's images; rank 0 decodes and caches first, so the other ranks only read the cache."""
    if ddp.main:
        data = load_dataset(config.dataset, config.data_dir, download_missing=config.download)
    if ddp.world_size > 1:
        dist.barrier()
    if not ddp.main:
        data = load_dataset(config.dataset, config.data_dir, download_missing=False)
    if config.holdout:
        data = data.holdout(config.holdout)
    return data.subset(config.train_subset, config.test_subset)


def _resume_state(run_dir: Path, model: nn.Module, log: Callable[[str], None]) -> dict[str, Any]:
    """Load the last finished epoch into ``model``; its training state (empty: none yet)."""
    # A run folder of psconv 0.1 holds last.ckpt (the first checkpoint format): still resumable.
    last = next((p for p in (run_dir / LAST, run_dir / "last.ckpt") if p.exists()), None)
    if last is None:
        log(f"no finished epoch in {run_dir}: starting it from the beginning")
        return {}
    extra = load_checkpoint(last, model=model).extra
    try:
        state = {
            "optimizer": extra["optimizer"],
            "history": list(extra["history"]),
            "best_top1": float(extra["best_top1"]),
            "best_epoch": int(extra["best_epoch"]),
        }
        state |= {k: extra.get(k) for k in ("scaler", "torch_rng")}
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"cannot resume: {str(last)!r} holds no training state (a best checkpoint or an "
            "exported model copied over it?); start a new run with another --out"
        ) from None
    log(f"resuming {run_dir} after epoch {len(state['history'])}")
    return state


def _start_files(run: _Run, cleanup: contextlib.ExitStack, log: Callable[[str], None]) -> None:
    config = run.config
    run.run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run.run_dir)
    if lock is not None:
        cleanup.enter_context(lock)  # released when this call ends, however it ends
    atomic_write(run.run_dir / "config.json", config.to_json())
    write_json(run.run_dir / "environment.json", environment(config.num_threads))
    atomic_write(run.run_dir / "metrics.csv", metrics_text(run.history))
    steps = run.train_data.steps_per_epoch(config.batch_size)
    log(
        f"{config.model} {config.pattern} on {config.dataset}: {run.counts['params']:,} params, "
        f"{run.counts['macs'] / 1e6:.1f} M MACs; {len(run.train_data)} train / {len(run.test_data)} test images, "
        f"{steps} steps of {config.batch_size} per epoch, {run.ddp.world_size} process(es) on {run.device}"
    )


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One epoch of SGD, then (when due) an evaluation: the epoch's metrics row."""
    config, device, ddp = run.config, run.device, run.ddp
    t0 = time.perf_counter()
    steps = run.train_data.steps_per_epoch(config.batch_size)
    autocast = amp_dtype(config.amp)
    run.net.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
    batches = run.train_data.train_batches(config.batch_size, config.seed, epoch, ddp.rank, ddp.world_size)
    with progress.bar(steps, f"epoch {epoch + 1}/{config.epochs}", enabled=ddp.main) as bar:
        for step, (x, y) in enumerate(batches):
            for group in run.optimizer.param_groups:
                group["lr"] = lr_at(config, epoch, step / steps)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = run.net(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=config.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            if run.scaler is not None:
                run.scaler.scale(loss).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                loss.backward()
                run.optimizer.step()
            totals += torch.stack(
                [
                    loss.detach().double() * len(y),
                    (out.detach().argmax(1) == y).sum(),
                    totals.new_tensor(len(y)),
                ]
            )
            # A check costs a device sync: each step on a CPU, every 20 on a GPU.
            if device.type == "cpu" or step % 20 == 19 or step == steps - 1:
                _check_finite(run, totals[0], epoch, step)
                bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.4f}", refresh=False)
            bar.update(1)
    if ddp.world_size > 1:
        dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": round(lr_at(config, epoch, 0.0), 8)}
    row |= {"train_loss": round(loss_sum / seen, 6), "train_top1": round(100 * correct / seen, 4)}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
        res = evaluate(run.model, run.test_data, config.eval_batch_size, amp=config.amp,
                       channels_last=config.channels_last, rank=ddp.rank, world_size=ddp.world_size)  # fmt: skip
        row |= {"test_loss": round(res["loss"], 6), "test_top1": round(res["top1"], 4)}
        row["test_top5"] = round(res["top5"], 4)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _check_finite(run: _Run, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    """Stop on a NaN/Inf loss; under DDP all ranks decide together, so none is left waiting."""
    bad = (~torch.isfinite(loss_sum)).float()
    if run.ddp.world_size > 1:
        dist.all_reduce(bad)
    if bad.item():
        raise TrainingDiverged(
            f"loss became NaN or infinite by epoch {epoch + 1} step {step + 1}: stopped; "
            f"{str(run.run_dir)!r} keeps the last good checkpoint (after epoch {epoch}); try a lower --lr"
        )


def _save_epoch(run: _Run, row: dict[str, Any]) -> None:
    """Record a finished epoch: history, best, checkpoints and metrics (rank 0 writes)."""
    run.history.append(row)
    improved = row.get("test_top1") is not None and row["test_top1"] > run.best
    if improved:
        run.best, run.best_epoch = row["test_top1"], row["epoch"]
    if not run.ddp.main:
        return
    state = {
        "optimizer": run.optimizer.state_dict(),
        "epoch": row["epoch"],
        "best_top1": run.best,
        "best_epoch": run.best_epoch,
        "history": run.history,
        "torch_rng": torch.get_rng_state(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "config": asdict(run.config),
    }
    meta = run.meta | {"epoch": row["epoch"], "test_top1": row.get("test_top1")}
    meta |= {k: run.counts[k] for k in ("macs", "dense_params", "dense_macs")}
    # Order matters for a crash between writes: best first, then last, then the csv (which is
    # always rebuilt from the last checkpoint's history on resume).
    if improved:
        save(run.model, run.run_dir / BEST, extra=state, **meta)
    save(run.model, run.run_dir / LAST, extra=state, **meta)
    choices = autotune.pinned_decisions() | autotune.used_decisions()
    if choices:  # none where 'auto' follows its calibrated model, or on a GPU
        write_kernel_choices(run.run_dir / KERNEL_CHOICES, choices)
    atomic_write(run.run_dir / "metrics.csv", metrics_text(run.history))


def _finish(run: _Run, log: Callable[[str], None]) -> TrainResult:
    config, history = run.config, run.history
    final = history[-1] if history else {}
    summary = {
        "model": config.model,
        "pattern": config.pattern,
        "dataset": config.dataset,
        "epochs": len(history),
        "final_top1": final.get("test_top1"),
        "final_top5": final.get("test_top5"),
        "final_test_loss": final.get("test_loss"),
        "best_top1": run.best if run.best >= 0 else None,
        "best_epoch": run.best_epoch or None,
        **{
            k: run.counts.get(k) for k in ("params", "dense_params", "macs", "dense_macs", "checkpoint_bytes")
        },
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "world_size": run.ddp.world_size,
        "device": str(run.device),
        "data_source": run.meta["data_source"],
        "evaluated_on": f"holdout ({config.holdout} training images)" if config.holdout else "test",
        "environment": environment(config.num_threads),
    }
    if run.ddp.main and len(history) == config.epochs:
        write_json(run.run_dir / "summary.json", summary)
        log(
            f"done: final top-1 {summary['final_top1']:.2f}% (best {run.best:.2f}% at epoch {run.best_epoch}); "
            f"{summary['train_seconds']:.0f} s; run folder {run.run_dir}"
        )
    return TrainResult(summary=summary, model=run.model, history=history)


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
