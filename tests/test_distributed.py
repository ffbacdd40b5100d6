"""DDP on two CPU processes (gloo, loopback): identical ranks, equal to one process.

Batch statistics are global under DDP (SyncBatchNorm on GPUs; on CPU, where SyncBatchNorm
does not run, psconv's all-reduce BatchNorm), so two ranks with 8 images each compute what one
process does with the batch of 16. The exact comparison runs in float64: in float32 the two
differ by rounding, which ReLU kinks and max-pool choices amplify to about 1% within a few
steps. The torchrun test runs the real float32 CLI path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from psconv.run_files import read_metrics
from psconv.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(data: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        model="vgg16",
        pattern="PSD1_P16",
        data_dir=str(data),
        epochs=2,
        lr=0.01,  # a calm run: at 0.1 this tiny set is chaotic and float noise would grow
        batch_size=16,
        train_subset=32,
        test_subset=16,
        eval_batch_size=16,
        device="cpu",
        out=str(out),
        num_threads=1,
    )


def _worker(rank: int, world: int, port: int, config: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_default_dtype(torch.float64)
    try:
        result = train(TrainConfig(**config), log=lambda _m: None)
        torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory):
    from conftest import shared_file

    data = shared_file("cifar10-exact-subset.npz")
    out = tmp_path_factory.mktemp("single") / "run"
    torch.set_default_dtype(torch.float64)
    try:
        return data, train(_config(data, out), log=lambda _m: None)
    finally:
        torch.set_default_dtype(torch.float32)


def test_two_gloo_ranks_match_one_process(single, tmp_path: Path) -> None:
    data, ref = single
    config = _config(data, tmp_path / "run")
    mp.spawn(_worker, args=(2, _free_port(), asdict(config), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks ended with different weights"
    want = ref.model.state_dict()
    for k in want:
        assert want[k].dtype != torch.float32
        assert torch.allclose(r0[k], want[k], rtol=1e-7, atol=1e-9), k
    rows = read_metrics(tmp_path / "run" / "metrics.csv")  # written by rank 0 only
    for got, exp in zip(rows, ref.history):
        assert got["train_loss"] == pytest.approx(exp["train_loss"], rel=1e-6)
        assert got["test_loss"] == pytest.approx(exp["test_loss"], rel=1e-6)


def test_torchrun_cli(single, tmp_path: Path) -> None:
    data, ref = single
    run = tmp_path / "run"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "psconv", "train", "--model", "vgg16", "--pattern", "PSD1_P16", "--data-dir", str(data),
        "--epochs", "2", "--lr", "0.01", "--batch-size", "16", "--train-subset", "32", "--test-subset", "16",
        "--eval-batch-size", "16", "--device", "cpu", "--num-threads", "1", "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    rows = read_metrics(run / "metrics.csv")
    # float32 here, float64 in the reference: equal up to rounding grown over a few steps.
    assert rows[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=2e-2)
    assert proc.stdout.count("epoch 2/2") == 1  # only rank 0 reports
