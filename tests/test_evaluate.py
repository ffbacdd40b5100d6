"""The CLI end to end on real data, and its errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_kernels

from psconv import kernels
from psconv.cli import main
from psconv.kernels import autotune
from psconv.run_files import read_metrics

REPO = Path(__file__).resolve().parents[1]


def test_train_writes_run_folder_and_eval_agrees(
    cifar_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    common = ["--data-dir", str(cifar_npz), "--test-subset", "64"]
    argv = ["train", "--model", "vgg16", "--pattern", "PSD1_P16", "--epochs", "2", "--batch-size", "16"]
    argv += ["--train-subset", "64", "--lr", "0.02", "--num-threads", "1", "--out", str(run), *common]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "done: final top-1" in printed
    assert {"config.json", "metrics.csv", "last.safetensors", "best.safetensors", "summary.json"} <= {
        p.name for p in run.iterdir()
    }
    rows = read_metrics(run / "metrics.csv")
    best = max(rows, key=lambda r: r["test_top1"])
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "--json", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 64 and result["dataset"] == "cifar10"
    assert result["top1"] == pytest.approx(best["test_top1"], abs=1e-3)
    assert result["top5"] == pytest.approx(best["test_top5"], abs=1e-3)
    assert result["loss"] == pytest.approx(best["test_loss"], rel=1e-4)
    assert main(["eval", "--checkpoint", str(run / "last.safetensors"), *common]) == 0
    assert "top-1" in capsys.readouterr().out


def _bad_runs(npz: Path, tmp: Path) -> list[tuple[list[str], str]]:
    data = ["--data-dir", str(npz)]
    bogus = tmp / "bogus.ckpt"
    bogus.write_bytes(b"hello")
    return [
        (["train", "--pattern", "PSD4_P0", *data], "PSD4_P0"),
        (["train", "--epochs", "0", *data], "--epochs must be a positive integer"),
        (["train", "--lr", "nan", *data], "--lr must be a finite number"),
        (["train", "--data-dir", str(tmp / "missing")], "does not exist"),
        (["train", "--data-dir", str(tmp)], "no cifar10 data found"),
        (["train", "--dataset", "tinyimagenet", *data], "64, 64, 3"),
        (["train", "--train-subset", "8", "--batch-size", "16", *data], "fewer than one batch"),
        (["train", "--resume", "--out", str(tmp / "norun"), *data], "nothing to resume"),
        (["train", "--amp", "fp16", "--device", "cpu", *data], "fp16 needs a CUDA device"),
        (["eval", "--checkpoint", str(tmp / "none.ckpt"), *data], "does not exist"),
        (["eval", "--checkpoint", str(bogus), *data], "not a psconv checkpoint"),
        (["eval", "--checkpoint", str(bogus), "--device", "gpu7"], "is not a device"),
        (["train", "--device", "gpu7", *data], "is not a device"),
    ]


@needs_kernels
def test_train_and_eval_with_measured_auto(
    cifar_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What 'auto' does on CPUs without a calibrated model (AVX2, ARM): it measures each layer
    shape, also the first time one is seen inside evaluation's torch.inference_mode (this
    crashed every training run on such CPUs at its first test pass)."""
    monkeypatch.setenv("PSCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(autotune._state, "decisions", None)
    old = (kernels.get_backend(), autotune.get_autotune())
    kernels.set_backend("auto")
    autotune.set_autotune("on")
    try:
        run = tmp_path / "run"
        common = ["--data-dir", str(cifar_npz), "--test-subset", "32"]
        argv = ["train", "--model", "vgg16", "--pattern", "PSD1_P16", "--epochs", "1", "--batch-size", "16"]
        argv += ["--train-subset", "32", "--num-threads", "1", "--out", str(run), *common]
        assert main(argv) == 0
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(run / "last.safetensors"), "--json", *common]) == 0
    finally:
        kernels.set_backend(old[0])
        autotune.set_autotune(old[1])
        autotune._state["decisions"] = None
    assert json.loads(capsys.readouterr().out)["images"] == 32
    assert (tmp_path / "cache" / autotune.cache_path().name).is_file()


def test_cli_errors_are_one_line(
    cifar_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for argv, message in _bad_runs(cifar_npz, tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("psconv: error: ") and err.count("\n") == 1, err
        assert message in err, (message, err)
    monkeypatch.delenv("PSCONV_DATA", raising=False)
    assert main(["train"]) == 2
    assert "pass --data-dir" in capsys.readouterr().err
    for argv in (["train", "--dataset", "imagenet"], ["train", "--model", "nope"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_process_exit_code_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PSCONV_DATA", None)
    proc = subprocess.run(
        [sys.executable, "-m", "psconv", "eval", "--checkpoint", str(tmp_path / "x.ckpt")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "x.ckpt" in proc.stderr


def test_demo_small(cifar_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--data-dir", str(cifar_npz), "--train-subset", "32", "--test-subset", "32"]
    argv += ["--epochs", "1", "--batch-size", "16", "--num-threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "PSD1_P16 vs dense" in printed and "fewer MACs" in printed
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [r["pattern"] for r in rows] == ["dense", "PSD1_P16"]
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["macs"] < rows[0]["macs"]
    assert (out / "results.csv").read_text().startswith("model,pattern,params,macs")
    assert main(argv) == 0  # a rerun replaces the demo's own run folders
