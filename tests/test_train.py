"""Training on real data: the loss falls, resume is exact, interruptions and NaNs are safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import psconv
from psconv.data import DeviceData, load_dataset
from psconv.run_files import METRICS_FIELDS, read_metrics
from psconv.train import TrainConfig, TrainingDiverged, lr_at, scaled_milestones, train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        model="vgg16",
        pattern="PSD1_P16",
        data_dir=str(data),
        epochs=3,
        batch_size=8,
        train_subset=32,
        test_subset=32,
        eval_batch_size=32,
        out=str(out),
        num_threads=1,
    )
    return replace(base, **kw)


def _sgd_steps(x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[torch.nn.Module, list[float]]:
    """A seeded VGG16-PSD1_P16 after `steps` plain SGD steps on one batch, and its losses."""
    torch.manual_seed(0)
    model = psconv.create_model("vgg16", "PSD1_P16")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_loss_falls_on_real_images(cifar_npz: Path) -> None:
    ds = load_dataset("cifar10", cifar_npz)
    x, y = next(DeviceData(ds.x_train[:16], ds.y_train[:16]).eval_batches(16))
    _, losses = _sgd_steps(x, y, 6)
    assert losses[-1] < 0.7 * losses[0], losses


def test_paper_schedule() -> None:
    c = TrainConfig()
    assert scaled_milestones(150) == [40, 80, 100, 115, 130, 140]
    assert lr_at(c, 39) == pytest.approx(0.1) and lr_at(c, 40) == pytest.approx(0.02)
    assert lr_at(c, 149) == pytest.approx(0.1 * 0.2**6)
    assert scaled_milestones(15) == [4, 8, 10, 12, 13, 14]
    cos = replace(c, schedule="cosine", epochs=10)
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 5) == pytest.approx(0.05)
    one = replace(c, schedule="onecycle", epochs=10)
    assert (
        lr_at(one, 2) == pytest.approx(0.1) and lr_at(one, 0) < lr_at(one, 1) and lr_at(one, 9, 0.99) < 0.002
    )


def test_multithreaded_steps_are_deterministic() -> None:
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [_sgd_steps(x, y, 2)[0].state_dict() for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> psconv.train.TrainResult:
    from conftest import shared_file

    out = tmp_path_factory.mktemp("ref") / "run"
    return train(tiny_config(shared_file("cifar10-exact-subset.npz"), out), log=lambda _m: None)


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_run_folder_and_resume_is_exact(cifar_npz: Path, tmp_path: Path, reference) -> None:
    config = tiny_config(cifar_npz, tmp_path / "run")
    first = train(config, stop_after=1, log=lambda _m: None)
    assert len(first.history) == 1 and not (tmp_path / "run" / "summary.json").exists()
    resumed = train(config, resume=True, log=lambda _m: None)
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert _strip(resumed.history) == _strip(reference.history)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.csv",
        "last.safetensors",
        "best.safetensors",
        "summary.json",
    }
    rows = read_metrics(run / "metrics.csv")
    assert list(rows[0]) == list(METRICS_FIELDS) and [r["epoch"] for r in rows] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_top1"] == max(r["test_top1"] for r in rows)
    assert summary["final_top1"] == rows[-1]["test_top1"]
    assert summary["params"] < summary["dense_params"] and summary["macs"] < summary["dense_macs"]
    best = psconv.load_checkpoint(run / "best.safetensors")
    assert best.meta["test_top1"] == summary["best_top1"]
    # last.safetensors is compact: the free weights plus one momentum buffer each, not dense kernels.
    assert (run / "last.safetensors").stat().st_size < 2.2 * 4 * summary["params"] + 200_000


def test_resume_refuses_changed_config_and_overwrite(cifar_npz: Path, tmp_path: Path) -> None:
    config = tiny_config(cifar_npz, tmp_path / "run", epochs=1)
    train(config, log=lambda _m: None)
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, log=lambda _m: None)
    with pytest.raises(ValueError, match="lr: run has 0.1, now 0.5"):
        train(replace(config, lr=0.5), resume=True, log=lambda _m: None)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(replace(config, out=str(tmp_path / "none")), resume=True, log=lambda _m: None)
    # a best.safetensors copied over last.safetensors has weights but no training state
    (tmp_path / "run" / "best.safetensors").replace(tmp_path / "run" / "last.safetensors")
    psconv.save(psconv.load(tmp_path / "run" / "last.safetensors"), tmp_path / "run" / "last.safetensors")
    with pytest.raises(ValueError, match="holds no training state"):
        train(config, resume=True, log=lambda _m: None)


def test_nan_stops_and_keeps_last_good_checkpoint(
    cifar_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = F.cross_entropy

    def poisoned(*args: object, **kw: object) -> torch.Tensor:
        loss = real(*args, **kw)
        if "reduction" in kw:  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 6 else loss  # 4 steps per epoch

    monkeypatch.setattr("psconv.train.F.cross_entropy", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="NaN or infinite by epoch 2 step 3.*last good checkpoint"):
        train(tiny_config(cifar_npz, run), log=lambda _m: None)
    assert psconv.load_checkpoint(run / "last.safetensors").extra["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1]


def test_sigkill_mid_epoch_then_resume(cifar_npz: Path, tmp_path: Path, reference) -> None:
    run = tmp_path / "run"
    args = [
        sys.executable, "-m", "psconv", "train", "--model", "vgg16", "--pattern", "PSD1_P16",
        "--data-dir", str(cifar_npz), "--epochs", "3", "--batch-size", "8", "--train-subset", "32",
        "--test-subset", "32", "--eval-batch-size", "32", "--num-threads", "1", "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.csv"  # written atomically after last.safetensors
        if metrics.exists() and len(metrics.read_text().splitlines()) > 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "last.safetensors").exists(), proc.stderr.read().decode()
    done = len(read_metrics(run / "metrics.csv"))
    assert 1 <= done <= 3
    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for got, want in zip(_strip(rows), _strip(reference.history)):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
