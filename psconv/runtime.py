"""Where a run computes: device choice, processes (torchrun + DDP), mixed precision, and which
CPU it is (recorded beside runs and benchmarks).

Shared by ``train`` and ``eval``, so that both read ``--device`` and ``--amp`` the same way.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "AMP_DTYPES",
    "DistContext",
    "GlobalBatchNorm",
    "amp_dtype",
    "cpu_id",
    "cpu_name",
    "global_batchnorm",
    "resolve_device",
    "setup_distributed",
]

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` choice (None: full precision)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    return AMP_DTYPES[amp]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # we created the process group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> DistContext:
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistContext(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if wants_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owned=True)


def resolve_device(device_arg: str, ddp: DistContext | None = None) -> torch.device:
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except RuntimeError:
        raise ValueError(f"--device {device_arg!r} is not a device (use auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_arg} asked for, but this torch build sees no CUDA GPU")
        if ddp is not None and ddp.world_size > 1:
            device = torch.device("cuda", ddp.local_rank)
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


class GlobalBatchNorm(nn.BatchNorm2d):
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


def global_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            # Same Parameter and buffer objects: the optimizer and checkpoints see no change.
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            setattr(module, name, new)
        else:
            global_batchnorm(child)
    return module


# Virtual machines often report a bare family name ("AMD EPYC") for CPUs of different
# generations, whose instruction sets and float results differ (a run bit-exact on one is not
# on the other): the numeric identity says which one ran.
_CPU_ID_FIELDS = {
    "vendor_id": "",
    "cpu family": "family ",
    "model": "model ",
    "stepping": "stepping ",
    "CPU implementer": "implementer ",
    "CPU part": "part ",
    "CPU variant": "variant ",
}


def _cpuinfo() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text()
    return ""


def cpu_name(cpuinfo: str | None = None) -> str:
    """The processor's marketing name, or the machine type where the OS gives none."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str | None = None) -> str:
    """The first core's numeric identity: 'AuthenticAMD family 25 model 1 stepping 1' on x86,
    'implementer 0x41 part 0xd0c variant 0x1' on ARM; the machine type where /proc says nothing."""
    found: dict[str, str] = {}
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if not line.strip():
            if found:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key in _CPU_ID_FIELDS and key not in found:
            found[key] = value.strip()
    parts = [_CPU_ID_FIELDS[k] + found[k] for k in _CPU_ID_FIELDS if k in found]
    return " ".join(parts) or platform.machine()
