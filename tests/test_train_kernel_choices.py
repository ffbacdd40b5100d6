"""Where 'auto' measures, each layer's path (our kernel or oneDNN) is part of a run's result, to
the last bits: a run records its choices, a resume and a repeat given them take the same paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import needs_kernels
from test_train import tiny_config

import psconv
from psconv.kernels import autotune
from psconv.run_files import KERNEL_CHOICES, read_kernel_choices
from psconv.train import train


def _measured(pattern: str, cout: int, cin: int, seed: int, shape: tuple) -> dict:
    # A stand-in measurement that no machine's load can change: kernels on the wide layers.
    return {"fast": cin > 64}


def _flipped(*args: object) -> dict:
    return {"fast": not _measured(*args)["fast"]}  # type: ignore[arg-type]


@pytest.fixture
def measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_backend):
    """'auto' measuring every layer (stand-in timings), into a cache that ``fresh`` empties."""
    psconv.set_backend("auto")
    monkeypatch.setitem(autotune._state, "mode", "on")
    for name in ("pinned", "used", "memo"):
        monkeypatch.setitem(autotune._state, name, {})

    def fresh(measure) -> None:  # a machine that has measured nothing yet
        monkeypatch.setenv("PSCONV_CACHE_DIR", str(tmp_path / f"cache-{measure.__name__}"))
        monkeypatch.setitem(autotune._state, "decisions", {})
        monkeypatch.setattr(autotune, "_measure", measure)

    return fresh


def _weights(result: psconv.train.TrainResult) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


@needs_kernels
def test_choices_recorded_resumed_and_repeated(cifar_npz: Path, tmp_path: Path, measuring) -> None:
    quiet = {"log": lambda _m: None}
    measuring(_measured)
    straight = train(tiny_config(cifar_npz, tmp_path / "straight", epochs=2), **quiet)
    recorded = tmp_path / "straight" / KERNEL_CHOICES
    layers = read_kernel_choices(recorded)
    assert {v["fast"] for v in layers.values()} == {True, False}
    assert all(v["fast"] == (int(k.split("|")[7]) > 64) for k, v in layers.items())  # key field 7: cin

    # From here on a new measurement would flip every layer.
    interrupted = tiny_config(cifar_npz, tmp_path / "resumed", epochs=2)
    measuring(_measured)
    train(interrupted, stop_after=1, **quiet)
    measuring(_flipped)
    resumed = train(interrupted, resume=True, **quiet)
    repeat = train(
        tiny_config(cifar_npz, tmp_path / "repeat", epochs=2, kernel_choices=str(recorded)), **quiet
    )
    measuring(_flipped)
    remeasured = train(tiny_config(cifar_npz, tmp_path / "remeasured", epochs=2), **quiet)

    assert torch.equal(_weights(resumed), _weights(straight))
    assert torch.equal(_weights(repeat), _weights(straight))
    assert read_kernel_choices(tmp_path / "repeat" / KERNEL_CHOICES) == layers
    # The paths matter: without the record, the other paths give other bits.
    assert not torch.equal(_weights(remeasured), _weights(straight))


def test_unreadable_choices_are_refused_with_their_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="kernel choices '.*nope.json' do not exist"):
        read_kernel_choices(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json' cannot be read"):
        read_kernel_choices(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"layers": {}}')
    with pytest.raises(ValueError, match="is not a psconv kernel_choices.json"):
        read_kernel_choices(tmp_path / "other.json")
