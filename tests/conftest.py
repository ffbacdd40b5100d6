"""Shared test helpers: where the real shared data lies, a persistent decode cache,
checkpoints of models with spread weights (for inspect, predict and export), the skip marker
of the compiled-kernel tests and a fresh-interpreter runner (for settings read once per process)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

# Tests choose their backend; 'auto' must not time layers (slow, and it depends on the load of
# the machine), nor write to the user's cache. What users get instead on every CPU but AVX-512,
# measured decisions, is tested in test_autotune.py with stand-in measurements, export and
# compile included: with autotuning off here, nothing else sees that path.
os.environ.setdefault("PSCONV_AUTOTUNE", "off")
os.environ.setdefault("PSCONV_CACHE_DIR", tempfile.mkdtemp(prefix="psconv-test-cache-"))
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import psconv
import psconv.kernels
from psconv.data import DeviceData

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_backend():
    """Whatever backend a test sets, the next test starts with the one before it."""
    previous = psconv.get_backend()
    yield
    psconv.set_backend(previous)


# Tests of the compiled kernels skip, saying why, where the library did not build or load.
needs_kernels = pytest.mark.skipif(
    not psconv.kernels.kernels_available(),
    reason=f"compiled kernels unavailable: {psconv.kernels.kernel_info()['error']}",
)


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter with ``env`` added (settings read once per process,
    such as the kernel ISA, need one); its stdout, stripped, or the test fails with its stderr."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, **env), timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def shared_data_dir() -> Path:
    """``$PSCONV_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    env = os.environ.get("PSCONV_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of the shared data, or skip the test saying what is missing."""
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"real data {name} not found in {shared_data_dir()} (set $PSCONV_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _psconv_cache() -> None:
    # Decoding the 60k CIFAR JPEGs takes seconds: keep the decoded arrays between test runs in
    # the (git-ignored) pytest cache unless the user chose a cache.
    os.environ.setdefault("PSCONV_CACHE", str(REPO / ".pytest_cache" / "psconv-data"))


@pytest.fixture
def cifar_npz() -> Path:
    return shared_file("cifar10-exact-subset.npz")


@pytest.fixture
def cifar_jpeg_tar() -> Path:
    return shared_file("cifar10-jpeg.tar.gz")


@pytest.fixture
def tiny_tar() -> Path:
    return shared_file("tiny-imagenet-200-sample.tar.gz")


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with O(1), input-dependent logits, in eval mode.

    The paper's init gives logits of about 1e-20, which would make every comparison of outputs
    pass trivially. Here: He-scaled weights over each layer's kept fan-in, then BatchNorm
    statistics measured on real CIFAR-10 training images (or noise if the data is absent).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, psconv.PSConv2d):
                fan_in = m.nnz / m.out_channels
                m.weight_values.copy_(torch.randn(m.nnz, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.momentum = None  # cumulative average over the calibration batch
                m.reset_running_stats()
        size = int(model.psconv_config["image_size"])
        model.train()
        model(_calibration_batch(size))
    return model.eval()


def _calibration_batch(size: int) -> torch.Tensor:
    npz = shared_data_dir() / "cifar10-exact-subset.npz"
    if npz.is_file():
        with np.load(npz) as z:
            images = z["x_train"][: 24 if size == 32 else 8]
    else:
        images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    x = DeviceData(images, np.zeros(len(images), dtype=np.int64), "cpu", pad=0).normalize(
        torch.from_numpy(images).permute(0, 3, 1, 2)
    )
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear") if size != 32 else x


_CKPT_CACHE: dict[str, tuple[Path, torch.nn.Module]] = {}


@pytest.fixture(scope="session")
def sparse_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, torch.nn.Module]]:
    """``get(name) -> (checkpoint path, model)``: a PSD1_P16 CIFAR-10 model with spread weights,
    built once per session on first use."""
    cache = _CKPT_CACHE

    def get(name: str) -> tuple[Path, torch.nn.Module]:
        if name not in cache:
            model = spread_weights(psconv.create_model(name, "PSD1_P16"))
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.safetensors"
            psconv.save(model, path, dataset="cifar10", epoch=3, test_top1=12.5)
            cache[name] = (path, model)
        return cache[name]

    return get


@pytest.fixture
def vgg_ckpt(sparse_ckpt: Callable[[str], tuple[Path, torch.nn.Module]]) -> tuple[Path, torch.nn.Module]:
    return sparse_ckpt("vgg16")


@pytest.fixture(scope="module")
def cifar(cifar_npz_module: Path) -> dict[str, np.ndarray]:
    with np.load(cifar_npz_module) as z:
        return {"x": z["x_test"][:24].copy(), "y": z["y_test"][:24].copy()}


@pytest.fixture(scope="module")
def cifar_npz_module() -> Path:
    return shared_file("cifar10-exact-subset.npz")


def snapshot(folder: Path) -> dict[str, str]:
    """Every regular file under ``folder`` and the hash of its bytes (to prove nothing changed)."""
    out = {}
    for root, _, files in os.walk(folder):
        for fn in files:
            path = Path(root) / fn
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
