"""``inspect``: what a checkpoint holds, read from its header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import psconv
from psconv import inspect_checkpoint
from psconv.cli import main
from psconv.data import CIFAR10_CLASSES

# --------------------------------------------------------------------------------------------
# inspect


def test_inspect_matches_profile(vgg_ckpt: tuple[Path, torch.nn.Module]) -> None:
    path, model = vgg_ckpt
    s = inspect_checkpoint.summarize_checkpoint(path)
    prof = psconv.profile(model, (1, 3, 32, 32))
    assert s["model"] == "vgg16" and s["pattern"] == "PSD1_P16" and s["sparse_layers"] == 12
    assert (s["params"], s["dense_params"]) == (prof["params"], prof["dense_params"])
    assert (s["macs"], s["dense_macs"]) == (prof["macs"], prof["dense_macs"])
    meta = {"dataset": "cifar10", "epoch": 3, "test_top1": 12.5}
    assert s["file_bytes"] == path.stat().st_size == len(psconv.checkpoint.serialize(model, **meta))
    assert prof["checkpoint_bytes"] == len(psconv.checkpoint.serialize(model))
    # The dense size is an estimate from the removed weights: within a kilobyte.
    assert abs(s["dense_file_bytes_approx"] - prof["dense_checkpoint_bytes"]) < 1024
    assert s["classes"] == list(CIFAR10_CLASSES)
    assert s["metrics"] == {"epoch": 3, "test_top1": 12.5}


def test_inspect_uses_recorded_counts_and_classes(tmp_path: Path) -> None:
    model = psconv.create_model("resnet18", "PS1_P9", num_classes=3, image_size=64)
    names = ["n01", "n02", "n03"]
    path = tmp_path / "r.safetensors"
    extra = {"momentum": torch.ones(100)}  # resume state: not part of the model's size
    psconv.save(
        model, path, extra=extra, dataset="tinyimagenet", classes=names, macs=7, dense_params=8, dense_macs=9
    )
    s = inspect_checkpoint.summarize_checkpoint(path)
    assert s["counts_source"] == "meta" and (s["macs"], s["dense_macs"]) == (7, 9)
    assert s["extra_bytes"] == 400 and s["model_bytes_approx"] == s["file_bytes"] - 400
    assert "resume state 400" in inspect_checkpoint.format_summary(s)
    assert s["classes"] == names and s["image_size"] == 64


def test_inspect_cli_text_and_json(
    vgg_ckpt: tuple[Path, torch.nn.Module], capsys: pytest.CaptureFixture
) -> None:
    path, _ = vgg_ckpt
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "PSD1_P16" in text and "5.83x fewer" in text and "test_top1=12.5" in text
    assert main(["inspect", str(path), "--json", "--no-macs"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 2_470_986 and "macs" not in data


def test_inspect_verify_reads_the_data_the_header_alone_does_not(
    vgg_ckpt: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, _ = vgg_ckpt
    assert main(["inspect", str(path), "--verify"]) == 0
    assert "checksum matches" in capsys.readouterr().out
    assert main(["inspect", str(path), "--verify", "--json", "--no-macs"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped bit in the last tensor's data: the header still parses
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(raw))
    assert main(["inspect", str(damaged)]) == 0 and "verified" not in capsys.readouterr().out
    assert main(["inspect", str(damaged), "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {str(damaged)!r} is corrupt (data checksum mismatch)" in err
