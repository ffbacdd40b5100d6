"""The training device's view of a split: one uint8 tensor, batches cut, augmented (pad-4 random
crop, horizontal flip) and normalised there, in whole batches (no per-image Python)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .info import CIFAR_MEAN, CIFAR_STD

__all__ = ["DeviceData", "epoch_seed"]

# --------------------------------------------------------------------------------------------
# On-device batches and augmentation


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one epoch's randomness, independent of any earlier epoch (exact resume)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class DeviceData:
    """One split as a single uint8 NCHW tensor on ``device``; batches are cut, augmented
    (pad-4 random crop, horizontal flip) and normalised there, in whole batches."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device | str = "cpu",
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
        pad: int = 4,
    ):
        self.device = torch.device(device)
        self.x = (
            torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).contiguous()
        )
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.pad = pad

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # In the default dtype, so that a float64 model (exact comparisons) gets float64 input.
        return (x.to(self.mean.dtype) - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def train_batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Global batches of ``batch_size`` (the last partial one dropped), of which this rank
        yields its contiguous share. Shuffle, crops and flips are drawn for the whole epoch from
        ``(seed, epoch)`` on the CPU, so a sample's augmentation depends neither on the rank
        count nor on the device nor on earlier epochs."""
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        n = len(self)
        if n < batch_size:
            raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}")
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=g)
        shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        local = batch_size // world_size
        for step in range(n // batch_size):
            lo = step * batch_size + rank * local
            idx = perm[lo : lo + local]
            yield self.augment(idx.to(self.device), shifts[idx].to(self.device), flips[idx].to(self.device))

    def augment(
        self, idx: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[idx]
        b, _, h, w = x.shape
        p = self.pad
        if p:
            # Zero padding in pixel space, as RandomCrop(padding=4) on the raw image does.
            xp = F.pad(x, (p, p, p, p))
            rows = shifts[:, 0:1] + torch.arange(h, device=x.device)
            cols = shifts[:, 1:2] + torch.arange(w, device=x.device)
            bi = torch.arange(b, device=x.device)[:, None, None]
            x = xp[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
        return self.normalize(x), self.y[idx]

    def eval_batches(
        self, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image once, in order; rank r takes a contiguous share of the split."""
        n = len(self)
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            yield self.normalize(self.x[start:stop]), self.y[start:stop]
