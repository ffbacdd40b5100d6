"""Shared test helpers: where the real shared data lies, and a persistent decode cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
